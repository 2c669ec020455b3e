"""What travels with a checkpoint besides the weights: the default model card and the copy of the Hub files."""

from __future__ import annotations

import os

from transformers import PreTrainedModel

from .configuration_opt_tri import OptTriConfig


#: Marks a README.md as an OPT-Tri model card (written by `save_pretrained` or the training scripts).
MODEL_CARD_MARKER = "<!-- opt-tri model card -->"


#: The Hub's pipeline tag of each head (the task a `transformers` pipeline would run); heads not listed have none.
PIPELINE_TAGS = {
    "OptTriModel": "feature-extraction",
    "OptTriAudioModel": "feature-extraction",
    "OptTriForPreTraining": "feature-extraction",
    "OptTriForRetrieval": "feature-extraction",
    "OptTriForConditionalGeneration": "image-to-text",
    "OptTriForTextToImage": "text-to-image",
    "OptTriForTextToAudio": "text-to-audio",
    "OptTriForQuestionAnswering": "visual-question-answering",
}


#: Runs on any OPT-Tri folder saved with its processor (the model id is filled in).
USAGE_SNIPPET = """import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model_id = {model_id!r}
model = AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
image = Image.fromarray(np.full((64, 64, 3), (220, 30, 30), dtype=np.uint8))  # a red square
audio = np.zeros(16000, dtype=np.float32)  # one second of silence
batch = processor(text=["a red square"], images=[image], audio=[audio], sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    out = model(**batch)
print("cross-modal [CLS]:", tuple(out.pooler_output.shape))
print("text-image similarity:", float(out.text_embeds @ out.image_embeds.T))
"""


def model_card_metadata(model: PreTrainedModel, **extra) -> str:
    """The Hub metadata block (YAML front matter) of a model card: `library_name`, `pipeline_tag` (from the head),
    `tags`, and any `extra` field (`license`, `datasets`, `base_model`, ...; lists become YAML lists)."""
    fields = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS.get(type(model).__name__)}
    fields["tags"] = ["opt-tri", "multimodal", "text", "image", "audio", "custom_code", type(model).__name__]
    fields.update(extra)
    lines = ["---"]
    for key, value in fields.items():
        if value is None or value == []:
            continue
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


def default_model_card(model: PreTrainedModel, model_id: str | None = None) -> str:
    """The card `save_pretrained` writes when the folder has none: metadata, the architecture, and a usage snippet.
    What the model was trained on is not known here; `examples/pretrain.py` writes the full card of a run."""
    config = model.config
    sizes = ""
    if getattr(config, "model_type", None) == OptTriConfig.model_type:
        parts = {name: getattr(config, f"{name}_config") for name in ("text", "vision", "audio", "cross_modal")}
        sizes = ", ".join(f"{name} {c.num_hidden_layers} x {c.hidden_size}" for name, c in parts.items())
        sizes = f" Encoders (layers x width): {sizes}."
    name = type(model).__name__
    model_id = model_id or "path/to/this/folder"
    snippet = USAGE_SNIPPET.format(model_id=model_id)
    if not sizes:  # a sub-model (the audio encoder): no processor, no cross-modal output
        snippet = (
            f"from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained({model_id!r}, "
            "trust_remote_code=True)\n"
        )
    return (
        model_card_metadata(model) + f"\n# OPT-Tri: {name}\n\n{MODEL_CARD_MARKER}\n\n"
        f"A tri-modal (text, image, audio) OPT-Tri model, saved as `{name}`.{sizes} Its code travels with the "
        "weights: load it with `trust_remote_code=True`.\n\n"
        "This card was written by `save_pretrained`; it does not record the training data or run. The card of a "
        "pre-training run (data, objectives, steps, evaluation, loss curves) is written by `examples/pretrain.py`.\n\n"
        "## Usage\n\n```python\n" + snippet + "```\n"
    )


def _save_hub_files(model: PreTrainedModel, save_directory) -> None:
    """Copy the Hub files (the module of the model's class, `modeling_opt_tri.py`, and every file it reaches by
    relative import) next to the weights of a head with no Auto class, so that
    `get_class_from_dynamic_module("modeling_opt_tri.<Head>", folder)` loads it without our package."""
    from transformers.dynamic_module_utils import custom_object_save

    os.makedirs(save_directory, exist_ok=True)
    custom_object_save(model, save_directory)

"""What travels with a checkpoint besides the weights: the default model card and the copy of the Hub files."""

from __future__ import annotations

import os
import shutil
import tempfile

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


class OptTriHubMixin:
    """`save_pretrained` / `push_to_hub` of every OPT-Tri model (listed before `PreTrainedModel` in
    `OptTriPreTrainedModel`'s bases): `auto_map` entries for every head, and the model card."""

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, push_to_hub: bool = False,
                        **kwargs):
        """`PreTrainedModel.save_pretrained`, plus `auto_map` entries for every OPT-Tri head in `config.json`, so
        that `AutoModel`/`AutoModelForPreTraining` load any OPT-Tri checkpoint through `trust_remote_code=True`, and
        a default model card (`README.md`) where the folder has none. Only the main process writes the card; with
        `push_to_hub=True` the folder is uploaded after the card is written (`repo_id=` and the other
        `push_to_hub` arguments may be given here, as in transformers)."""
        if getattr(self.config, "model_type", None) == OptTriConfig.model_type:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoConfig", "configuration_opt_tri.OptTriConfig")
            auto_map.setdefault("AutoModel", "modeling_opt_tri.OptTriModel")
            auto_map.setdefault("AutoModelForPreTraining", "modeling_opt_tri.OptTriForPreTraining")
            auto_map.setdefault("AutoModelForMultimodalLM", "modeling_opt_tri.OptTriForTextToImage")
            auto_map.setdefault("AutoModelForTextToWaveform", "modeling_opt_tri.OptTriForTextToAudio")
            # the dual encoder serves pipeline("zero-shot-image-classification", ...) of any OPT-Tri checkpoint
            auto_map.setdefault("AutoModelForZeroShotImageClassification", "modeling_opt_tri.OptTriForRetrieval")
            self.config.auto_map = auto_map
        upload = {key: kwargs.pop(key) for key in _UPLOAD_ARGUMENTS if key in kwargs}
        result = super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        if not is_main_process:
            return result
        card = os.path.join(save_directory, "README.md")
        if not os.path.exists(card):  # never replace a card written for this folder (e.g. by examples/pretrain.py)
            with open(card, "w", encoding="utf-8") as handle:
                handle.write(default_model_card(self))
        if push_to_hub:
            repo_id = upload.pop("repo_id", None) or os.path.basename(os.path.normpath(str(save_directory)))
            _upload_folder(str(save_directory), repo_id, **upload)
        return result

    def push_to_hub(
        self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
        private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
        create_pr: bool = False, max_shard_size: int | str | None = "50GB", tags: list[str] | None = None,
        **save_kwargs,
    ) -> str:
        """
        `PushToHubMixin.push_to_hub` (same arguments; others, e.g. `safe_serialization`, go to `save_pretrained`),
        uploading the model card too: the card of the folder the model was loaded from when it is an OPT-Tri card
        (so a pre-trained model pushed from `final/` keeps the card of its run), else [`default_model_card`]; `tags`
        are added to it. (`PreTrainedModel.push_to_hub` would replace it by the Hub's generic card.)
        """
        with tempfile.TemporaryDirectory() as folder:
            source = os.path.join(str(getattr(self, "name_or_path", "") or ""), "README.md")
            if os.path.isfile(source) and MODEL_CARD_MARKER in open(source, encoding="utf-8").read():
                shutil.copyfile(source, os.path.join(folder, "README.md"))
            self.save_pretrained(folder, max_shard_size=max_shard_size, **save_kwargs)
            if tags:
                from huggingface_hub import ModelCard

                card = ModelCard.load(os.path.join(folder, "README.md"))
                card.data.tags = list(card.data.tags or []) + [tag for tag in tags if tag not in (card.data.tags or [])]
                card.save(os.path.join(folder, "README.md"))
            return _upload_folder(
                folder, repo_id, commit_message=commit_message, commit_description=commit_description,
                private=private, token=token, revision=revision, create_pr=create_pr,
            )


#: `push_to_hub` arguments that `save_pretrained(..., push_to_hub=True, ...)` passes on to the upload.
_UPLOAD_ARGUMENTS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")


def _upload_folder(
    folder: str, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
    private: bool | None = None, token: bool | str | None = None, revision: str | None = None, create_pr: bool = False,
) -> str:
    """Create `repo_id` if needed and upload `folder` (weights, config, Hub files and model card) to it."""
    try:
        from huggingface_hub import HfApi
    except ImportError as error:  # a transformers dependency, so only a broken install lacks it
        raise ImportError("push_to_hub needs the huggingface_hub package") from error
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload model",
        commit_description=commit_description, revision=revision, create_pr=create_pr,
    )

"""Fine-tune OPT-Tri for classification from any subset of text, image and audio with the HF Trainer.

    python examples/finetune_classification.py --model outputs/tiny/final --output_dir outputs/cls --modalities image
    python examples/finetune_classification.py --model configuration/tiny --output_dir outputs/cls --modalities audio
    python examples/finetune_classification.py --model outputs/tiny/final --output_dir outputs/coop --prompt_tuning

On the built-in dataset the label is ShapeWorld's `label`: the colour of the first object of the scene (reading
order), one of six classes. (With `text` among the modalities the task is easy: the caption names that colour first.)
A local metadata.jsonl folder needs a `label` column (class ids or class names).

`--prompt_tuning` is CoOp: the model is frozen and classifies an image (or an audio clip, `--prompt_modality audio`)
by the similarity of its retrieval embedding to the text embeddings of `[CLS] v_1 ... v_M <class name> [SEP]`; only
the M context vectors are trained. The script reports the zero-shot accuracy of the hand-written prompt
"a <class name> shape" first, as the baseline. This needs a pre-trained checkpoint (contrastive alignment): on a
random model the similarities carry no class information.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data import COLORS
from modeling_opt_tri.modeling_opt_tri import OptTriForSequenceClassification
from modeling_opt_tri.training.arguments import CheckedArgumentParser, choice, flag, integer, subset_of
from modeling_opt_tri.training.finetune import (
    TaskCollator,
    add_finetune_arguments,
    build_optimizer,
    count_trainable,
    load_model,
    load_train_and_evaluation,
    prepare_for_training,
    save_and_push,
    training_arguments,
)


def label_names(dataset, train) -> list[str]:
    """Class names: ShapeWorld's colours, the `ClassLabel` names of the column, or the sorted distinct labels."""
    if dataset == "builtin":
        return list(COLORS)
    feature = train.features.get("label")
    if hasattr(feature, "names"):
        return list(feature.names)
    values = sorted(set(train["label"]))
    if all(isinstance(v, int) for v in values):
        return [str(v) for v in range(max(values) + 1)]
    return [str(v) for v in values]


def accuracy(eval_prediction) -> dict[str, float]:
    logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) else eval_prediction.predictions
    return {"accuracy": float((np.argmax(logits, -1) == eval_prediction.label_ids).mean())}


@torch.no_grad()
def zero_shot_accuracy(model, processor, collator, dataset, names, modality, batch_size=64) -> float:
    """CLIP-style zero-shot accuracy with the hand-written prompts "a <name> shape" (no learnt context)."""
    base = model.opt_tri
    model.eval()
    prompts = processor.tokenizer([f"a {name} shape" for name in names], padding=True, return_tensors="pt")
    classes = base.get_text_features(prompts["input_ids"], prompts["attention_mask"]).pooler_output
    correct = total = 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if modality == "image":
            features = base.get_image_features(batch["pixel_values"]).pooler_output
        else:
            features = base.get_audio_features(batch["input_features"], batch["audio_attention_mask"]).pooler_output
        correct += int(((features @ classes.t()).argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / total


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.splitlines()[0])
    add_finetune_arguments(parser)
    parser.add_argument("--modalities", default="image", rule=subset_of("text", "image", "audio"),
                        help="comma-separated subset of text,image,audio")
    parser.add_argument("--prompt_tuning", action="store_true", rule=flag(), help="CoOp: learn prompt context vectors only")
    parser.add_argument("--prompt_context_length", type=int, default=4, rule=integer(1))
    parser.add_argument("--prompt_modality", choices=["image", "audio"], default="image", rule=choice("image", "audio"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.prompt_tuning and (args.lora or args.freeze_layers or args.freeze or args.tower_lr_scale):
        parser.error("--prompt_tuning freezes the whole model already; do not combine it with "
                     "--lora/--freeze_layers/--freeze/--tower_lr_scale")

    processor = OptTriProcessor.from_pretrained(args.model)
    train, held_out, eval_split = load_train_and_evaluation(args)  # --dataset, its columns and held-out rows
    names = label_names(args.dataset, train)
    label2id = {name: i for i, name in enumerate(names)}

    def target(row) -> int:
        value = row["label"]
        return int(value) if isinstance(value, (int, np.integer)) else label2id[str(value)]

    modalities = [args.prompt_modality] if args.prompt_tuning else [m.strip() for m in args.modalities.split(",")]
    collator = TaskCollator(processor, modalities, targets=target)
    model = load_model(
        OptTriForSequenceClassification, args.model, args.seed, new_heads=["classifier"], num_labels=len(names),
        id2label=dict(enumerate(names)), label2id=label2id, problem_type="single_label_classification",
    )
    results: dict[str, object] = {"modalities": modalities, "classes": names, "eval_split": eval_split}
    if args.prompt_tuning:
        results["zero_shot_accuracy"] = zero_shot_accuracy(model, processor, collator, held_out, names, args.prompt_modality)
        print(f"zero-shot accuracy (prompt 'a <class> shape'): {results['zero_shot_accuracy']:.4f}")
        class_ids = processor.tokenizer(names)["input_ids"]
        model.enable_prompt_tuning(class_ids, args.prompt_context_length, args.prompt_modality)
        model.requires_grad_(False)
        model.prompt_learner.requires_grad_(True)
        trainable, total = count_trainable(model)
        print(f"CoOp: training {trainable:,} of {total:,} parameters (the prompt context)")
        optimizer = build_optimizer(model, args.learning_rate, 1.0, weight_decay=0.0)
    else:
        model, optimizer = prepare_for_training(model, args, head_modules=["classifier"])

    trainer = Trainer(
        model=model,
        args=training_arguments(args, eval_strategy="no"),
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=collator,
        compute_metrics=accuracy,
        optimizers=(optimizer, None),
    )
    trainer.train()
    metrics = trainer.evaluate()
    results["accuracy"] = metrics["eval_accuracy"]
    results["eval_loss"] = metrics["eval_loss"]
    results["majority_class_accuracy"] = float(
        np.bincount([target(r) for r in held_out.select_columns(["label"])], minlength=len(names)).max() / len(held_out)
    )
    print(json.dumps(results, indent=1))
    save_and_push(trainer.model, processor, args.output_dir, args.push_to_hub)
    (Path(args.output_dir) / "classification_metrics.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

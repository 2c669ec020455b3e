"""Shared pieces of the `Trainer` fine-tuning examples (`examples/finetune_*.py`).

- `load_split`: the built-in ShapeWorld dataset or any source pre-training reads (folder, parquet, `save_to_disk`,
  WebDataset shards), one split at a time.
- `load_model`: a head from an OPT-Tri checkpoint (only the task's new head may start at random), or newly initialised
  from a preset folder.
- `TaskCollator`: decodes rows robustly (as `TriModalCollator`), keeps the chosen modalities, and adds per-row targets
  only for the rows that decode, so a skipped row never shifts the labels.
- `freeze_bottom_layers`, `build_optimizer` (lower learning rate for pre-trained weights, per-tower scales),
  `apply_lora` (PEFT LoRA on the attention projections), with `towers.apply_tower_options` (frozen / LoRA towers):
  the `--freeze_layers`, `--encoder_lr_scale`, `--tower_lr_scale`, `--freeze` and `--lora` options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..data.collate import TriModalCollator
from ..data.decoding import CorruptSampleError
from ..data.sources import CORRUPT_COLUMN
from ..modeling_opt_tri_tuning import TOWER_ATTRIBUTES
from .arguments import (
    HOLDOUT_FRACTION, MAX_STEPS_OR_EPOCHS, PROBABILITY_BELOW_ONE, SEED, CheckedArgumentParser, integer, number,
    string,
)
from .optimization import parameter_groups
from .towers import (
    apply_tower_options,
    check_tower_options,
    merge_lora,
    parse_tower_list,
    parse_tower_scales,
    rule_check,
    split_groups_by_tower,
)

logger = logging.get_logger(__name__)

#: the held-out fraction of a source without a validation split when `--eval_holdout_fraction` is not given
DEFAULT_HOLDOUT_FRACTION = 0.2

#: `--lora` without towers: adapters on every tower and the cross-modal encoder; only they and the head train
LORA_EVERYWHERE = "all"


def _lora_check(option: str, value: str) -> str | None:
    return None if value == LORA_EVERYWHERE else rule_check(parse_tower_list)(option, value)


def add_dataset_arguments(parser: CheckedArgumentParser) -> None:
    """`--dataset`, its column flags and `--eval_holdout_fraction`: what `load_train_and_evaluation` reads."""
    parser.add_argument("--dataset", default="builtin", rule=string(),
                        help="'builtin' (ShapeWorld), a metadata.jsonl folder, a save_to_disk folder, parquet/arrow "
                             "files, WebDataset shards or a dataset name")
    for modality, example in (("text", "caption"), ("image", "jpg"), ("audio", "wav")):
        parser.add_argument(f"--{modality}_column", default=None, rule=string(optional=True),
                            help=f"column of --dataset holding the {modality} (e.g. '{example}'; 'none' leaves it out); "
                                 f"default: '{modality}' or a usual alias")
    parser.add_argument("--eval_holdout_fraction", type=float, default=None, rule=HOLDOUT_FRACTION,
                        help="evaluate on this fraction of the training rows, held out of training by the hash rule "
                             "of pre-training (the same rows for the same data and fraction); default: the validation "
                             f"split, or about --eval_rows rows (at most {DEFAULT_HOLDOUT_FRACTION:.0%}) held out")


def add_finetune_arguments(parser: CheckedArgumentParser, lr: float = 5e-4, steps: int = -1) -> None:
    """The options every fine-tuning example shares, each with the `Rule` its values are checked against."""
    parser.add_argument("--model", required=True, rule=string(),
                        help="OPT-Tri checkpoint folder, or a preset folder (random init)")
    parser.add_argument("--output_dir", required=True, rule=string())
    add_dataset_arguments(parser)
    parser.add_argument("--train_rows", type=int, default=1000, rule=integer(0), help="rows of the training split (all when 0)")
    parser.add_argument("--eval_rows", type=int, default=200, rule=integer(0),
                        help="evaluation rows read, the first of the evaluation split (all when 0); without "
                             "--eval_holdout_fraction, data without a validation split holds out about this many rows "
                             "(at most a fifth)")
    parser.add_argument("--epochs", type=float, default=3.0, rule=number(positive=True))
    parser.add_argument("--max_steps", type=int, default=steps, rule=MAX_STEPS_OR_EPOCHS, help="overrides --epochs when > 0")
    parser.add_argument("--batch_size", type=int, default=32, rule=integer(1))
    parser.add_argument("--learning_rate", type=float, default=lr, rule=number(positive=True))
    parser.add_argument("--warmup_steps", type=int, default=20, rule=integer(0))
    parser.add_argument("--weight_decay", type=float, default=0.01, rule=number(0.0))
    parser.add_argument("--seed", type=int, default=42, rule=SEED)
    parser.add_argument("--freeze_layers", type=int, default=0, rule=integer(0),
                        help="freeze the embeddings and the bottom K layers of the text, vision and audio encoders")
    parser.add_argument("--encoder_lr_scale", type=float, default=1.0, rule=number(0.0),
                        help="learning rate of the pre-trained weights (everything in model.opt_tri) relative to "
                             "--learning_rate; the new head keeps --learning_rate")
    parser.add_argument("--lora", nargs="?", const=LORA_EVERYWHERE, default=None, rule=string(optional=True, check=_lora_check),
                        help="PEFT LoRA adapters. Alone: on every tower and the cross-modal encoder, and only the "
                             "adapters and the head train. With towers ('text' or 'text,vision'): on those towers, "
                             "whose base weights stay fixed, while everything else trains")
    parser.add_argument("--freeze", default=None, rule=string(optional=True, check=rule_check(parse_tower_list)),
                        help="towers to freeze, e.g. 'vision,audio' (no gradient, eval mode, no optimizer state)")
    parser.add_argument("--tower_lr_scale", default=None, rule=string(optional=True, check=rule_check(parse_tower_scales)),
                        help="per-tower multiples of the learning rate (on top of --encoder_lr_scale), e.g. 'vision=0.1'")
    parser.add_argument("--lora_rank", type=int, default=8, rule=integer(1))
    parser.add_argument("--lora_alpha", type=int, default=16, rule=integer(1))
    parser.add_argument("--lora_dropout", type=float, default=0.0, rule=PROBABILITY_BELOW_ONE)
    parser.add_argument("--push_to_hub", default=None, rule=string(optional=True),
                        help="repo id to push the fine-tuned model and processor to")


def dataset_columns(args: argparse.Namespace) -> dict[str, str]:
    """The column mapping of `--text_column` / `--image_column` / `--audio_column` (the ones given), for `load_split`."""
    return {m: getattr(args, f"{m}_column") for m in ("text", "image", "audio") if getattr(args, f"{m}_column", None)}


def evaluation_plan(dataset: str, columns=None, holdout_fraction: float | None = None, eval_rows: int = 0):
    """
    The sources of `--dataset` and where their evaluation rows come from (`sources.plan_evaluation`, the rule of
    pre-training): the `validation` split, or with `holdout_fraction` > 0 the rows `is_held_out` picks out of
    `train`. `None` (the fine-tuning default) is 0 for a source with a validation split; for one without, the
    fraction that holds out about `eval_rows` rows, at most `DEFAULT_HOLDOUT_FRACTION` (all of it when `eval_rows` is
    0): the size the earlier `train_test_split` held out. The hash rule is nested: the rows held out at a fraction are
    among those held out at any larger one.
    """
    from ..data.sources import load_raw_split, parse_sources, plan_evaluation, split_names

    if not Path(dataset).exists() and (dataset.startswith((".", "/")) or dataset.count("/") > 1):
        raise FileNotFoundError(f"--dataset {dataset!r}: neither 'builtin', a folder, a file nor a dataset name")
    sources = parse_sources(dataset, **{f"{k}_column": v for k, v in (columns or {}).items()})
    if len(sources) > 1:
        raise ValueError(f"--dataset {dataset!r}: fine-tuning reads one source, not a mixture")
    if holdout_fraction is None:
        holdout_fraction = 0.0 if "validation" in split_names(sources[0]) else DEFAULT_HOLDOUT_FRACTION
        if holdout_fraction and eval_rows:
            rows = len(load_raw_split(sources[0], "train", streaming=False))
            holdout_fraction = min(holdout_fraction, eval_rows / max(rows, 1))  # unrounded: never 0 for a large source
    return sources, plan_evaluation(sources, "train", "validation", holdout_fraction)


def load_split(dataset: str, split: str, num_rows: int, seed: int = 42, eval_rows: int = 0, columns=None,
               holdout_fraction: float | None = None, planned: tuple | None = None):
    """
    One split as a `datasets.Dataset`: `dataset="builtin"` builds `num_rows` ShapeWorld rows of `split`. Otherwise
    `dataset` is any one source pre-training reads (a metadata folder, a `save_to_disk` folder, parquet / arrow files,
    WebDataset shards, a dataset name), its columns mapped by `columns` (`{"text": "caption", ...}`). `"train"` is
    the training rows and `"validation"` the evaluation rows of `evaluation_plan` (`holdout_fraction`, `eval_rows`:
    never one of the training rows; the rows pre-training holds out with the same `--eval_holdout_fraction`); another
    split is loaded as it is. `num_rows` > 0 keeps the first rows only. `planned`: `evaluation_plan`'s result, when
    the caller has it already (it reads the source).
    """
    from ..data import build_synthetic_dataset
    from ..data.sources import conform, load_raw_split, load_sources

    if dataset == "builtin":
        return build_synthetic_dataset(num_rows, seed=seed, split=split)
    sources, plan = planned or evaluation_plan(dataset, columns, holdout_fraction, eval_rows)
    if split == "train":
        data = load_sources(sources, "train", False, seed=seed, holdout=plan.fractions)
    elif split == "validation":
        data = load_sources(sources, plan.splits, False, seed=seed, holdout=plan.fractions, held_out=True)
    else:
        data = conform(load_raw_split(sources[0], split, streaming=False), sources[0])
    return data.select(range(min(num_rows, len(data)))) if num_rows and num_rows > 0 else data


def load_train_and_evaluation(args: argparse.Namespace, train_rows: int | None = None, eval_rows: int | None = None):
    """
    `(train, held_out, eval_split)` of the `add_dataset_arguments` flags: `train_rows` (default `--train_rows`)
    training rows, the first `eval_rows` (default `--eval_rows`) evaluation rows, and the evaluation split's name for
    the printed table and the metrics file (`"validation"`, or e.g. `"train (held-out 20% of its rows)"`).
    """
    columns = dataset_columns(args)
    fraction = args.eval_holdout_fraction
    train_rows = args.train_rows if train_rows is None else train_rows
    eval_rows = args.eval_rows if eval_rows is None else eval_rows
    planned = None if args.dataset == "builtin" else evaluation_plan(args.dataset, columns, fraction, eval_rows)
    train = load_split(args.dataset, "train", train_rows, args.seed, eval_rows, columns, fraction, planned)
    held_out = load_split(args.dataset, "validation", eval_rows, args.seed, eval_rows, columns, fraction, planned)
    name = planned[1].name() if planned else "validation"
    if not len(held_out) or not len(train):
        raise ValueError(f"--dataset {args.dataset!r}: {len(train)} training and {len(held_out)} evaluation rows "
                         f"({name}); give more rows or another --eval_holdout_fraction")
    print(f"fine-tuning on {len(train)} rows, evaluating on {len(held_out)} rows of {name}")
    return train, held_out, name


#: weight files that are not safetensors: OPT-Tri never loads weights through pickle, so a folder holding only these
#: is refused rather than silently replaced by a random model
NON_SAFETENSORS_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "tf_model.h5", "flax_model.msgpack")


def load_model(model_class, path: str, seed: int = 42, new_heads: Sequence[str] = (), **config_overrides):
    """
    `model_class.from_pretrained(path)` for a checkpoint (a folder with safetensors weights); a new, seeded random model
    from the config of a preset folder (no weight file at all) otherwise. `config_overrides` (e.g. `num_labels`,
    `id2label`, `label2id`) update the config.

    Only the modules in `new_heads` (the head the task adds, e.g. `("classifier",)`) may be missing from the checkpoint
    or have another shape there (a classifier for another number of labels): they start at random. Any other missing
    or wrongly shaped tensor is a `ValueError` that names the tensors, and so is a folder whose weights are not
    safetensors (e.g. only `pytorch_model.bin`). Tensors of the checkpoint that the task does not use (pre-training
    heads, decoders) are dropped, as usual.
    """
    from ..configuration_opt_tri import OptTriConfig

    folder = Path(path)
    config = OptTriConfig.from_pretrained(path, **config_overrides)
    if any(folder.glob("*.safetensors")):
        model, info = model_class.from_pretrained(path, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
        check_loading_info(info, path, new_heads)
        return model
    others = sorted(file.name for pattern in NON_SAFETENSORS_WEIGHTS for file in folder.glob(pattern))
    if others:
        raise ValueError(
            f"{path} holds weights only as {others}, not as model.safetensors: OPT-Tri loads weights from safetensors "
            "only (never through pickle). Convert them (load the state dict yourself, then save_pretrained), or pass "
            "a preset folder without weights for a random initialisation."
        )
    logger.warning(f"{path} holds no weights: {model_class.__name__} is randomly initialised from its config")
    torch.manual_seed(seed)
    return model_class(config)


def check_loading_info(info: dict[str, Any], path: str, new_heads: Sequence[str] = ()) -> None:
    """Raise when `from_pretrained(..., output_loading_info=True)` left a tensor outside `new_heads` missing or
    re-initialised for a size mismatch; log the head tensors that start at random."""

    def in_head(key: str) -> bool:
        return any(key == head or key.startswith(head + ".") for head in new_heads)

    missing = sorted(key for key in info.get("missing_keys", ()) if not in_head(key))
    mismatched = sorted(
        f"{key} (checkpoint {tuple(saved)}, model {tuple(wanted)})"
        for key, saved, wanted in info.get("mismatched_keys", ()) if not in_head(key)
    )
    problems = ([f"missing from the checkpoint: {missing}"] if missing else []) + (
        [f"of another shape in the checkpoint: {mismatched}"] if mismatched else [])
    if problems:
        allowed = f"only the task's new head ({', '.join(new_heads)}) may start at random" if new_heads else (
            "this task adds no head, so every tensor must come from the checkpoint")
        raise ValueError(f"{path}: the checkpoint does not fit the model; {'; '.join(problems)} ({allowed})")
    fresh = sorted({*info.get("missing_keys", ()), *(key for key, _, _ in info.get("mismatched_keys", ()))})
    if fresh:
        logger.info(f"{path}: the task head starts at random: {fresh}")


class TaskCollator(TriModalCollator):
    """
    A `TriModalCollator` for a fine-tuning task.

    Args:
        processor: an `OptTriProcessor`.
        modalities: the inputs to keep, a subset of `("text", "image", "audio")`.
        targets: `row -> target` (an int, a float, or a list / tensor of floats); collated with `torch.tensor` into
            `labels` (or the key `target_key`); `None` for no targets.
        text: `row -> text` (default: the `text` column), e.g. the question for VQA.
        extra: constant entries added to every batch (e.g. `{"return_loss": True}` for retrieval).

    Rows are decoded under the one corrupt-row policy of `TriModalCollator.decode_rows` (a row that is not a dict of
    columns, or does not decode, is skipped with its reason); skipped rows are dropped with their targets and logged.
    The batch holds no bookkeeping keys, so `Trainer` can pass it to the model as is, and since `Trainer` cannot skip
    a batch, one without a usable row raises `CorruptSampleError`.
    """

    def __init__(
        self,
        processor,
        modalities: Sequence[str],
        targets: Callable[[dict[str, Any]], Any] | None = None,
        text: Callable[[dict[str, Any]], str | None] | None = None,
        extra: dict[str, Any] | None = None,
        target_key: str = "labels",
    ):
        super().__init__(processor)
        unknown = set(modalities) - {"text", "image", "audio"}
        if not modalities or unknown:
            raise ValueError(f"modalities must be a non-empty subset of text, image, audio; got {list(modalities)}")
        self.modalities = tuple(modalities)
        self.targets = targets
        self.text = text or (lambda row: row.get("text"))
        self.extra = dict(extra or {})
        self.target_key = target_key

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        """The columns of `row` this task decodes."""
        return {
            "text": self.text(row) if "text" in self.modalities else None,
            "image": row.get("image") if "image" in self.modalities else None,
            "audio": row.get("audio") if "audio" in self.modalities else None,
            CORRUPT_COLUMN: row.get(CORRUPT_COLUMN),
        }

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        decoded = self.decode_rows(rows, self._view)
        if decoded.reasons:
            logger.warning(f"Skipped {len(decoded.reasons)} of {len(rows)} rows: {decoded.reasons[:3]}")
        if not decoded.texts:  # Trainer cannot skip a batch
            raise CorruptSampleError(f"Every row of the batch failed to decode: {decoded.reasons[:3]}")
        batch = self.process(decoded.texts, decoded.images, decoded.audios)
        if self.targets is not None:
            targets = [self.targets(rows[position]) for position in decoded.positions]
            batch[self.target_key] = torch.stack(targets) if torch.is_tensor(targets[0]) else torch.tensor(targets)
        batch.update(self.extra)
        return batch


def _layer_stack(encoder: nn.Module) -> nn.ModuleList:
    """The transformer layer list of a BERT-like, ViT or OPT-Tri encoder (`encoder.layer`, `layers`, ...)."""
    for name in ("encoder.layer", "encoder.layers", "layers", "layer"):
        module = encoder
        for part in name.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"Cannot find the layer list of {type(encoder).__name__}")


def _layer_path(encoder: nn.Module, layers: nn.ModuleList) -> str:
    return next(name for name, module in encoder.named_modules() if module is layers)


def freeze_bottom_layers(model: nn.Module, num_layers: int, encoders: Sequence[str] = ("text", "vision", "audio")) -> list[str]:
    """
    Freeze the embeddings and the bottom `num_layers` transformer layers of each unimodal encoder of `model` (any
    OPT-Tri head or `OptTriModel`). The cross-modal encoder and the head stay trainable. Returns the names of the
    frozen parameters. `num_layers=0` freezes nothing.
    """
    if num_layers <= 0:
        return []
    towers = model.encoder_modules()
    frozen: list[str] = []
    for key in encoders:
        encoder = towers.get(key)
        if encoder is None:  # a head that does not build this tower (pair reasoning has no audio)
            continue
        layers = _layer_stack(encoder)
        if num_layers > len(layers):
            raise ValueError(f"--freeze_layers {num_layers}: the {key} encoder has only {len(layers)} layers")
        modules = {"embeddings": encoder.embeddings, **{f"{_layer_path(encoder, layers)}.{i}": layers[i] for i in range(num_layers)}}
        for prefix, module in modules.items():
            for name, parameter in module.named_parameters():
                parameter.requires_grad_(False)
                frozen.append(f"{TOWER_ATTRIBUTES[key]}.{prefix}.{name}")
    return frozen


def build_optimizer(
    model: nn.Module, learning_rate: float, encoder_lr_scale: float = 1.0, weight_decay: float = 0.01,
    tower_lr_scales: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """
    AdamW with four parameter groups: pre-trained weights (those of the tri-modal model `opt_tri`, LoRA adapters
    excluded) at `learning_rate * encoder_lr_scale`, new weights (the head, LoRA adapters) at `learning_rate`, each
    split into decayed weights and undecayed biases / norms / embeddings / tokens. The parameters of a tower in
    `tower_lr_scales` (`{"vision": 0.1}`) get groups of their own (`pretrained/vision`, ...) at that multiple of their
    group's rate. Frozen parameters are left out. Pass it to `Trainer(optimizers=(optimizer, None))`; Trainer adds its
    scheduler, which scales every group.
    """

    def part(name: str) -> str:
        pretrained = ("opt_tri." in f".{name}" or name.startswith("opt_tri.")) and "lora_" not in name
        return "pretrained" if pretrained and "modules_to_save" not in name else "new"

    param_groups = parameter_groups(model, weight_decay, part)
    for group in param_groups:
        group["lr"] = learning_rate * (encoder_lr_scale if group["name"].startswith("pretrained") else 1.0)
    if not param_groups:
        raise ValueError("No trainable parameters")
    return torch.optim.AdamW(split_groups_by_tower(model, param_groups, learning_rate, tower_lr_scales or {}), lr=learning_rate)


def apply_lora(model: nn.Module, rank: int = 8, alpha: int = 16, dropout: float = 0.0, modules_to_save: Sequence[str] = ()):
    """
    Wrap `model` with PEFT LoRA adapters on the attention projections of every tower and of the cross-modal encoder
    (`model.lora_target_modules`). Every other weight is frozen, except the modules named in `modules_to_save` (the
    task head), which PEFT trains and saves in full. (Adapters on some towers only, the rest training in full:
    `towers.apply_tower_options`.)
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # peft is an optional extra
        raise ImportError("--lora needs PEFT: pip install 'opt-tri[peft]' (or pip install peft)") from error
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=model.lora_target_modules(model.encoder_modules(), include_fusion=True),
        modules_to_save=list(modules_to_save) or None, bias="none",
    )
    return get_peft_model(model, config)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepare_for_training(model: nn.Module, args: argparse.Namespace, head_modules: Sequence[str]):
    """Apply `--freeze_layers`, `--freeze`, `--lora` (in that order) and build the optimizer (`--encoder_lr_scale`,
    `--tower_lr_scale`). Returns `(model, optimizer)`; the model is a `PeftModel` with `--lora` alone."""
    lora = getattr(args, "lora", None)
    towers_lora = None if lora == LORA_EVERYWHERE else lora
    if lora == LORA_EVERYWHERE and getattr(args, "freeze", None):
        raise ValueError(f"--lora alone puts adapters on every tower, so --freeze {args.freeze} would leave some of them "
                         "untrained; name the LoRA towers (e.g. --lora text) to combine it with --freeze")
    check_tower_options(getattr(args, "freeze", None), towers_lora, getattr(args, "tower_lr_scale", None))
    if args.freeze_layers:
        frozen = freeze_bottom_layers(model, args.freeze_layers)
        print(f"froze {len(frozen)} parameter tensors (embeddings + bottom {args.freeze_layers} layers per encoder)")
    model = apply_tower_options(model, getattr(args, "freeze", None), towers_lora, args.lora_rank, args.lora_alpha,
                                args.lora_dropout)
    if lora == LORA_EVERYWHERE:
        model = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, modules_to_save=head_modules)
    trainable, total = count_trainable(model)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    scales = parse_tower_scales(getattr(args, "tower_lr_scale", None), "tower_lr_scale")
    optimizer = build_optimizer(model, args.learning_rate, args.encoder_lr_scale, args.weight_decay, scales)
    return model, optimizer


def training_arguments(args: argparse.Namespace, **overrides):
    """`TrainingArguments` shared by the examples (CPU unless CUDA is there, no reporting, no intermediate saves)."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=max(args.batch_size, 64),
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=args.weight_decay,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        label_names=["labels"],  # a PeftModel's forward(**kwargs) hides `labels` from Trainer's signature check
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def save_and_push(model: nn.Module, processor, output_dir: str, push_to_hub: str | None) -> nn.Module:
    """Merge LoRA adapters into the weights (a plain OPT-Tri checkpoint with its Hub files), save model and processor
    to `output_dir`, and push both to `push_to_hub` when given. Returns the (merged) model."""
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else merge_lora(model)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if push_to_hub:
        model.push_to_hub(push_to_hub)
        processor.push_to_hub(push_to_hub)
    return model


__all__ = [
    "LORA_EVERYWHERE",
    "TaskCollator",
    "add_finetune_arguments",
    "apply_lora",
    "build_optimizer",
    "check_loading_info",
    "count_trainable",
    "freeze_bottom_layers",
    "load_model",
    "dataset_columns",
    "load_split",
    "prepare_for_training",
    "save_and_push",
    "training_arguments",
]

"""The OPT-Tri pre-training loop, driven by `accelerate`.

Features: bf16/fp16 mixed precision, gradient accumulation and clipping, warm-up + cosine schedule, DDP through
`accelerate launch`, map-style and streaming HF datasets, length-grouped or token-budget batches, atomic checkpoints
with exact resume (model, optimizer, scheduler, RNG, data position), per-task losses, throughput and padding figures
on tqdm and TensorBoard, corrupt rows skipped and counted, NaN losses stopped with the last good checkpoint kept, a
loss-curve PNG and a retrieval evaluation at the end.

Faults a run survives or refuses clearly:
- every argument is checked against its declared rule before any work starts (`check_arguments`);
- corrupt rows count against `--max_bad_row_fraction` from the first row drawn, taken of at least
  `MIN_ROWS_FOR_BAD_FRACTION` rows, and a whole pass without a usable row stops the run whatever the fraction;
- SIGTERM / SIGINT finish the optimizer step, write a checkpoint and raise `TrainingInterrupted` (exit status
  128 + signal from `examples/pretrain.py`); a second signal exits at once (`StopOnSignal`);
- resuming refuses arguments that would make the run differ from the one it continues (`resume_changes`), skips
  incomplete checkpoints with `latest`, repairs a torn log tail, and names the file in every load error.

`examples/pretrain.py` is the command-line front end; `run_pretraining(PretrainArguments(...))` is the API.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging

from ..configuration_opt_tri import PRETRAINING_OBJECTIVES, OptTriConfig
from ..data.collate import LengthGroupedBatchSampler, ListBatchSampler, TriModalCollator, padding_fraction, row_lengths
from ..data.sources import NoEvaluationSplitError, text_sample
from ..modeling_opt_tri import OptTriForPreTraining
from ..processing_opt_tri import OptTriProcessor, _kept_samples
from ..tokenizer_training import adapt_config_to_tokenizer, check_unk_share
from .arguments import PROBABILITY_BELOW_ONE, SEED, Rule, arg, choice, dataclass_problems, flag, integer, number, raise_problems, string
from .checkpointing import (
    SHARDED_FOLDER,
    CorruptCheckpointError,
    find_resumable_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    repair_history,
    save_checkpoint,
)
from .codes import AUDIO_CODE_OBJECTIVES, IMAGE_CODE_OBJECTIVES, VQCodeTargets
from .evaluation import direction_sizes, embed_batches, format_retrieval_table, retrieval_metrics
from .model_card import write_model_card
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

#: `--max_bad_row_fraction` is applied to max(rows drawn, this): before this many rows are drawn, the run stops as
#: soon as more than `fraction * MIN_ROWS_FOR_BAD_FRACTION` rows were corrupt (5 at the default 0.1), so a few bad
#: rows among the first ones do not stop a run, and a dataset of bad rows stops within a handful of rows.
MIN_ROWS_FOR_BAD_FRACTION = 50


def _weights_check(what: str) -> Callable[[str, Any], str | None]:
    """A `Rule.check` for a weight list ('mlm=1,itm=0.5'): known names, finite weights >= 0, at least one > 0."""

    def check(option: str, text: str) -> str | None:
        try:
            weights = parse_weights(text, PRETRAINING_OBJECTIVES, what)
        except ValueError as error:
            return f"{error} (in --{option} {text!r})"
        if not any(weight > 0 for weight in weights.values()):
            return f"--{option} must give at least one {what} a weight > 0, got {text!r}"
        return None

    return check


#: what `--resume_from_checkpoint` does when a field differs from the run that wrote the checkpoint: "same" (the
#: default) refuses, "free" allows (logged): it changes neither the data order nor the optimisation.
FREE_ON_RESUME = {"resume": "free"}


@dataclass
class PretrainArguments:
    """
    Arguments of `run_pretraining` (each is also a `--flag` of `examples/pretrain.py`).

    Every field declares a `Rule` (`arguments.arg`): `check_arguments` refuses a bad value before any work starts, with
    one message per bad value. A field also says whether it may change on resume (`resume="free"`); any other change
    of a field's value on `--resume_from_checkpoint` is refused (`--max_steps` may grow; see `resume_changes`).
    """

    preset: str = arg("configuration/tiny", string(), "folder with config.json + processor files")
    model_name_or_path: str | None = arg(None, string(optional=True), "start from this OPT-Tri checkpoint")
    init_text: str | None = arg(None, string(optional=True), "local BERT-like folder for the text encoder")
    init_vision: str | None = arg(None, string(optional=True), "local ViT folder for the vision encoder")
    init_audio: str | None = arg(None, string(optional=True), "local OptTriAudio/AST folder for the audio encoder")
    freeze: str | None = arg(None, string(optional=True, check=rule_check(parse_tower_list)),
                             "towers to freeze, e.g. 'vision,audio' (no gradient, eval mode, no optimizer state)")
    lora: str | None = arg(None, string(optional=True, check=rule_check(parse_tower_list)),
                           "towers trained through PEFT LoRA adapters on their attention projections, e.g. 'text'")
    tower_lr_scale: str | None = arg(None, string(optional=True, check=rule_check(parse_tower_scales)),
                                     "per-tower learning-rate multiples, e.g. 'vision=0.1,audio=0.5'")
    lora_rank: int = arg(8, integer(1), "rank of the --lora adapters")
    lora_alpha: int = arg(16, integer(1), "alpha (scale numerator) of the --lora adapters")
    lora_dropout: float = arg(0.0, PROBABILITY_BELOW_ONE, "dropout of the --lora adapters")
    image_tokenizer: str | None = arg(
        None, string(optional=True),
        "an OptTriImageVQModel folder: its codes are the MRC / MRC-kl / DIR targets (switches MRC and DIR on)",
    )
    audio_tokenizer: str | None = arg(
        None, string(optional=True), "an OptTriAudioVQModel folder: its codes are the DAR targets (switches DAR on)"
    )
    code_soft_temperature: float = arg(1.0, number(positive=True), "temperature of the MRC-kl soft code assignments")
    dataset: str = arg("builtin", string(), (
        "'builtin'; a metadata.jsonl folder, a save_to_disk folder, parquet/arrow files, WebDataset .tar shards or a "
        "dataset name; or a mixture 'PATH=WEIGHT,PATH=WEIGHT' (each source named after its folder/file)"))
    dataset_config: str | None = arg(None, string(optional=True), "configuration name of a `datasets` dataset")
    text_column: str | None = arg(None, string(optional=True),
                                  "column of the text: 'caption', or per source 'coco:caption,clotho:text' ('none': off)")
    image_column: str | None = arg(None, string(optional=True), "column of the images (e.g. 'jpg'), as --text_column")
    audio_column: str | None = arg(None, string(optional=True), "column of the audio (e.g. 'wav'), as --text_column")
    stopping_strategy: str = arg(
        "all_exhausted", choice("all_exhausted", "first_exhausted", "all_exhausted_without_replacement"),
        "of the mixture: all_exhausted | first_exhausted | all_exhausted_without_replacement")
    tokenizer: str | None = arg(None, string(optional=True), (
        "a transformers tokenizer folder (e.g. from processing/build_tokenizer.py); the text embeddings, MLM head "
        "and text decoder are sized to it"))
    max_unk_fraction: float = arg(0.03, number(0.0, 1.0),
                                  "stop before training when more of the training text's tokens than this are [UNK]",
                                  **FREE_ON_RESUME)
    train_split: str = arg("train", string())
    eval_split: str = arg("validation", string(), **FREE_ON_RESUME)
    eval_holdout_fraction: float = arg(
        0.0, Rule(float, low=0.0, text="a number >= 0 and < 1 (0: no hold-out)",
                  check=lambda flag, value: None if value < 1 else
                  f"--{flag} must be a number >= 0 and < 1 (0: no hold-out), got {value!r}"),
        "evaluate on this fraction of the training rows, held out of training (for data without --eval_split)")
    train_rows: int = arg(2000, integer(0), "rows of the built-in dataset to generate")
    eval_rows: int = arg(200, integer(1), "rows evaluated (generated, for the built-in dataset)", **FREE_ON_RESUME)
    streaming: bool = arg(False, flag())
    output_dir: str = arg("outputs/pretrain", string(), **FREE_ON_RESUME)
    max_steps: int = arg(1000, integer(1), "optimizer steps in all (may grow on resume)", resume="max_steps")
    batch_size: int = arg(32, integer(1))
    eval_batch_size: int = arg(64, integer(1), **FREE_ON_RESUME)
    max_tokens: int | None = arg(None, integer(1, optional=True), "token budget per batch (dynamic batching)")
    group_by_length: bool = arg(True, flag())
    learning_rate: float = arg(5e-4, number(positive=True))
    weight_decay: float = arg(0.01, number(0.0))
    warmup_steps: int = arg(50, integer(0))
    gradient_accumulation_steps: int = arg(1, integer(1))
    max_grad_norm: float = arg(1.0, number(0.0, text="a finite number >= 0 (0: no clipping)"))
    mixed_precision: str = arg("no", choice("no", "fp16", "bf16", text="no, fp16 or bf16"), "no | fp16 | bf16")
    seed: int = arg(42, SEED)
    objectives: str | None = arg(
        None, string(optional=True, check=_weights_check("objective")), "weights, e.g. 'mlm=1,contrastive=1' (others off)"
    )
    schedule: str = arg("weighted", choice("weighted", "mix"), "'weighted' (all losses each step) or 'mix' (one task per step)")
    mix_ratios: str | None = arg(
        None, string(optional=True, check=_weights_check("mix ratio")), "for --schedule mix, e.g. 'mlm=2,itm=1'"
    )
    masking_policy: str | None = arg(
        None, choice("conditional", "joint", optional=True), "conditional | joint (default: the config's)"
    )
    itm_rows_per_sample: int | None = arg(
        None, choice(1, 3, optional=True), "1 (UNITER/FLAVA) | 3 (ALBEF): ITM rows per sample (default: the config's)"
    )
    contrastive_local_loss: bool | None = arg(
        None, Rule(bool, optional=True),
        "each process scores its own rows against the gathered gallery (default: the config's)"
    )
    save_steps: int = arg(100, integer(0, text="an integer >= 0 (0: only the final checkpoint)"), **FREE_ON_RESUME)
    save_total_limit: int = arg(2, integer(0, text="an integer >= 0 (0: keep every checkpoint)"), **FREE_ON_RESUME)
    resume_from_checkpoint: str | None = arg(
        None, string(optional=True), "a checkpoint folder or 'latest'", **FREE_ON_RESUME
    )
    logging_steps: int = arg(10, integer(1), **FREE_ON_RESUME)
    num_workers: int = arg(2, integer(0), "DataLoader worker processes that decode and process batches (0: in the "
                           "training process)", **FREE_ON_RESUME)
    max_bad_row_fraction: float = arg(
        0.1, number(0.0, 1.0),
        f"stop when more rows than this fraction are corrupt (counted over at least {MIN_ROWS_FOR_BAD_FRACTION} rows)",
        **FREE_ON_RESUME,
    )
    gradient_checkpointing: bool = arg(
        False, flag(), "recompute activations in the backward (under FSDP: FSDP's own option)", **FREE_ON_RESUME
    )
    distributed_timeout: float = arg(
        600.0, number(positive=True), "seconds a collective waits for the other ranks before the job fails", **FREE_ON_RESUME
    )
    torch_compile: bool = arg(False, flag(), **FREE_ON_RESUME)
    tensorboard: bool = arg(True, flag(), **FREE_ON_RESUME)
    progress: bool = arg(True, flag(), **FREE_ON_RESUME)
    evaluate: bool = arg(True, flag(), **FREE_ON_RESUME)


def parse_weights(text: str | None, known: dict[str, float], what: str) -> dict[str, float] | None:
    """'a=1,b=0.5' -> {'a': 1.0, 'b': 0.5}, checking names and that each weight is a finite number >= 0."""
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in known:
            raise ValueError(f"Unknown {what} {name!r}; known: {sorted(known)}")
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError as error:
            raise ValueError(f"{what} {name!r}: weight {value!r} is not a number") from error
        if not (math.isfinite(weights[name]) and weights[name] >= 0):
            raise ValueError(f"{what} {name!r}: weight {value.strip()!r} must be a finite number >= 0")
    return weights


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def data_sources(args: PretrainArguments) -> list:
    """The `--dataset` sources with their column mappings."""
    from ..data.sources import parse_sources

    return parse_sources(args.dataset, args.text_column, args.image_column, args.audio_column)


def load_split(args: PretrainArguments, split: str, num_rows: int, seed_offset: int = 0, rank: int = 0,
               world_size: int = 1):
    """The training rows of `split` (rows held out by `--eval_holdout_fraction` removed), mixed when several sources."""
    from ..data.sources import load_sources, training_holdout

    sources = data_sources(args)
    holdout = training_holdout(sources, args.eval_holdout_fraction)  # the rule fine-tuning's load_split shares
    return load_sources(sources, split, args.streaming, seed=args.seed + seed_offset, dataset_config=args.dataset_config,
                        builtin_rows=num_rows, holdout=holdout, rank=rank, world_size=world_size,
                        stopping_strategy=args.stopping_strategy)


def load_evaluation_rows(args: PretrainArguments, plan):
    """The evaluation rows of every source (its split, or its held-out rows), `--eval_rows` in all."""
    from ..data.sources import load_sources

    sources = data_sources(args)
    return load_sources(sources, plan.splits, args.streaming, seed=args.seed, dataset_config=args.dataset_config,
                        builtin_rows=args.eval_rows, holdout=plan.fractions, held_out=True,
                        rows_per_source=max(1, args.eval_rows // len(sources)))


class BatchStream:
    """
    Endless, deterministic stream of this process's micro-batches, with a resumable position `(epoch, index)`.
    Map-style datasets use `LengthGroupedBatchSampler` (`SourceGroupedBatchSampler` for mixtures); streaming datasets
    are planned and collated by `StreamBatches`. Decoding and processing run in `--num_workers` DataLoader workers.
    With several processes and a stream, `agree` keeps the processes at the same epoch and source.
    """

    def __init__(self, dataset, collator, args: PretrainArguments, rank: int, world_size: int, tokenizer):
        from ..data.sources import SOURCE_COLUMN
        from ..data.stream import SourceGroupedBatchSampler, SourceTaggingCollator

        self.dataset = dataset
        self.collator = SourceTaggingCollator(collator)
        self.args = args
        self.rank = rank
        self.world_size = world_size
        self.streaming = not hasattr(dataset, "__len__")
        self.restart_at: int | None = None
        self.source_names = sorted(source.name for source in data_sources(args))
        if not self.streaming:
            # lengths after truncation (the processor cuts text and audio), so long rows fit a token budget
            max_seconds = kept_audio_seconds(collator.processor.feature_extractor)
            lengths = row_lengths(dataset, tokenizer, max_audio_seconds=max_seconds)
            if SOURCE_COLUMN in dataset.column_names:
                self.sampler = SourceGroupedBatchSampler(
                    lengths, dataset[SOURCE_COLUMN], args.batch_size, max_tokens=args.max_tokens,
                    group_by_length=args.group_by_length, seed=args.seed, world_size=world_size)
            else:
                self.sampler = LengthGroupedBatchSampler(
                    lengths,
                    args.batch_size,
                    max_tokens=args.max_tokens,
                    group_by_length=args.group_by_length,
                    seed=args.seed,
                    drop_last=world_size > 1,
                )

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        batches = self.sampler.batches(epoch)
        per_rank = len(batches) // self.world_size
        if per_rank == 0:
            raise ValueError(f"The dataset gives {len(batches)} batches, fewer than the {self.world_size} processes")
        return batches[self.rank : per_rank * self.world_size : self.world_size]

    def _loader(self, epoch: int, index: int):
        from ..data.stream import StreamBatches

        workers = {"num_workers": self.args.num_workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": False,
                   # a private generator: creating the iterator must not draw from the global RNG (which masks)
                   "generator": torch.Generator().manual_seed(self.args.seed + epoch)}
        if self.streaming:
            batches = StreamBatches(self.dataset, self.collator, self.args.batch_size, self.args.batch_size * 16,
                                    drop_last=self.world_size > 1, seed=self.args.seed, epoch=epoch, start=index)
            return torch.utils.data.DataLoader(batches, batch_size=None, **workers)
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=ListBatchSampler(self._epoch_batches(epoch)[index:]), collate_fn=self.collator,
            **workers,
        )

    def iterate(self, epoch: int, index: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Yield `(epoch, index_of_next_batch, batch)` from position `(epoch, index)` on, forever (a pass that gives no
        batch at all raises instead of looping)."""
        while True:
            start = index
            for batch in self._loader(epoch, index):
                index += 1
                yield epoch, index, batch
                if self.restart_at is not None:
                    break
            if self.restart_at is not None:
                epoch, index, self.restart_at = self.restart_at, 0, None
                continue
            if start == 0 and index == 0:  # a whole pass gave nothing (e.g. an empty stream): it never will
                raise ValueError(f"The training data gave no batch in a whole pass (epoch {epoch}): is --dataset "
                                 f"{self.args.dataset!r} (split {self.args.train_split!r}) empty?")
            epoch, index = epoch + 1, 0

    def agree(self, accelerator, epoch: int, source: str | None, has_rows: bool) -> bool:
        """
        Streaming with several processes: whether every process holds a usable batch of the same epoch and source.
        If not, all of them drop it; when their epochs or sources differ (one process's stream ended sooner), all of
        them restart at the start of the next epoch, so that they never run the model on different modalities.
        """
        if not self.streaming or self.world_size == 1:
            return has_rows
        names = self.source_names
        mine = torch.tensor([[epoch, names.index(source) if source in names else -1, int(has_rows)]],
                            device=accelerator.device)
        every = accelerator.gather(mine).cpu()
        if (every[:, :2] == every[0, :2]).all():
            return bool(every[:, 2].all())
        epochs = every[:, 0]
        self.restart_at = int(epochs.max()) + int(bool((epochs == epochs[0]).all()))
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def build_model(args: PretrainArguments, accelerator) -> tuple[OptTriForPreTraining, OptTriProcessor, VQCodeTargets | None]:
    processor = OptTriProcessor.from_pretrained(args.model_name_or_path or args.preset)
    if args.tokenizer:
        processor = with_tokenizer(processor, args.tokenizer)
    image_tokenizer, audio_tokenizer = VQCodeTargets.load(args.image_tokenizer, args.audio_tokenizer)
    if args.model_name_or_path:
        model = OptTriForPreTraining.from_pretrained(args.model_name_or_path)
        if args.tokenizer and len(processor.tokenizer) != model.config.text_config.vocab_size:
            raise ValueError(f"--tokenizer {args.tokenizer!r} has {len(processor.tokenizer)} tokens but the checkpoint "
                             f"{args.model_name_or_path!r} was trained with {model.config.text_config.vocab_size}")
    else:
        config = OptTriConfig.from_pretrained(args.preset)
        if args.tokenizer:
            adapt_config_to_tokenizer(config, processor.tokenizer)
        config.size_code_decoders(image_tokenizer, audio_tokenizer)  # before the model is built: as a built one would be
        if args.init_text or args.init_vision or args.init_audio:
            model = OptTriForPreTraining.from_unimodal_pretrained(
                text=args.init_text, vision=args.init_vision, audio=args.init_audio, config=config
            )
        else:
            model = OptTriForPreTraining(config)
    objectives = parse_weights(args.objectives, PRETRAINING_OBJECTIVES, "objective")
    if objectives is not None:
        model.config.objectives = {name: objectives.get(name, 0.0) for name in PRETRAINING_OBJECTIVES}
    else:  # the tokenizers switch their objectives on (MRC rather than its KL variant, which --objectives can pick)
        switched_on = (("mrc", "dir") if image_tokenizer is not None else ()) + (("dar",) if audio_tokenizer is not None else ())
        model.config.objectives = {**model.config.objectives, **{name: 1.0 for name in switched_on}}
    if args.masking_policy:
        model.config.masking_policy = args.masking_policy
    if args.itm_rows_per_sample is not None:
        model.config.itm_rows_per_sample = args.itm_rows_per_sample
    if args.contrastive_local_loss is not None:
        model.config.contrastive_local_loss = args.contrastive_local_loss
    model.config.validate()
    VQCodeTargets.check_compatible(model.config, processor, image_tokenizer, audio_tokenizer)
    if args.gradient_checkpointing and not _uses_fsdp(accelerator):  # under FSDP: its own option (_configure_fsdp)
        model.gradient_checkpointing_enable()
    if args.lora and _uses_fsdp(accelerator):  # the adapters would have to be merged across shards for final/
        raise ValueError("--lora is not supported under FSDP (its adapters are not merged into sharded weights); use DDP")
    model = apply_tower_options(model, args.freeze, args.lora, args.lora_rank, args.lora_alpha, args.lora_dropout)
    codes = None
    if image_tokenizer is not None or audio_tokenizer is not None:
        need_soft = model.config.objectives.get("mrc_kl", 0.0) > 0
        codes = VQCodeTargets(image_tokenizer, audio_tokenizer, args.code_soft_temperature, need_soft)
    return model, processor, codes


def build_accelerator(args: PretrainArguments, output_dir: Path):
    """
    The `Accelerator` of a run, for any `accelerate launch` configuration: one process, DDP, FSDP2 or DeepSpeed.

    Two gaps of accelerate are closed here. A multi-process launch on a machine without accelerators (torchrun-style,
    e.g. `distributed_type: FSDP` with `use_cpu: true`) runs on CPU with gloo: without `cpu=True` accelerate would treat
    every process as an independent rank 0. And accelerate enables FSDP only on accelerator devices; on CPU the run is
    promoted from DDP to FSDP2 with the launch's plugin (the same `fully_shard` over gloo that the tests exercise).
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    fsdp_plugin = None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        fsdp_plugin = FullyShardedDataParallelPlugin()
        if fsdp_plugin.fsdp_version != 2:
            raise ValueError(f"fsdp_version {fsdp_plugin.fsdp_version} in the accelerate config: OPT-Tri supports "
                             "FSDP2 only (set `fsdp_version: 2` under fsdp_config)")
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        cpu=_cpu_only_launch(),
        fsdp_plugin=fsdp_plugin,
        log_with="tensorboard" if args.tensorboard else None,
        project_dir=str(output_dir),
        # `optimizer_step` steps the schedule once per real update. accelerate's default steps it `num_processes` times
        # per call (for data loaders it shards itself), which would run the schedule 2x too fast on 2 processes.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[
            # objectives differ per step (task mixing, absent modalities), so some heads are unused in some steps
            DistributedDataParallelKwargs(find_unused_parameters=True),
            # a collective that waits longer than this for a rank (a hung or lost process) fails instead of hanging
            InitProcessGroupKwargs(timeout=timedelta(seconds=args.distributed_timeout)),
        ],
    )
    if fsdp_plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        from accelerate.state import PartialState

        if args.mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(args.mixed_precision)
        accelerator.state.fsdp_plugin = fsdp_plugin
        accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def _cpu_only_launch() -> bool:
    """A multi-process launch (torchrun sets LOCAL_RANK / WORLD_SIZE) on a machine without an accelerator."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return False
    current = getattr(torch, "accelerator", None)
    return (current.current_accelerator() if current is not None else None) is None and not torch.cuda.is_available()


def _uses_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def _pad_across_ranks(accelerator, batch: dict[str, torch.Tensor], pad_values: dict[str, float]) -> dict[str, torch.Tensor]:
    """Pad the text and audio of every rank's batch to the longest across ranks (masked padding), so that every rank
    draws the same amount of masking randomness in the forward (see `_seed_step_for_fsdp`)."""
    dims = {"input_ids": 1, "token_type_ids": 1, "attention_mask": 1, "input_features": -1, "audio_attention_mask": 1}
    for key, dim in dims.items():
        if key in batch:
            batch[key] = accelerator.pad_across_processes(batch[key], dim=dim % batch[key].ndim,
                                                          pad_index=pad_values.get(key, 0))
    return batch


def _seed_step_for_fsdp(seed: int, step: int, micro: int) -> None:
    """
    Seed torch's RNG (which draws the masking) identically on every rank for this micro-batch. The forward's module
    calls depend on those draws (which rows are masked, hence whether a tower runs again), and under FSDP every call
    of a sharded layer is a collective: all ranks must make the same calls in the same order, or the gathers mismatch.
    The ranks still mask different rows (each has its own data), and a resumed run draws what the uninterrupted one did.
    """
    torch.manual_seed(int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0]))


def fsdp_wrap_classes(model: torch.nn.Module) -> list[str]:
    """
    Names of the module classes FSDP2 shards as units, from the towers actually built: every transformer layer
    (`GradientCheckpointingLayer`: ours, and those of any `transformers` tower) and every class of the model's
    `_no_split_modules` that occurs in it (e.g. a tower's embeddings), except classes that hold the input or output
    embeddings: accelerate shards those as units of their own, which must not sit inside another unit.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    embeddings = [getattr(model, name, lambda: None)() for name in ("get_input_embeddings", "get_output_embeddings")]
    embeddings = [module for module in embeddings if module is not None]
    classes: dict[str, list[torch.nn.Module]] = {}
    for module in model.modules():
        classes.setdefault(type(module).__name__, []).append(module)
    wanted = {name for name, modules in classes.items() if isinstance(modules[0], GradientCheckpointingLayer)}
    wanted |= {name for name in getattr(model, "_no_split_modules", None) or () if name in classes}
    holds_embeddings = {
        name for name in wanted
        if any(embedding is not module and embedding in set(module.modules()) for module in classes[name] for embedding in embeddings)
    }
    return sorted(wanted - holds_embeddings)


def _configure_fsdp(plugin, model: torch.nn.Module, args: PretrainArguments, device: torch.device) -> None:
    """Wrap by the model's layer classes (unless the config names them), checkpoint activations through FSDP's own
    option when --gradient_checkpointing is set, give every rank rank 0's weights, and make 0-d parameters (the contrastive `logit_scale`) 1-element
    ones, which FSDP2 can shard (they broadcast as before; `save_final` gives them back their shape)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.ndim == 0:
                setattr(module, name, torch.nn.Parameter(parameter.detach().reshape(1), parameter.requires_grad))
    # `fully_shard` keeps each rank's slice of its *own* tensors (DDP would broadcast rank 0's): without this, the
    # newly initialised weights (seeded per rank) would be a patchwork of every rank's initialisation
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)

    if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_classes(model)
    if args.gradient_checkpointing:
        plugin.activation_checkpointing = True
    if device.type == "cpu" and getattr(plugin.cpu_offload, "pin_memory", False):  # pinning needs an accelerator
        from torch.distributed.fsdp import CPUOffloadPolicy

        plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)
    logger.info(f"FSDP2: wrapping {plugin.transformer_cls_names_to_wrap}, activation checkpointing "
                f"{plugin.activation_checkpointing}, CPU offload {plugin.cpu_offload is not None}")


def kept_audio_seconds(feature_extractor) -> float | None:
    """Seconds of a clip that the processor's audio features depend on at most (None: all of it): ours
    `max_length_seconds`, Whisper its window, AST its `max_length` frames; the wav2vec2 family reads every sample."""
    if hasattr(feature_extractor, "max_length_seconds"):
        return feature_extractor.max_length_seconds
    samples = _kept_samples(feature_extractor)
    return None if samples is None else samples / feature_extractor.sampling_rate


def with_tokenizer(processor: OptTriProcessor, path: str) -> OptTriProcessor:
    """`processor` with the tokenizer of the folder `path` (saved with the model, so it travels with it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return OptTriProcessor(image_processor=processor.image_processor, feature_extractor=processor.feature_extractor,
                           tokenizer=tokenizer)


def _optimizer(model: torch.nn.Module, args: PretrainArguments) -> torch.optim.Optimizer:
    """AdamW over `parameter_groups` (decayed weights at `--weight_decay`, biases / norms / embeddings / tokens not),
    a tower's parameters in groups of their own at `--tower_lr_scale`."""
    groups = parameter_groups(model, args.weight_decay)
    groups = split_groups_by_tower(model, groups, args.learning_rate, parse_tower_scales(args.tower_lr_scale, "tower_lr_scale"))
    fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.98), eps=1e-6, fused=fused or None)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops (the last good checkpoint is left as it is)."""


def optimizer_step(accelerator, model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float | None) -> bool:
    """
    Clip, update and zero the gradients of one training step; return whether the update was skipped.

    With fp16 the optimizer is wrapped with a `GradScaler`: `accelerator.clip_grad_norm_` unscales the gradients first,
    and when any of them is inf/NaN (an fp16 overflow of the scaled gradients) the scaler skips the update and halves
    its scale. A skipped update leaves the weights and the optimizer state as they are, and the learning-rate schedule
    does not advance either (`scheduler.step()` is only called after a real update). Without a scaler (fp32, bf16)
    nothing is ever skipped.
    """
    if max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    skipped = bool(accelerator.optimizer_step_was_skipped)
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


def _non_finite_loss_message(output, step: int, micro: int, accumulation: int, output_dir: Path, scaler) -> str:
    value = float(output.loss.detach())
    where = f"step {step}" + (f" (micro-batch {micro + 1} of {accumulation})" if accumulation > 1 else "")
    good = latest_checkpoint(output_dir)
    advice = "e.g. with a lower --learning_rate" + (" or bf16 instead of fp16" if scaler is not None else "")
    if good is not None:
        kept = f"the last good checkpoint, {good}, is kept: resume from it with --resume_from_checkpoint latest, {advice}."
    else:
        kept = f"no checkpoint had been saved yet in {output_dir}: restart, {advice}."
    text = (f"NaN/inf loss: the loss became {value} at {where} (per-objective losses: {output.losses()}). "
            f"Training stopped; {kept}")
    if scaler is not None:
        text += (" (The fp16 loss scaler skips steps whose scaled gradients overflow; it cannot repair a non-finite "
                 "loss from the forward pass.)")
    return text


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""A name `from_pretrained` / `load_dataset` may look up on the Hub (`name` or `namespace/name`)."""


def check_arguments(args: PretrainArguments) -> None:
    """
    Fail fast, before any work starts: first every field against its declared `Rule` (one message per bad value,
    naming the flag, the value and the allowed range), then the combinations and the folders (a missing local folder
    would otherwise fail late, or with huggingface_hub's vague "Repo id must be in the form ...").
    """
    raise_problems(dataclass_problems(args))
    check_tower_options(args.freeze, args.lora, args.tower_lr_scale)
    if args.dataset == "builtin" and args.train_rows < 1:
        raise ValueError(f"--train_rows must be an integer >= 1 with the built-in dataset, got {args.train_rows}")
    objectives = parse_weights(args.objectives, PRETRAINING_OBJECTIVES, "objective") or {}
    for names, option in ((IMAGE_CODE_OBJECTIVES, "image_tokenizer"), (AUDIO_CODE_OBJECTIVES, "audio_tokenizer")):
        wanted = sorted(name for name in names if objectives.get(name, 0.0) > 0)
        if wanted and not getattr(args, option):
            raise ValueError(f"--objectives {','.join(wanted)}: these objectives predict VQ codes; pass --{option}")
    folders = {
        "preset": None if args.model_name_or_path else args.preset,
        "model_name_or_path": args.model_name_or_path,
        "init_text": args.init_text,
        "init_vision": args.init_vision,
        "init_audio": args.init_audio,
        "image_tokenizer": args.image_tokenizer,
        "audio_tokenizer": args.audio_tokenizer,
        "tokenizer": args.tokenizer,
    }
    sources = data_sources(args)
    flag = "dataset" if len(sources) == 1 else f"dataset {args.dataset!r}: source"
    sources = [(flag, source.path) for source in sources if source.path != "builtin"]
    for flag, value in [*folders.items(), *sources]:
        if value and not os.path.exists(value) and not _HUB_ID.match(value):
            raise FileNotFoundError(f"--{flag} {value!r}: no such file or folder (and not a Hub name)")
    if args.stopping_strategy not in ("all_exhausted", "first_exhausted", "all_exhausted_without_replacement"):
        raise ValueError(f"--stopping_strategy must be all_exhausted, first_exhausted or "
                         f"all_exhausted_without_replacement, got {args.stopping_strategy!r}")
    if not 0.0 <= args.eval_holdout_fraction < 1.0:
        raise ValueError(f"--eval_holdout_fraction must be in [0, 1), got {args.eval_holdout_fraction!r}")
    if not 0.0 <= args.max_unk_fraction <= 1.0:
        raise ValueError(f"--max_unk_fraction must be in [0, 1], got {args.max_unk_fraction!r}")


def plan_data(args: PretrainArguments):
    """Where evaluation reads (per source: its split or a held-out fraction); fails before training, not after."""
    from ..data.sources import plan_evaluation

    return plan_evaluation(data_sources(args), args.train_split, args.eval_split, args.eval_holdout_fraction,
                           args.dataset_config)


def source_record(losses: dict[str, list[float]], rows: dict[str, int]) -> dict[str, float]:
    """The per-source entries of a history record: this step's mean loss per source, and rows so far per source."""
    record = {f"source_loss/{name}": float(np.mean(values)) for name, values in losses.items()}
    return {**record, **{f"source_rows/{name}": count for name, count in rows.items()}}


def source_summary(history: list[dict[str, Any]], sources: list) -> dict[str, dict[str, Any]]:
    """Per source: weight, rows trained on (this process), steps, and the mean loss of its first and last steps."""
    table = {}
    for source in sources:
        losses = [r[f"source_loss/{source.name}"] for r in history if f"source_loss/{source.name}" in r]
        rows = [r[f"source_rows/{source.name}"] for r in history if f"source_rows/{source.name}" in r]
        n = max(1, min(20, len(losses) // 2))
        table[source.name] = {"weight": source.weight, "rows": rows[-1] if rows else 0, "steps": len(losses),
                              "loss_first": float(np.mean(losses[:n])) if losses else None,
                              "loss_last": float(np.mean(losses[-n:])) if losses else None}
    return table


def format_source_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'source':<16}{'weight':>8}{'rows':>8}{'steps':>7}{'loss first':>12}{'loss last':>11}"]
    for name, entry in table.items():
        first, last = (f"{entry[k]:.4f}" if entry[k] is not None else "-" for k in ("loss_first", "loss_last"))
        lines.append(f"{name:<16}{entry['weight']:>8.3f}{entry['rows']:>8}{entry['steps']:>7}{first:>12}{last:>11}")
    return "\n".join(lines)


def run_pretraining(args: PretrainArguments) -> dict[str, Any]:
    """Train; return a summary (final losses, counters, retrieval metrics when `args.evaluate`)."""
    run = _setup(args)
    with StopOnSignal() as stop:
        last = _train_steps(run, stop)
    state = run.state
    summary: dict[str, Any] = {"steps": run.step, "rows_seen": state["rows_seen"], "rows_skipped": state["rows_skipped"],
                               "skipped_optimizer_steps": state["skipped_steps"], "last_losses": last}
    return _finish(run, summary)


@dataclass
class PretrainingRun:
    """What the loop and the teardown of one run share, as `_setup` leaves it. `model` is what `accelerator.prepare`
    (and `--torch_compile`) returned, `unwrapped` the `OptTriForPreTraining` inside it; `state` is the data position
    and the counters that checkpoints save; `step` the optimizer steps done; `mix` the `--schedule mix` task draw
    (names, probabilities) or None."""

    args: PretrainArguments
    accelerator: Any
    model: torch.nn.Module
    unwrapped: OptTriForPreTraining
    processor: OptTriProcessor
    optimizer: torch.optim.Optimizer
    scheduler: Any
    code_targets: VQCodeTargets | None
    stream: BatchStream
    state: dict[str, Any]
    step: int
    active: list[str]
    mix: tuple[list[str], np.ndarray] | None
    history_path: Path
    evaluation_plan: Any = None
    no_evaluation: str | None = None


def _setup(args: PretrainArguments) -> PretrainingRun:
    """Everything before the first step: arguments, accelerator, resume point, model, data, optimizer, restored
    state, log file and trackers (in this order: a run that cannot resume exactly stops before any work)."""
    from accelerate.utils import set_seed

    check_arguments(args)
    output_dir = Path(args.output_dir)
    accelerator = build_accelerator(args, output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    resume = _resolve_resume(args, output_dir, rank, world)
    if args.mixed_precision == "fp16" and accelerator.scaler is None:
        logger.warning(
            f"--mixed_precision fp16 has no effect on {accelerator.device.type}: accelerate trains in fp32 there, "
            "without autocast or loss scaling (fp16 needs a GPU; bf16 works on CPU)."
        )
    set_seed(args.seed, device_specific=True)
    model, processor, code_targets = build_model(args, accelerator)
    active, mix = _task_schedule(args, model.config.objectives)
    evaluation_plan, no_evaluation = _plan_evaluation(args)
    train_data = load_split(args, args.train_split, args.train_rows, rank=rank, world_size=world)
    check_unk_share(processor.tokenizer, text_sample(train_data), args.max_unk_fraction,
                    args.tokenizer or args.model_name_or_path or args.preset, args.dataset)
    stream = BatchStream(train_data, TriModalCollator(processor), args, rank, world, processor.tokenizer)
    model, optimizer, scheduler = _prepare_training(args, accelerator, model, code_targets)
    unwrapped = accelerator.unwrap_model(model)
    state, step = _initial_state(args, accelerator, unwrapped, optimizer, scheduler, resume)
    history_path = output_dir / "losses.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        repair_history(history_path, step)
    if args.tensorboard:
        accelerator.init_trackers("pretrain", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})
    return PretrainingRun(args, accelerator, model, unwrapped, processor, optimizer, scheduler, code_targets, stream,
                          state, step, active, mix, history_path, evaluation_plan, no_evaluation)


def _task_schedule(args: PretrainArguments, objectives: dict[str, float]) -> tuple[list[str], tuple | None]:
    """The objectives with a positive weight, and for `--schedule mix` the task draw: (sorted names, probabilities
    from `--mix_ratios`, every active objective alike by default)."""
    active = [name for name, weight in objectives.items() if weight > 0]
    if not active:
        raise ValueError("Every pre-training objective is switched off")
    if args.schedule != "mix":
        return active, None
    ratios = parse_weights(args.mix_ratios, PRETRAINING_OBJECTIVES, "mix ratio") or {name: 1.0 for name in active}
    ratios = {name: ratio for name, ratio in ratios.items() if name in active and ratio > 0}
    if not ratios:
        raise ValueError(f"--mix_ratios {args.mix_ratios!r}: no active objective has a ratio > 0 (active: {active})")
    names = sorted(ratios)
    return active, (names, np.asarray([ratios[n] for n in names]) / sum(ratios.values()))


def _plan_evaluation(args: PretrainArguments) -> tuple[Any, str | None]:
    """With `--evaluate`: the evaluation split's plan, decided now rather than after training, or why there is
    none (the retrieval table is then skipped)."""
    if not args.evaluate:
        return None, None
    try:
        return plan_data(args), None
    except NoEvaluationSplitError as error:
        no_evaluation = f"No evaluation (the retrieval table is skipped): {error}"
        logger.warning(no_evaluation)
        return None, no_evaluation


def _prepare_training(args: PretrainArguments, accelerator, model: OptTriForPreTraining, code_targets):
    """The model (and tokenizers) on the device, FSDP configured, the optimizer and schedule, all through
    `accelerator.prepare` (and `torch.compile` with `--torch_compile`). Returns (model, optimizer, scheduler)."""
    model.to(accelerator.device)
    if code_targets is not None:
        code_targets.to(accelerator.device)
    if _uses_fsdp(accelerator):
        if args.max_tokens is not None:  # token budgets give the ranks batches of different sizes
            raise ValueError("--max_tokens (dynamic batching) is not supported under FSDP: every rank must run the same "
                             "layers in the same order, so batches must have the same number of rows; use --batch_size")
        _configure_fsdp(accelerator.state.fsdp_plugin, model, args, accelerator.device)
    optimizer = _optimizer(model, args)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if args.torch_compile:
        model = torch.compile(model)
    return model, optimizer, scheduler


def _initial_state(args, accelerator, unwrapped, optimizer, scheduler, resume: Path | None) -> tuple[dict[str, Any], int]:
    """The data position and counters (`state`) and the step to start from: fresh, or restored from `resume`
    together with the model, optimizer, scheduler, RNG and loss scaler."""
    state: dict[str, Any] = {"epoch": 0, "batch_index": 0, "rows_seen": 0, "rows_skipped": 0, "skipped_steps": 0,
                             "source_rows": {}, "epoch_good_rows": 0}
    step = 0
    if resume:
        state = load_checkpoint(resume, unwrapped, _inner_optimizer(optimizer), scheduler, accelerator.process_index,
                                accelerator.num_processes, scaler=accelerator.scaler)
        state.setdefault("epoch_good_rows", 1)  # checkpoints from before this counter: assume the epoch had good rows
        step = state["global_step"]
        accelerator.print(f"Resumed from {resume} at step {step}")
    state["arguments"] = _recorded_arguments(args)  # checked when a later run resumes from this run's checkpoints
    return state, step


def _inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper (what checkpoints save and load)."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


def _train_steps(run: PretrainingRun, stop: StopOnSignal) -> dict[str, float]:
    """The optimizer steps from `run.step` to `--max_steps` (or to a SIGTERM / SIGINT, see `StopOnSignal`); returns
    the last step's loss per objective."""
    args, accelerator = run.args, run.accelerator
    batches = run.stream.iterate(run.state["epoch"], run.state["batch_index"])
    progress = tqdm(total=args.max_steps, initial=run.step, desc="pre-training",
                    disable=not (args.progress and accelerator.is_main_process))
    window, last = _new_window(), {}
    run.model.train()
    while run.step < args.max_steps:
        tasks = None if run.mix is None else [_draw_task(run.mix, args.seed, run.step)]
        step_losses, source_losses = _accumulate_gradients(run, batches, tasks, window)
        skipped = optimizer_step(accelerator, run.model, run.optimizer, run.scheduler, args.max_grad_norm)
        run.step += 1
        record = _step_record(run, step_losses, source_losses, skipped)
        last.update(step_losses)
        progress.update(1)
        if run.step % args.logging_steps == 0 or run.step == args.max_steps:
            window = _log_window(run, record, window, progress)
        if accelerator.is_main_process:
            _append_history(run.history_path, record, Path(args.output_dir))
        saved = None
        if args.save_steps and run.step % args.save_steps == 0 and run.step < args.max_steps:
            saved = _save(run)
        if stop.requested(accelerator):
            progress.close()
            checkpoint = saved or _save(run)
            accelerator.end_training()
            raise TrainingInterrupted(stop.signum, run.step, checkpoint)
    progress.close()
    return last


def _draw_task(mix: tuple[list[str], np.ndarray], seed: int, step: int) -> str:
    """The task of step `step + 1` under `--schedule mix`: a draw that depends only on (seed, step), so a resumed run
    draws what the uninterrupted one did."""
    names, probabilities = mix
    return str(np.random.default_rng([seed, step]).choice(names, p=probabilities))


def _accumulate_gradients(run: PretrainingRun, batches: Iterator, tasks: list[str] | None,
                          window: dict[str, float]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Forward and backward over one optimizer step's `--gradient_accumulation_steps` micro-batches (gradients
    synchronised across processes on the last one only). Returns the step's mean loss per objective and the
    losses per data source."""
    args, accelerator = run.args, run.accelerator
    accumulation = args.gradient_accumulation_steps
    step_losses: dict[str, float] = {}
    source_losses: dict[str, list[float]] = {}
    for micro in range(accumulation):
        batch, source = _device_batch(run, batches, window, micro)
        with contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(run.model):
            output = run.model(**batch, tasks=tasks)
            if output.loss is None:
                raise ValueError(f"No objective could be computed on this batch (tasks={tasks or run.active})")
            if not torch.isfinite(output.loss.detach()):  # the unscaled loss: a real NaN/inf, not an fp16 overflow
                raise NonFiniteLossError(_non_finite_loss_message(
                    output, run.step + 1, micro, accumulation, Path(args.output_dir), accelerator.scaler))
            accelerator.backward(output.loss / accumulation)
        for name, value in output.losses().items():
            step_losses[name] = step_losses.get(name, 0.0) + value / accumulation
        if source is not None:
            source_losses.setdefault(source, []).append(float(output.loss.detach()))
    return step_losses, source_losses


def _device_batch(run: PretrainingRun, batches: Iterator, window: dict[str, float], micro: int):
    """The next usable batch on the device (padded to the other ranks' shapes under FSDP), with its VQ codes, and its
    source; counts its rows and padding into the throughput `window`."""
    accelerator = run.accelerator
    batch, rows, source = _next_usable_batch(batches, run.state, run.args.max_bad_row_fraction, run.stream, accelerator)
    padded, tokens = padding_fraction(batch)
    window["padded"] += padded
    window["tokens"] += tokens
    window["samples"] += rows * accelerator.num_processes
    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
    if _uses_fsdp(accelerator):
        batch = _pad_across_ranks(accelerator, batch, _pad_values(run.processor))
    if run.code_targets is not None:
        batch.update(run.code_targets(batch))
    if _uses_fsdp(accelerator):
        _seed_step_for_fsdp(run.args.seed, run.step, micro)
    return batch, source


def _pad_values(processor: OptTriProcessor) -> dict[str, float]:
    """The padding value of each variable-length input (text ids, log-mel features)."""
    return {"input_ids": processor.tokenizer.pad_token_id or 0,
            "input_features": float(getattr(processor.feature_extractor, "padding_value", 0.0) or 0.0)}


def _step_record(run: PretrainingRun, step_losses: dict[str, float], source_losses: dict[str, list[float]],
                 skipped: bool) -> dict[str, Any]:
    """The log record of the step just taken (`losses.jsonl`, trackers): the loss weighted as the model weighs it,
    each objective's loss, the learning rate, the counters and the per-source losses."""
    state, scaler = run.state, run.accelerator.scaler
    if skipped:
        state["skipped_steps"] += 1
        logger.info(f"step {run.step}: fp16 gradients overflowed; update skipped, loss scale lowered to "
                    f"{scaler.get_scale() if scaler is not None else None}")
    total = run.unwrapped.weigh_losses(step_losses)  # the model's own weighting, on the step's mean losses
    record = {"step": run.step, "loss": total, **{f"loss/{k}": v for k, v in step_losses.items()},
              "lr": run.scheduler.get_last_lr()[0], "skipped_optimizer_steps": state["skipped_steps"],
              **source_record(source_losses, state["source_rows"])}
    if scaler is not None:
        record["loss_scale"] = float(scaler.get_scale())
    return record


def _new_window() -> dict[str, float]:
    return {"samples": 0, "time": time.perf_counter(), "padded": 0, "tokens": 0}


def _log_window(run: PretrainingRun, record: dict[str, Any], window: dict[str, float], progress) -> dict[str, float]:
    """Add the throughput and padding of the steps since the last log to `record`, show and log it; return a new
    window."""
    elapsed = max(time.perf_counter() - window["time"], 1e-9)
    record["samples_per_second"] = window["samples"] / elapsed
    record["padding_fraction"] = window["padded"] / max(window["tokens"], 1)
    postfix = {k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")}
    if run.accelerator.scaler is not None:
        postfix["skipped"] = run.state["skipped_steps"]
    progress.set_postfix(postfix, refresh=False)
    run.accelerator.log(record, step=run.step)
    return _new_window()


def _append_history(path: Path, record: dict[str, Any], output_dir: Path) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as error:  # e.g. a full disk: say which file, and what a resume would start from
        kept = latest_checkpoint(output_dir)
        raise OSError(error.errno, f"Could not log step {record['step']} to {path} ({error}); the last checkpoint is "
                                   f"{kept if kept is not None else 'none'}: free space, then resume with "
                                   "--resume_from_checkpoint latest") from error


def _save(run: PretrainingRun) -> Path:
    accelerator = run.accelerator
    return save_checkpoint(
        Path(run.args.output_dir), run.step, run.unwrapped, _inner_optimizer(run.optimizer), run.scheduler, run.state,
        accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone, run.args.save_total_limit,
        scaler=accelerator.scaler,
    )


def _finish(run: PretrainingRun, summary: dict[str, Any]) -> dict[str, Any]:
    """The final checkpoint, `final/`, the loss table and curves, the evaluation and `summary.json`."""
    args, accelerator, state, step, history_path = run.args, run.accelerator, run.state, run.step, run.history_path
    output_dir = Path(args.output_dir)
    _save(run)
    if accelerator.scaler is not None:
        summary["loss_scale"] = float(accelerator.scaler.get_scale())
    final = output_dir / "final"
    save_final(accelerator, merge_lora(run.unwrapped) if args.lora else run.unwrapped, run.processor, final)  # a plain checkpoint
    if accelerator.is_main_process:
        summary["loss_curve"] = str(plot_loss_curves(history_path, output_dir / "loss_curves.png"))
        summary["padding_fraction"] = _history_stat(history_path, "padding_fraction")
        summary["samples_per_second"] = _history_stat(history_path, "samples_per_second")
        summary["loss_table"] = loss_table(read_history(history_path))
        accelerator.print(format_loss_table(summary["loss_table"]))
        if state["source_rows"]:
            summary["sources"] = source_summary(read_history(history_path), data_sources(args))
            accelerator.print(format_source_table(summary["sources"]))
        accelerator.print(
            f"Trained {step} steps; rows seen {state['rows_seen']}, corrupt rows skipped {state['rows_skipped']}, "
            f"overflowing fp16 steps skipped {state['skipped_steps']}; median {summary['samples_per_second'] or 0:.1f} "
            f"samples/s, padded fraction {100 * (summary['padding_fraction'] or 0):.1f}%. Model saved to {final}"
        )
        # a sharded model cannot run on one rank alone, and its class is FSDP's: use the consolidated weights
        consolidated = OptTriForPreTraining.from_pretrained(final) if _uses_fsdp(accelerator) else run.unwrapped
        if run.evaluation_plan is not None:
            summary["eval_split"] = run.evaluation_plan.name()
            summary["retrieval"] = evaluate_retrieval(consolidated, run.processor, args, run.evaluation_plan)
        elif run.no_evaluation:
            summary["evaluation_skipped"] = run.no_evaluation
            accelerator.print(run.no_evaluation)
        write_model_card(final, consolidated, summary, dataset=None if args.dataset == "builtin" else args.dataset)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


def save_final(accelerator, model: torch.nn.Module, processor, folder: Path) -> None:
    """
    `folder` as a consolidated `save_pretrained` folder (safetensors, config, Hub files, processor) that loads on one
    process and through `trust_remote_code`. Under FSDP the full weights are gathered from the shards
    (`accelerator.get_state_dict`, a collective; rank 0 receives them) and saved by rank 0.
    """
    state_dict = accelerator.get_state_dict(model) if _uses_fsdp(accelerator) else None
    if accelerator.is_main_process:
        if state_dict is not None:
            model = _unsharded_copy(model, state_dict)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    accelerator.wait_for_everyone()


def _unsharded_copy(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (unsharded) instance of `model`'s class holding `state_dict`, so that `save_pretrained` writes the
    model's own class name, weights and tying rather than the FSDP wrapper's."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    copy = cls(model.config)
    shapes = {name: tensor.shape for name, tensor in copy.state_dict().items()}
    state_dict = {name: tensor.reshape(shapes[name]) if name in shapes else tensor for name, tensor in state_dict.items()}
    missing, unexpected = copy.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if key not in set(getattr(copy, "all_tied_weights_keys", {}) or {})]
    if missing or unexpected:
        raise ValueError(f"consolidating the FSDP shards: missing {missing}, unexpected {unexpected}")
    return copy


def _batch_rows(batch: dict[str, Any]) -> int:
    for key in ("input_ids", "pixel_values", "input_features"):
        if key in batch:
            return int(batch[key].shape[0])
    return 0


def _next_usable_batch(batches: Iterator, state: dict[str, Any], limit: float, stream: BatchStream,
                       accelerator) -> tuple[dict[str, Any], int, str | None]:
    """
    The next batch with at least one decoded row that every process agrees to use (`BatchStream.agree`), its row
    count and its source (the dataset of a mixture it came from, or None). Every row drawn counts towards the corrupt-row limit, including those of batches where every row is corrupt
    (`_check_bad_fraction` after each batch), and a whole pass over the data without one usable row stops the run
    (whatever the limit, even 1.0).
    """
    while True:
        epoch, index, batch = next(batches)
        if epoch != state["epoch"]:
            if state["epoch_good_rows"] == 0:
                raise RuntimeError(
                    f"A whole pass over the training data gave no usable row ({state['rows_skipped']} corrupt rows "
                    f"skipped so far). Check the dataset (the warnings above name the rows)."
                )
            state["epoch_good_rows"] = 0
        state["epoch"], state["batch_index"] = epoch, index
        bad = batch.pop("num_skipped_rows")
        for reason in batch.pop("skipped_reasons"):
            logger.warning(f"skipped a corrupt row: {reason}")
        source = batch.pop("source", None)
        rows = _batch_rows(batch) if batch else 0
        accepted = stream.agree(accelerator, epoch, source, rows > 0)
        state["rows_skipped"] += bad
        state["rows_seen"] += bad + (rows if accepted else 0)
        state["epoch_good_rows"] += rows
        if accepted and source is not None:
            state["source_rows"][source] = state["source_rows"].get(source, 0) + rows
        _check_bad_fraction(state, limit)
        if accepted:
            return batch, rows, source


def _check_bad_fraction(state: dict[str, Any], limit: float) -> None:
    """Stop when the corrupt rows exceed `limit * max(rows drawn, MIN_ROWS_FOR_BAD_FRACTION)`."""
    seen, bad = state["rows_seen"], state["rows_skipped"]
    if bad > limit * max(seen, MIN_ROWS_FOR_BAD_FRACTION):
        raise RuntimeError(
            f"{bad} of the {seen} rows drawn so far ({100 * bad / seen:.1f}%) could not be decoded, more than "
            f"--max_bad_row_fraction={limit} allows (the fraction is taken of at least {MIN_ROWS_FOR_BAD_FRACTION} "
            f"rows: at most {math.floor(limit * MIN_ROWS_FOR_BAD_FRACTION)} corrupt rows among the first "
            f"{MIN_ROWS_FOR_BAD_FRACTION}). Check the dataset (the warnings above name the rows)."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Interruptions and resuming
# ----------------------------------------------------------------------------------------------------------------------


class TrainingInterrupted(Exception):
    """
    SIGTERM or SIGINT stopped the run after a complete optimizer step, whose checkpoint was written. `exit_code` is
    the shell's `128 + signal` (143 for SIGTERM, 130 for SIGINT), which `examples/pretrain.py` exits with: the job did
    not finish, so a scheduler that requeues failed jobs requeues it, and `--resume_from_checkpoint latest` continues.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"Interrupted by {signal.Signals(signum).name} after step {step}: saved checkpoint {checkpoint}. "
            f"Resume with --resume_from_checkpoint latest (or {checkpoint})."
        )


class StopOnSignal:
    """
    While active (a `with` block, in the main thread), SIGTERM and SIGINT ask the loop to stop: it finishes the current
    optimizer step (all its micro-batches), writes a checkpoint and raises `TrainingInterrupted`. A second signal
    exits at once, by the signal's default action. Schedulers (SLURM, Kubernetes) send SIGTERM some time before they
    kill, so one step plus one checkpoint must fit in that grace period. With several processes, `requested` agrees
    across ranks (accelerate's trigger: an all-reduce), so every rank stops at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        logger.warning(f"{signal.Signals(signum).name} received: finishing this optimizer step, then saving a "
                       "checkpoint and exiting (send it again to exit at once, without saving)")

    def requested(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.signum is not None
        if self.signum is not None:
            accelerator.set_trigger()
        if accelerator.check_trigger():
            self.signum = self.signum or signal.SIGTERM
            return True
        return False


def _recorded_arguments(args: PretrainArguments) -> dict[str, Any]:
    """The arguments a checkpoint records for `resume_changes` (the JSON scalars among them)."""
    values = {f.name: getattr(args, f.name) for f in fields(args)}
    return {name: value for name, value in values.items() if value is None or isinstance(value, (bool, int, float, str))}


def resume_changes(recorded: dict[str, Any], args: PretrainArguments, step: int) -> tuple[list[str], list[str]]:
    """
    `(refused, allowed)`: the arguments of `args` that differ from `recorded` (those of the run that wrote a
    checkpoint at `step`), one line each. Fields declared `resume="free"` may change; `--max_steps` may change as long
    as it is not below `step` (the cosine schedule is then laid over the new total); any other change is refused,
    because the resumed run would silently differ from the one it continues (skipped rows, an ignored learning rate).
    """
    refused, allowed = [], []
    for f in fields(args):
        if f.name not in recorded or recorded[f.name] == getattr(args, f.name):
            continue
        old, new = recorded[f.name], getattr(args, f.name)
        line = f"--{f.name} {new!r} (checkpoint: {old!r})"
        policy = f.metadata.get("resume", "same")
        if policy == "max_steps":
            if new < step:
                refused.append(f"--max_steps {new} is below the checkpoint's step {step}")
            else:
                allowed.append(line + ": the learning-rate schedule now spans the new total, so the learning rate "
                                      "from here on differs from the original run's")
        elif policy == "free":
            allowed.append(line)
        else:
            refused.append(line)
    return refused, allowed


def _resolve_resume(args: PretrainArguments, output_dir: Path, rank: int, world_size: int = 1) -> Path | None:
    """The checkpoint to resume from (`latest`: the newest complete one), after checking the arguments against it."""
    resume = args.resume_from_checkpoint
    if not resume:
        return None
    if resume == "latest":
        resume = find_resumable_checkpoint(output_dir, rank)
        if resume is None:
            logger.warning(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}; starting from scratch")
            return None
    resume = Path(resume)
    state_file = resume / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {str(resume)!r}: no trainer_state.json there (not a checkpoint)")
    try:
        saved = json.loads(state_file.read_text())
        step = int(saved["global_step"])
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"{state_file}: not a trainer state ({type(error).__name__}: {error})") from error
    if saved.get("world_size", 1) != world_size and not (resume / SHARDED_FOLDER / ".metadata").is_file():
        raise ValueError(  # a sharded (FSDP) checkpoint reshards onto another number of processes (`load_checkpoint`)
            f"{resume} was written by {saved.get('world_size')} processes; resuming with {world_size} would change the "
            "data order and RNG streams. Resume with the same number of processes."
        )
    recorded = saved.get("arguments")
    if recorded is None:
        logger.warning(f"{resume} records no arguments (an older checkpoint): resuming without checking them")
        return resume
    refused, allowed = resume_changes(recorded, args, step)
    if refused:
        raise ValueError(
            f"Cannot resume from {resume}: the run would not continue the one that wrote it. Changed:\n  "
            + "\n  ".join(refused)
            + "\nResume with the checkpoint's values, or start a new run in another --output_dir."
        )
    for line in allowed:
        logger.warning(f"Resuming from {resume} with a changed argument: {line}")
    return resume


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def loss_table(history: list[dict[str, float]], window: int = 20) -> dict[str, tuple[float, float]]:
    """Per loss: (mean of its first `window` logged values, mean of its last `window`)."""
    names = sorted({k for record in history for k in record if k.startswith("loss/")})
    table = {}
    for name in names:
        values = [r[name] for r in history if name in r]
        n = max(1, min(window, len(values) // 2))
        table[name.split("/")[-1]] = (float(np.mean(values[:n])), float(np.mean(values[-n:])))
    return table


def format_loss_table(table: dict[str, tuple[float, float]]) -> str:
    lines = [f"{'loss':<14}{'first':>10}{'last':>10}"]
    lines += [f"{name:<14}{first:>10.4f}{last:>10.4f}" for name, (first, last) in table.items()]
    return "\n".join(lines)


def _history_stat(path: Path, key: str) -> float | None:
    """Median over the logged windows of `key` (e.g. samples_per_second, padding_fraction)."""
    values = [r[key] for r in read_history(path) if key in r]
    return float(np.median(values)) if values else None


def plot_loss_curves(history_path: Path, out_path: Path) -> Path:
    """Save a PNG with one panel per loss (raw and smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(history_path)
    names = sorted({k for record in history for k in record if k.startswith("loss/")})
    columns = 3
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        points = [(r["step"], r[name]) for r in history if name in r]
        steps, values = zip(*points)
        axis.plot(steps, values, alpha=0.3, color="tab:blue")
        window = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, color="tab:blue")
        axis.set_title(name.split("/")[-1])
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path


def evaluate_retrieval(model, processor, args: PretrainArguments, plan=None, match: str = "row") -> dict[str, dict[str, float]]:
    """Embed the evaluation rows (never training rows, see `plan_data`) and print R@1/5/10 for the directions between
    their modalities (six for tri-modal data); `match` as in `retrieval_metrics`."""
    plan = plan or plan_data(args)
    data = load_evaluation_rows(args, plan)
    if not hasattr(data, "__len__"):
        data = list(data)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.eval_batch_size, collate_fn=TriModalCollator(processor), num_workers=args.num_workers
    )
    embeddings = embed_batches(model, loader, progress=args.progress, match=match)
    results = retrieval_metrics(embeddings, match=match)
    print(format_retrieval_table(results, direction_sizes(embeddings), split=plan.name(), match=match), flush=True)
    return results

"""Every loss of OPT-Tri pre-training and fine-tuning as a function: MLM / decoder cross-entropy, masked regression,
masked frame contrastive, contrastive alignment (gathered across processes), WRA by IPOT, ITM pair building and
negative sampling; patchify helpers for the regression targets."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .configuration_opt_tri import OptTriConfig


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens: MLM at the masked tokens, and the next-token loss of every
    decoder (DTR, DIR, DAR, captioning). logits `(..., V)`, labels `(...)` with -100 where not labelled; 0 (not NaN)
    when nothing is labelled."""
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Deprecated name of [`token_cross_entropy`] (it also serves the decoders' losses); kept for one release."""
    warnings.warn("mlm_loss is deprecated: use token_cross_entropy", FutureWarning, stacklevel=2)
    return token_cross_entropy(logits, labels)


def masked_regression_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """
    Mean squared error over masked positions only: prediction/target `(B, n, d)` with mask `(B, n)` bool, or the
    masked positions already selected, `(M, d)` without a mask. 0 (not NaN) when no position is masked.
    """
    error = (prediction.float() - target.float()).pow(2).mean(-1)
    mask = torch.ones_like(error) if mask is None else mask.float()
    return (error * mask).sum() / mask.sum().clamp(min=1.0)


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The flat indices `(count,)` of the True entries of `mask` in row-major order, as `mask.flatten().nonzero()`
    gives them, for a `count` known on the host: fixed-shape code (a stable sort), so no host-device sync."""
    return torch.argsort((~mask.flatten()).to(torch.uint8), stable=True)[:count]


def gather_true(values: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """`values[mask]` for a `mask` over the leading dims of `values` with `count` True entries (known on the host),
    without the host-device sync of boolean indexing."""
    return values.flatten(0, mask.dim() - 1)[true_positions(mask, count)]


def masked_frame_contrastive_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    masked: torch.Tensor,
    real: torch.Tensor,
    temperature: float,
    count: int | None = None,
) -> torch.Tensor:
    """
    MAC: InfoNCE for each masked audio token between its prediction and the true frame patch (the positive), with
    every other *real* (unpadded) frame patch of the same clip as a negative. Logits are cosine similarities divided
    by the temperature (higher = more similar; OPT's code used `1 - cos` and so had the sign inverted, and took
    negatives across samples and from padding).

    Args:
        prediction: `(B, A, d)`, or `(M, d)`: the predictions at the masked positions only, in row-major order.
        target: `(B, A, d)`; masked: `(B, A)` bool, positions to predict; real: `(B, A)` bool, unpadded positions
            (candidates).
        count: the number `M` of masked positions when the caller knows it on the host (no host-device sync then).
    """
    if count is None:
        count = int(masked.sum())
    if count == 0:
        return prediction.sum() * 0.0
    index = true_positions(masked, count)  # (M,): each query's own frame, its positive among all B * A frames
    if prediction.dim() == 3:
        prediction = prediction.flatten(0, 1)[index]
    queries = F.normalize(prediction.float(), dim=-1)  # (M, d)
    candidates = F.normalize(target.flatten(0, 1).float(), dim=-1)  # (B * A, d)
    logits = queries @ candidates.t() / temperature
    sample = torch.arange(real.shape[0], device=real.device).repeat_interleave(real.shape[1])  # (B * A,)
    # negatives: the real frames of the query's own clip only
    candidate = (sample[index][:, None] == sample[None, :]) & real.flatten()[None, :]
    return F.cross_entropy(logits.masked_fill(~candidate, float("-inf")), index)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every process the gradient of its own slice (summed over processes)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.size = torch.distributed.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def _gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` `(B, ...)` from every process (equal B everywhere), keeping gradients."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return _GatherWithGrad.apply(tensor)
    return tensor


def clamped_logit_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """The temperature multiplier of a similarity logit: `exp(logit_scale)`, at most 100 (CLIP)."""
    return logit_scale.exp().clamp(max=100.0)


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, valid: torch.Tensor, local_loss: bool = False
) -> torch.Tensor:
    """
    Symmetric InfoNCE between normalised embeddings `a` and `b` `(B, d)` over the rows where `valid` `(B,)` is True,
    gathered across processes (with gradients) so that every process sees all negatives.

    With `local_loss` (open_clip's `--local-loss --gather-with-grad`) and several processes, each process scores only
    its own rows against the gathered gallery (`(B, world * B)` logits instead of `(world * B)^2`) and returns its
    share of the global loss, scaled by `world`: the mean over processes is the global loss, and the gradients (summed
    by the gather's backward, averaged by DDP/FSDP) are the global loss's.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if local_loss and world > 1:
        return _local_contrastive_loss(a, b, logit_scale, valid, world)
    a, b, valid = _gather_with_grad(a), _gather_with_grad(b), _gather_with_grad(valid.float()).bool()
    logits = clamped_logit_scale(logit_scale) * a.float() @ b.float().t()
    labels = torch.arange(a.shape[0], device=a.device)
    return _masked_info_nce(logits, logits.t(), valid, labels, valid, valid.sum())


def _masked_info_nce(a_to_b, b_to_a, rows, labels, columns, total) -> torch.Tensor:
    """Both directions' InfoNCE summed over the `rows` `(n,)` and divided by `2 * total`, the gallery limited to the
    `columns` `(N,)`: fixed-shape masks instead of selecting the valid rows, so no host-device sync. Fewer than two
    valid samples give 0 (one valid column has log-probability 0)."""
    floor = torch.finfo(a_to_b.dtype).min  # finite: a row without any valid column stays finite
    labels = labels.masked_fill(~rows, -100)
    summed = sum(
        F.cross_entropy(x.masked_fill(~columns[None, :], floor), labels, ignore_index=-100, reduction="sum")
        for x in (a_to_b, b_to_a)
    )
    return summed / (2 * total.clamp(min=1))


def _local_contrastive_loss(a, b, logit_scale, valid, world: int) -> torch.Tensor:
    """`contrastive_loss(..., local_loss=True)` on `world` processes: this process's rows against every row."""
    all_a, all_b, all_valid = _gather_with_grad(a), _gather_with_grad(b), _gather_with_grad(valid.float()).bool()
    own = torch.arange(a.shape[0], device=a.device) + torch.distributed.get_rank() * a.shape[0]
    scale = clamped_logit_scale(logit_scale)
    a_to_b = scale * a.float() @ all_b.float().t()
    b_to_a = scale * b.float() @ all_a.float().t()
    return world * _masked_info_nce(a_to_b, b_to_a, valid, own, all_valid, all_valid.sum())


@torch.no_grad()
def ipot_transport(cost: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor, beta: float = 0.5, iterations: int = 50):
    """
    Inexact proximal-point optimal transport (IPOT, Xie et al. 2019), batched, as UNITER uses for WRA.

    Args: cost `(B, n, m)`; x_mask `(B, n)`, y_mask `(B, m)` bool, real positions. Returns the plan `(B, n, m)`.
    """
    x_mask, y_mask = x_mask.float(), y_mask.float()
    joint = x_mask[:, :, None] * y_mask[:, None, :]
    x_len = x_mask.sum(1, keepdim=True).clamp(min=1.0)
    y_len = y_mask.sum(1, keepdim=True).clamp(min=1.0)
    sigma = y_mask / y_len  # (B, m)
    plan = joint.clone()
    kernel = torch.exp(-cost / beta) * joint
    for _ in range(iterations):
        q = kernel * plan
        delta = 1.0 / (x_len * (q @ sigma[:, :, None]).squeeze(-1)).masked_fill(x_mask == 0, 1.0)
        sigma = 1.0 / (y_len * (q.transpose(1, 2) @ delta[:, :, None]).squeeze(-1)).masked_fill(y_mask == 0, 1.0)
        sigma = sigma * y_mask
        plan = delta[:, :, None] * q * sigma[:, None, :]
    return plan * joint


def wra_loss(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor, positive: torch.Tensor):
    """
    Word-region alignment: the optimal-transport distance between the token states `x (B, n, d)` and `y (B, m, d)`
    (cost `1 - cos`), minimised for matched pairs (`positive` True) and maximised for mismatched ones.
    """
    cost = 1.0 - F.normalize(x.float(), dim=-1) @ F.normalize(y.float(), dim=-1).transpose(1, 2)
    plan = ipot_transport(cost.detach(), x_mask.bool(), y_mask.bool())
    distance = (plan * cost).sum(dim=(1, 2))
    sign = positive.float() * 2 - 1
    return (distance * sign).mean()


def patchify_images(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, N, C * p * p)` in the ViT patch order (row-major)."""
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch_size) * (w // patch_size), c * patch_size * patch_size)


def patchify_audio(input_features: torch.Tensor, patch_frames: int) -> torch.Tensor:
    """`(B, M, T)` -> `(B, ceil(T / p), M * p)`, zero-padded, in the order of the audio patch stem."""
    pad = (-input_features.shape[-1]) % patch_frames
    x = F.pad(input_features, (0, pad))
    b, m, t = x.shape
    return x.reshape(b, m, t // patch_frames, patch_frames).permute(0, 2, 1, 3).reshape(b, t // patch_frames, m * patch_frames)


def codes_by_patch(codes: torch.Tensor, patches_per_side: int) -> torch.Tensor:
    """
    Regroup a code grid `(B, g, g, *rest)` by ViT patch: `(B, P * P, r * r, *rest)` with `P = patches_per_side` and
    `r = g / P`; patches and the cells inside a patch are both in raster order (ViT's patch order).
    """
    batch, grid = codes.shape[0], codes.shape[1]
    r = grid // patches_per_side
    rest = codes.shape[3:]
    grouped = codes.reshape(batch, patches_per_side, r, patches_per_side, r, *rest).transpose(2, 3)
    return grouped.reshape(batch, patches_per_side**2, r * r, *rest)


def sample_itm_negatives(
    logits: torch.Tensor, hard_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One negative partner per sample on each side of a matching pair, as positions `0..n-1`: `(neg_a, neg_b)`, where
    `neg_b[i]` is the b partner of a-sample `i` and `neg_a[j]` the a partner of b-sample `j`, never the sample itself.
    `logits (n, n)` are the scaled similarities of a-sample `i` and b-sample `j` (the contrastive logits). With
    probability `hard_fraction` a negative is drawn from their softmax (hard, ALBEF), else uniformly (UNITER);
    draws from `generator` (default: torch's global RNG). The one sampler of pre-training and retrieval ITM.
    """
    n = logits.shape[0]
    with torch.no_grad():
        off_diagonal = 1.0 - torch.eye(n, device=logits.device)
        uniform = off_diagonal / (n - 1)

        def mixed(scores: torch.Tensor) -> torch.Tensor:
            hard = F.softmax(scores, dim=1) * off_diagonal
            hard = hard / hard.sum(1, keepdim=True).clamp_min(1e-12)
            return hard_fraction * hard + (1 - hard_fraction) * uniform + 1e-9 * off_diagonal

        weights_b, weights_a = mixed(logits), mixed(logits.t())
        neg_b = torch.multinomial(weights_b, 1, generator=generator).flatten()
        neg_a = torch.multinomial(weights_a, 1, generator=generator).flatten()
    return neg_a, neg_b


def itm_pairs(
    rows: torch.Tensor, neg_a: torch.Tensor, neg_b: torch.Tensor, rows_per_sample: int, generator=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The rows pairwise matching scores, as indices into the batch: `(a_index, b_index, labels)`, label 1 for a
    matched pair. `rows (n,)` are the samples, `neg_a (n,)` / `neg_b (n,)` a negative partner of each on side a / b.

    - `rows_per_sample=3` (ALBEF): `3n` rows, the positives, then each `a` with its negative `b`, then each `b`
      with its negative `a`.
    - `rows_per_sample=1` (UNITER, FLAVA): `n` rows, sample `i` as its positive pair with probability 1/2, else
      with one side (a or b, at random) replaced by its negative; draws from `generator` (default: torch's
      global RNG).
    """
    if rows_per_sample == 3:
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows), torch.zeros_like(rows)])
        return torch.cat([rows, rows, neg_a]), torch.cat([rows, neg_b, rows]), labels
    if rows_per_sample != 1:
        raise ValueError(f"rows_per_sample must be 1 or 3, got {rows_per_sample!r}")
    draws = torch.rand(2, rows.shape[0], device=rows.device, generator=generator)
    negative, replace_b = draws[0] < 0.5, draws[1] < 0.5
    a_index = torch.where(negative & ~replace_b, neg_a, rows)
    b_index = torch.where(negative & replace_b, neg_b, rows)
    return a_index, b_index, (~negative).long()


def _take(part: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return part[0][index], part[1][index]


def _classification_loss(config: OptTriConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's loss choice: `config.problem_type`, inferred from `num_labels` and the label dtype when unset."""
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    logits = logits.float()
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().reshape(-1))
        return F.mse_loss(logits, labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.long().view(-1), ignore_index=-100)
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    raise ValueError(
        f"problem_type must be regression, single_label_classification or multi_label_classification, "
        f"got {config.problem_type!r}"
    )

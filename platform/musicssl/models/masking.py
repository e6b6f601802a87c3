"""Span masking with fairseq v0.12.2 `compute_mask_indices` semantics, vectorised in torch.

`static` span lengths, overlap allowed. Per example: `num_mask = int(mask_prob * T / L + U[0,1))`, at least
`min_masks` (one U draw per row, or one for the whole batch with `batch_rounding`, as fairseq does when it
is given no padding mask); distinct uniform starts in [0, T - L); spans clipped at T. With
`require_same_masks`, every example is trimmed to the batch's smallest masked count by dropping random
individual frames (so spans become ragged, as in fairseq). Everything runs on the device of `lengths`, in tensor
ops whose shapes depend on the arguments only, so drawing a mask never waits for the device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_mask(lengths: Tensor | None, max_len: int, mask_prob: float, mask_length: int, *, min_masks: int = 1,
                 require_same_masks: bool = True, batch_rounding: bool = False,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 device: torch.device | None = None) -> Tensor:
    """Return a (B, max_len) bool mask, True = masked.

    Args:
        lengths: (B,) unpadded lengths in frames; None = `batch_size` rows of `max_len` frames on `device`
            (pretraining crops, never padded: nothing to check, so nothing is read from the device).
        max_len: T, the padded length.
        mask_prob: probability of each frame starting a span (not the masked fraction).
        mask_length: span length L.
        min_masks: lower bound on spans per example.
        require_same_masks: trim every row to the smallest masked count of the batch.
        batch_rounding: draw the rounding of `num_mask` once for the batch: fairseq v0.12.2 with
            `padding_mask=None` (data2vec pretraining). Off = one draw per row, as fairseq with a padding
            mask (HuBERT's collater always passes one). Needs every length equal to `max_len`.
        generator: torch RNG (on the same device) for reproducible masks.
    """
    if lengths is None:
        if batch_size is None:
            raise ValueError("compute_mask: give lengths, or batch_size for rows without padding")
        lengths = torch.full((batch_size,), max_len, device=device)
    elif batch_rounding and bool((lengths != max_len).any()):
        raise ValueError("compute_mask: batch_rounding needs unpadded rows (every length == max_len)")
    device = lengths.device
    B = lengths.shape[0]
    sz = lengths.to(torch.long)
    u = torch.rand(1 if batch_rounding else B, generator=generator, device=device, dtype=torch.float64)
    num = (mask_prob * sz.double() / mask_length + u).floor().long()
    num = num.clamp(min=min_masks)
    # fairseq: if T - L <= num_mask, min_len = T - num_mask - 1, so starts range over num_mask + 1 values
    span_room = torch.where(sz - mask_length <= num, num + 1, sz - mask_length).clamp(min=1)
    num = torch.minimum(num, span_room)
    # distinct starts: a random permutation of [0, room) per row, keep the first `num`
    keys = torch.rand(B, max_len, generator=generator, device=device)
    keys = keys.masked_fill(torch.arange(max_len, device=device)[None, :] >= span_room[:, None], 2.0)
    order = keys.argsort(dim=1)  # (B, T): positions in random order, valid ones first
    k_max = max_spans(max_len, mask_prob, mask_length, min_masks)  # a bound known from shapes: no host sync
    starts = order[:, :k_max]  # (B, K)
    chosen = torch.arange(k_max, device=device)[None, :] < num[:, None]  # (B, K)
    idx = starts[:, :, None] + torch.arange(mask_length, device=device)  # (B, K, L)
    keep = chosen[:, :, None] & (idx < sz[:, None, None])
    mask = torch.zeros(B, max_len + mask_length, dtype=torch.bool, device=device)
    mask.scatter_(1, torch.where(keep, idx, max_len).reshape(B, -1), True)
    mask = mask[:, :max_len]
    if require_same_masks and B > 1:
        mask = _trim_to_min_count(mask, generator)
    return mask


def max_spans(max_len: int, mask_prob: float, mask_length: int, min_masks: int) -> int:
    """The most spans a row of `max_len` frames can get: `num_mask` <= max(min_masks, mask_prob * T / L + 1)."""
    return min(max_len, max(min_masks, int(mask_prob * max_len / mask_length + 1.0)))


def _trim_to_min_count(mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """Keep a random subset of each row's masked frames so every row has the batch minimum count.

    In tensor ops (no host sync): each masked frame gets a random score, and a row keeps its `target` best-scored
    frames, `target` being the batch minimum; a row already at the minimum keeps them all.
    """
    target = mask.sum(1).min()
    scores = torch.rand(mask.shape, generator=generator, device=mask.device).masked_fill(~mask, -1.0)
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order))
    return mask & (rank < target)

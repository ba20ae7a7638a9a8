"""The degenerate-sample rule of the BD3-LM sampler: unigram entropy of a token window.

BD3-LM (kuleshov-group/bd3lms, diffusion.py `_compute_entropy` / `_check_stop_conds`,
read at commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7) checks, after every finished
block once the sequence is longer than 256 tokens, the unigram entropy (nats) of the token
counts of the last 256 tokens; below 4 the batch is thrown away and drawn again (at most
10 attempts). Because block sampling with an exact KV cache never changes a finished
block, the sequence at the end of block k is the final sample's prefix, so the rule can be
applied to a finished sample: it is degenerate when some window ending at a block end
after position `window` has entropy below the threshold (`is_degenerate`).

Shared by the draft stage (pipeline/stages.py, the redraw) and `sbd eval genppl`
(evaluate/metrics.py, the count of low-entropy samples), which may not import each other.
Pure torch: no records, no files, no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["block_ends", "is_degenerate", "tail_entropy", "window_entropy"]


def window_entropy(tokens: Sequence[int] | torch.Tensor) -> float:
    """-sum_v p_v log p_v (nats) of the token counts of `tokens`; NaN when empty."""
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        return float("nan")
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log()).sum())


def tail_entropy(tokens: Sequence[int] | torch.Tensor, window: int) -> float | None:
    """Entropy of the last `window` tokens, or None when there are no more than `window`
    tokens (the reference checks only sequences longer than its window)."""
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if ids.numel() <= window:
        return None
    return window_entropy(ids[-window:])


def block_ends(length: int, block: int) -> list[int]:
    """The sequence lengths at which the sampler finishes a block: B, 2B, ..., `length`."""
    step = length if block <= 0 else block
    ends = list(range(step, length, step))
    return [*ends, length] if length > 0 else []


def is_degenerate(
    tokens: Sequence[int] | torch.Tensor, threshold: float, window: int, block: int
) -> bool:
    """Whether a finished sample would have been redrawn: some prefix ending at a block end
    and longer than `window` has tail entropy below `threshold`."""
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    for end in block_ends(ids.numel(), block):
        h = tail_entropy(ids[:end], window)
        if h is not None and h < threshold:
            return True
    return False

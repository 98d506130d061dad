"""The LM head and cross-entropy chunk by chunk: the [tokens x vocabulary] logits are never held whole.

The plain path projects every kept position onto the whole vocabulary (49,152 columns for SmolLM2), keeps the
logits for the backward pass and builds their gradient beside them: tokens x vocabulary floats, several times.
Here each chunk of rows is projected, its loss and its logits' gradient computed at once (the loss ends the
graph, so its gradient is known in the forward pass, as in Liger's fused kernel), folded into the gradients of
the hidden states and the head's weight, and dropped; backward only scales them by the incoming gradient. The
same products as the plain path, with one chunk's logits in memory instead of all of them.
"""

from __future__ import annotations

import torch

IGNORE = -100
# Logits per chunk (64 MB in fp32): rows per chunk = this // vocabulary. Every chunk reads the whole head weight
# twice, so on a CPU small chunks are bound by memory bandwidth (at SmolLM2's 49k x 576 head, chunks of 32 rows
# ran at half the speed of chunks of 128); 341 rows a chunk keeps that cost small and the memory bounded.
CHUNK_LOGITS = 16 * 2**20


def chunk_rows_for(vocabulary: int) -> int:
    """Rows per chunk so that one chunk's logits stay near CHUNK_LOGITS values."""
    return max(1, CHUNK_LOGITS // vocabulary)


def compute_dtype_of(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the head's product runs in: autocast's where it is on (as the plain lm_head call would)."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross_entropy(hidden @ weight.T, targets), ignore_index rows left out, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int, dtype: torch.dtype, ignore_index: int):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        head = weight.to(dtype)
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = start + chunk_rows
            target = targets[start:stop]
            kept = target.ne(ignore_index)
            if not bool(kept.any()):  # nothing supervised in this chunk: no product at all
                continue
            rows = hidden[start:stop].to(dtype)
            # log_softmax, not logsumexp: on a CPU it is several times faster over 49k columns
            log_probs = (rows @ head.T).float().log_softmax(dim=-1)
            picked = target.clamp(min=0)
            loss -= torch.where(kept, log_probs.gather(1, picked[:, None]).squeeze(1), 0.0).sum()
            if not (need_hidden or need_weight):
                continue
            # d loss / d logits = softmax - one_hot(target), zero on ignored rows; in the log-probs' memory
            grad = log_probs.exp_()
            grad[torch.arange(grad.shape[0], device=grad.device), picked] -= 1.0
            grad.mul_(kept[:, None])
            grad = grad.to(dtype)
            if need_hidden:
                grad_hidden[start:stop] = (grad @ head).to(hidden.dtype)
            if need_weight:
                grad_weight += (grad.T @ rows).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        weight = (grad_weight * grad_loss).to(ctx.weight_dtype) if grad_weight is not None else None
        return hidden, weight, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden` [rows, H] projected by `weight` [V, H] against `targets` [rows]; divide
    by the supervised count outside, as the plain path does. Under autocast the product runs in autocast's dtype
    and the softmax in fp32, as `F.cross_entropy(lm_head(hidden).float(), ...)` does."""
    rows = chunk_rows or chunk_rows_for(weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(
        hidden, weight, targets, rows, compute_dtype_of(hidden), ignore_index
    )


def liger_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Liger's fused Triton kernel (CUDA only) with the same contract as chunked_linear_cross_entropy."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    dtype = compute_dtype_of(hidden)
    return liger_fused_linear_cross_entropy(
        hidden.to(dtype), weight.to(dtype), targets, ignore_index=ignore_index, reduction="sum"
    ).float()


def plain_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE
) -> torch.Tensor:
    """The reference: whole logits, then F.cross_entropy (what the sparse LM head does at its positions)."""
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")

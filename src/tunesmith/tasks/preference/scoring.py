"""Scoring answers of preference pairs: their log-probabilities in one forward pass, and preference accuracy."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.collate import IGNORE
from tunesmith.tasks.preference.data import PreferenceCollator


@dataclass
class SequenceLogps:
    logps: torch.Tensor  # per row: the summed log-probability of its answer tokens
    lengths: torch.Tensor  # per row: how many answer tokens
    nll: torch.Tensor | None = None  # mean token NLL of the first nll_rows rows, prompt included (ORPO)


def _innermost(model):
    """The model under DDP/accelerate wrappers (they hold it as .module)."""
    while hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def lm_head_only_at(model, where: torch.Tensor):
    """Within the block, the LM head projects only the hidden states at `where` (a rows x positions mask over
    the positions the forward keeps), flattened into one row.

    `logits_to_keep` can only keep whole columns: the union of every row's answer positions, so each short
    chosen answer's row would be projected over the long rejected answer's span too. A pre-hook on the head
    (through DDP, peft and a LoRA on the head alike) keeps exactly the scored tokens.
    """
    head = _innermost(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][where].unsqueeze(0), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def sequence_logps(model, batch: dict, prefix: str = "", nll_rows: int = 0) -> SequenceLogps:
    """Log-probabilities of every row's answer (labels != IGNORE) in one forward pass.

    The LM head and its vocabulary-wide log-softmax, the largest tensors of the step, run only at the
    (row, position) pairs some loss term scores: with long prompts and unequal answers that is a fraction of
    rows x positions (CausalLMTrainer's sparse head keeps whole columns; here rows differ too much for that).
    """
    input_ids, attention_mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    answer = batch[f"{prefix}labels"][:, 1:].ne(IGNORE)  # the token at t+1 is predicted at position t
    scored = answer.clone()
    if nll_rows:  # TRL's ORPO takes its NLL term over the chosen rows' prompt and answer
        scored[:nll_rows] |= attention_mask[:nll_rows, 1:].bool()
    keep = scored.any(dim=0).nonzero().squeeze(-1)
    where = scored[:, keep]
    with lm_head_only_at(model, where):
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False
        )
    logits = outputs.logits.float().reshape(-1, outputs.logits.size(-1))  # one row per scored token
    targets = input_ids[:, 1:][:, keep][where]
    per_token = -F.cross_entropy(logits, targets, reduction="none")
    row = where.nonzero()[:, 0]  # each scored token's row, in the order the mask flattened them
    on_answer = answer[:, keep][where].to(per_token.dtype)
    rows = input_ids.shape[0]
    logps = per_token.new_zeros(rows).index_add(0, row, per_token * on_answer)
    lengths = answer.sum(-1)
    nll = None
    if nll_rows:
        in_nll = row < nll_rows
        nll = -per_token[in_nll].sum() / in_nll.sum().clamp(min=1)
    return SequenceLogps(logps, lengths, nll)


def score_pairs(model, pairs: list[dict], pad_id: int, batch_size: int) -> dict:
    """Preference accuracy: the share of pairs whose chosen answer gets the higher mean log-probability per token.

    Per token, so that a short answer does not win by being short; it needs no reference model, so a base and a
    tuned model are scored alike (DPO's reward accuracy would be 0 for the base, whose rewards are all zero).
    """
    collate = PreferenceCollator(pad_id)
    wins, likelier, chosen_means, rejected_means, chosen_tokens, rejected_tokens = [], [], [], [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(pairs[start : start + batch_size]).items()}
            scored = sequence_logps(model, batch)
            half = scored.logps.shape[0] // 2
            means = scored.logps / scored.lengths.clamp(min=1)
            wins.append(means[:half] > means[half:])
            likelier.append(scored.logps[:half] > scored.logps[half:])
            chosen_means.append(means[:half])
            rejected_means.append(means[half:])
            chosen_tokens.append(scored.lengths[:half].float())
            rejected_tokens.append(scored.lengths[half:].float())
    model.train(was_training)
    if not wins:
        return {"pairs": 0}
    return {
        "pairs": len(pairs),
        "preference_accuracy": round(torch.cat(wins).float().mean().item(), 4),
        # the same comparison on the whole answers' log-probabilities, log P(answer | prompt), unnormalised
        "likelihood_accuracy": round(torch.cat(likelier).float().mean().item(), 4),
        "mean_logp_chosen": round(torch.cat(chosen_means).mean().item(), 4),
        "mean_logp_rejected": round(torch.cat(rejected_means).mean().item(), 4),
        "chosen_tokens": round(torch.cat(chosen_tokens).mean().item(), 1),
        "rejected_tokens": round(torch.cat(rejected_tokens).mean().item(), 1),
    }

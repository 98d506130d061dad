"""Scoring answers of preference pairs: their log-probabilities in one forward pass, and preference accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.collate import IGNORE
from tunesmith.data.preference import PreferenceCollator


@dataclass
class SequenceLogps:
    logps: torch.Tensor  # per row: the summed log-probability of its answer tokens
    lengths: torch.Tensor  # per row: how many answer tokens
    nll: torch.Tensor | None = None  # mean token NLL of the first nll_rows rows, prompt included (ORPO)


def sequence_logps(model, batch: dict, prefix: str = "", nll_rows: int = 0) -> SequenceLogps:
    """Log-probabilities of every row's answer (labels != IGNORE) in one forward pass.

    As CausalLMTrainer does, the LM head runs only at positions some row scores: with long prompts that is a
    fraction of the sequence, and the vocabulary-wide log-softmax is the largest tensor of the step.
    """
    input_ids, attention_mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    answer = batch[f"{prefix}labels"][:, 1:].ne(IGNORE)  # the token at t+1 is predicted at position t
    scored = answer.clone()
    if nll_rows:  # TRL's ORPO takes its NLL term over the chosen rows' prompt and answer
        scored[:nll_rows] |= attention_mask[:nll_rows, 1:].bool()
    keep = scored.any(dim=0).nonzero().squeeze(-1)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits.float()
    targets = torch.where(scored, input_ids[:, 1:], IGNORE)[:, keep]
    per_token = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    answer = answer[:, keep]
    logps, lengths = (per_token * answer).sum(-1), answer.sum(-1)
    nll = None
    if nll_rows:
        whole = scored[:nll_rows, keep]
        nll = -(per_token[:nll_rows] * whole).sum() / whole.sum().clamp(min=1)
    return SequenceLogps(logps, lengths, nll)


def score_pairs(model, pairs: list[dict], pad_id: int, batch_size: int) -> dict:
    """Preference accuracy: the share of pairs whose chosen answer gets the higher mean log-probability per token.

    Per token, so that a short answer does not win by being short; it needs no reference model, so a base and a
    tuned model are scored alike (DPO's reward accuracy would be 0 for the base, whose rewards are all zero).
    """
    collate = PreferenceCollator(pad_id)
    wins, chosen_means, rejected_means, chosen_tokens, rejected_tokens = [], [], [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(pairs[start : start + batch_size]).items()}
            scored = sequence_logps(model, batch)
            half = scored.logps.shape[0] // 2
            means = scored.logps / scored.lengths.clamp(min=1)
            wins.append(means[:half] > means[half:])
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
        "mean_logp_chosen": round(torch.cat(chosen_means).mean().item(), 4),
        "mean_logp_rejected": round(torch.cat(rejected_means).mean().item(), 4),
        "chosen_tokens": round(torch.cat(chosen_tokens).mean().item(), 1),
        "rejected_tokens": round(torch.cat(rejected_tokens).mean().item(), 1),
    }

"""Preference training on transformers' Trainer: chosen and rejected answers in one forward, the reference from
the same weights with the adapter switched off (or a frozen copy), and the rewards logged at every evaluation."""

from __future__ import annotations

import contextlib
import time

import torch
from transformers import Trainer

from tunesmith.tasks.preference.losses import Answers, LossSpec, Pairs, PreferenceLoss, get_loss, with_sft
from tunesmith.tasks.preference.scoring import SequenceLogps, sequence_logps
from tunesmith.tasks.preference.settings import PreferenceConfig
from tunesmith.training.loop import AtomicCheckpoints


def pair_loss(
    spec: LossSpec, pref: PreferenceConfig, policy: SequenceLogps, reference: torch.Tensor | None
) -> PreferenceLoss:
    """A paired loss for a batch of rows laid out as [chosen..., rejected...], plus the chosen answers' NLL
    (sft_weight) where the loss reads it."""
    count = policy.logps.shape[0] // 2  # the chosen rows come first
    logps, lengths = policy.logps, policy.lengths
    ref_chosen, ref_rejected = (None, None) if reference is None else (reference[:count], reference[count:])
    pairs = Pairs(
        logps[:count], logps[count:], lengths[:count], lengths[count:], ref_chosen, ref_rejected, policy.nll
    )
    result = spec.compute(pairs, pref)
    if "sft_weight" in spec.reads:
        result = with_sft(result, pairs.chosen, pairs.chosen_lengths, pref.sft_weight)
    return result


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout would make the policy's log-probabilities noisy against the reference's (TRL's default too)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PreferenceTrainer(AtomicCheckpoints, Trainer):
    """Trainer whose loss is a preference loss; rewards, margins, accuracy and log-probabilities are averaged
    over each logging window (train) and each whole evaluation (eval_*), into metrics.jsonl."""

    def __init__(self, *args, preference: PreferenceConfig, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.preference = preference
        self.loss = get_loss(preference.loss)
        self.reference_model = reference_model
        if reference_model is not None:
            reference_model.eval().requires_grad_(False)
            self.reference_model = reference_model.to(self.accelerator.device)
        disable_dropout(self.model)
        # The loss is a mean over pairs, not a sum over tokens: let the Trainer divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}

    # -- the reference ------------------------------------------------------------------------------------------
    def reference_logps(self, batch: dict, prefix: str = "") -> torch.Tensor | None:
        """The reference's summed answer log-probabilities: precomputed in the batch, a frozen copy, or the
        trained model itself with its adapter switched off (no second copy of the base in memory)."""
        if not self.loss.reference:
            return None
        cached = batch.get(f"ref_{prefix}logps")
        if cached is not None:
            return cached
        with torch.no_grad():
            if self.reference_model is not None:
                return sequence_logps(self.reference_model, batch, prefix).logps
            model = self.accelerator.unwrap_model(self.model)
            with model.disable_adapter():
                return sequence_logps(model, batch, prefix).logps

    # -- the loss -----------------------------------------------------------------------------------------------
    def preference_step(self, model, batch: dict) -> tuple[PreferenceLoss, SequenceLogps]:
        if not self.loss.paired:
            return self._unpaired_step(model, batch)
        pairs = batch["input_ids"].shape[0] // 2
        policy = sequence_logps(model, batch, nll_rows=pairs if self.loss.prompt_nll else 0)
        return pair_loss(self.loss, self.preference, policy, self.reference_logps(batch)), policy

    def _unpaired_step(self, model, batch: dict) -> tuple[PreferenceLoss, SequenceLogps]:
        with torch.no_grad():
            kl_logps = sequence_logps(model, batch, "kl_").logps
        policy = sequence_logps(model, batch)
        references = self.reference_logps(batch), self.reference_logps(batch, "kl_")
        answers = Answers(policy.logps, batch["desirable"], kl_logps, *references)
        return self.loss.compute(answers, self.preference), policy

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.preference.split_backward:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():  # one process only: the recipe refuses --nproc with it
            loss = split_backward(self, model, inputs, self.current_gradient_accumulation_steps)
        return loss.detach() / self.current_gradient_accumulation_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result, policy = self.preference_step(model, inputs)
        self._record("train" if model.training else "eval", result, policy, inputs)
        return (result.loss, {}) if return_outputs else result.loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The loss and metrics over the whole split on every rank, each pair weighed once: the Trainer's sharded
        loop pads a short last shard with repeated pairs and weighs batch losses by rows, so two processes would
        report a different validation loss than one (measured: 0.5362 vs 0.5422 on six pairs)."""
        with self._excluded():
            started = time.perf_counter()
            pairs = list(self.eval_dataset if eval_dataset is None else eval_dataset)
            batch_size = self.args.per_device_eval_batch_size
            model = self.accelerator.unwrap_model(self.model)  # no gradients, so nothing for DDP to sync
            was_training = model.training
            model.eval()
            total = 0.0
            with torch.no_grad():
                for start in range(0, len(pairs), batch_size):
                    chunk = pairs[start : start + batch_size]
                    batch = self._prepare_inputs(self.data_collator(chunk))
                    result, policy = self.preference_step(model, batch)
                    self._record("eval", result, policy, batch)
                    total += result.loss.item() * len(chunk)
            model.train(was_training)
            metrics = {
                f"{metric_key_prefix}_loss": total / max(len(pairs), 1),
                f"{metric_key_prefix}_runtime": round(time.perf_counter() - started, 4),
            }
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- metrics ------------------------------------------------------------------------------------------------
    def _add(self, mode: str, key: str, values: torch.Tensor) -> None:
        """Accumulate (sum, count) per metric: averages over examples, summed over ranks at log time."""
        values = values.detach().double()
        total = self._sums[mode].setdefault(key, torch.zeros(2, dtype=torch.float64, device=values.device))
        total[0] += values.sum()
        total[1] += values.numel()

    def _record(self, mode: str, result: PreferenceLoss, policy: SequenceLogps, inputs: dict) -> None:
        self._add(mode, "rewards/chosen", result.chosen_rewards)
        self._add(mode, "rewards/rejected", result.rejected_rewards)
        if self.loss.paired:
            pairs = policy.logps.shape[0] // 2
            self._add(mode, "logps/chosen", policy.logps[:pairs])
            self._add(mode, "logps/rejected", policy.logps[pairs:])
            self._add(mode, "rewards/accuracies", (result.chosen_rewards > result.rejected_rewards).float())
        else:
            desirable = inputs["desirable"]
            self._add(mode, "logps/chosen", policy.logps[desirable])
            self._add(mode, "logps/rejected", policy.logps[~desirable])
        if result.kl is not None:
            self._add(mode, "kl", result.kl.reshape(1))

    def averages(self, mode: str) -> dict[str, float]:
        """Each metric averaged over every example recorded since the last log, on all ranks."""
        values = {}
        for key, total in self._sums[mode].items():
            if self.accelerator.num_processes > 1:
                total = self.accelerator.reduce(total, reduction="sum")
            if total[1] > 0:
                values[key] = round((total[0] / total[1]).item(), 6)
        if "rewards/chosen" in values and "rewards/rejected" in values:
            values["rewards/margins"] = round(values["rewards/chosen"] - values["rewards/rejected"], 6)
        return values

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # An evaluation's log carries eval_loss; Trainer.evaluate returns this same dict, so the rewards
        # reach metric_for_best_model, the sweep's objective and metrics.jsonl alike.
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if mode == "train" and "loss" not in logs:
            return super().log(logs, start_time)
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{key}": value for key, value in self.averages(mode).items()})
        self._sums[mode].clear()
        super().log(logs, start_time)


def backward_chunks(batch: dict) -> list[torch.Tensor]:
    """Row indices of a [chosen..., rejected...] batch in chunks no larger, in padded token positions, than the
    chosen half: the chosen half whole, the rejected rows (longest first) packed greedily under that size."""
    lengths = batch["attention_mask"].sum(-1)
    pairs = lengths.shape[0] // 2
    limit = pairs * int(lengths[:pairs].max())
    chunks, current = [torch.arange(pairs)], []
    for row in sorted(range(pairs, 2 * pairs), key=lambda r: -int(lengths[r])):
        if current and (len(current) + 1) * int(lengths[current[0]]) > limit:
            chunks.append(torch.tensor(current))
            current = []
        current.append(row)
    if current:
        chunks.append(torch.tensor(current))
    return chunks


def split_backward(trainer: PreferenceTrainer, model, batch: dict, accumulation: int) -> torch.Tensor:
    """The step's loss and gradient with a chunk of rows in memory at a time.

    The loss is a function of each row's summed answer log-probability s_i (and its length), so its gradient is
    sum_i (dL/ds_i) grad s_i: s is computed for every row without gradients, dL/ds from the loss on those
    numbers, then each chunk is run again with gradients and backpropagated with its rows' dL/ds as weights.
    """
    with torch.no_grad():
        scored = sequence_logps(model, batch)
    logps = scored.logps.detach().requires_grad_(True)
    result = pair_loss(
        trainer.loss, trainer.preference, SequenceLogps(logps, scored.lengths), trainer.reference_logps(batch)
    )
    (weights,) = torch.autograd.grad(result.loss, logps)
    trainer._record("train", result, SequenceLogps(logps.detach(), scored.lengths), batch)
    for rows in backward_chunks(batch):
        rows = rows.to(batch["input_ids"].device)
        width = int(batch["attention_mask"][rows].sum(-1).max())  # rows are right-padded
        chunk = {k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "labels")}
        surrogate = (weights[rows] * sequence_logps(model, chunk).logps).sum() / accumulation
        trainer.accelerator.backward(surrogate)
    return result.loss.detach()


def precompute_reference(model, items: list[dict], collator, batch_size: int) -> list[dict]:
    """The reference log-probabilities of every example, computed once before training (for an adapter, with it
    switched off; for full/last_n, from the weights before the first step), so no reference runs during it."""
    adapter = hasattr(model, "disable_adapter")
    was_training = model.training
    model.eval()
    values: list[dict] = []
    with torch.no_grad(), model.disable_adapter() if adapter else contextlib.nullcontext():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = {k: v.to(model.device) for k, v in collator(chunk).items()}
            logps = sequence_logps(model, batch).logps.tolist()
            if "kl_input_ids" in batch:
                kl = sequence_logps(model, batch, "kl_").logps.tolist()
                values += [{"ref_logps": a, "ref_kl_logps": b} for a, b in zip(logps, kl, strict=True)]
            else:
                half = len(chunk)
                values += [
                    {"ref_chosen_logps": a, "ref_rejected_logps": b}
                    for a, b in zip(logps[:half], logps[half:], strict=True)
                ]
    model.train(was_training)
    return values

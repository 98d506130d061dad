"""Preference data: read -> validate (file:line) -> deduplicate -> split -> tokenize -> collate.

Paired rows hold a prompt, a chosen and a rejected answer; KTO's unpaired rows hold a prompt, a completion and a
boolean label. Each field is plain text or, as TRL's preference data sets are written, a list of
{role, content} messages (the prompt as the conversation so far, each answer as assistant messages). A row whose
answers are whole conversations with no prompt field has its prompt taken from their shared beginning.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tunesmith.config import DataConfig
from tunesmith.data.collate import IGNORE, PadCollator
from tunesmith.data.prepare import CheckedData, read_splits, rows_report, three_splits
from tunesmith.data.readers import Row, read_rows
from tunesmith.data.templates import Messages, Renderer
from tunesmith.data.validate import each_row, message_turns
from tunesmith.errors import TunesmithError
from tunesmith.tasks.preference import losses
from tunesmith.tasks.preference.settings import PreferenceConfig

ROLES = {"system", "user", "assistant"}
TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes"}, {"false", "0", "no"}


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (the conversation before the answer) with a better and a worse answer."""

    where: str
    prompt: Messages
    chosen: str
    rejected: str

    @property
    def key(self) -> tuple:
        return (self.prompt, self.chosen, self.rejected)

    def token_count(self, renderer: Renderer) -> int | None:
        """The longest sequence the model sees (prompt plus the longer answer); None if the template cannot
        render the pair."""
        item, _ = encode_pair(self, renderer)
        return longest(item) if item else None


@dataclass(frozen=True)
class LabelledAnswer:
    """KTO's unpaired example: a prompt and one answer marked desirable or not."""

    where: str
    prompt: Messages
    completion: str
    desirable: bool

    @property
    def key(self) -> tuple:
        return (self.prompt, self.completion, self.desirable)

    def token_count(self, renderer: Renderer) -> int:
        """The sequence the model sees: the prompt and the answer."""
        return longest(encode_labelled(self, renderer)[0])


# -- one row -> one example or one problem ---------------------------------------------------------------


def _conversation(data: dict, field: str) -> tuple[Messages | None, str | None]:
    """A text field as one message, or a list of {role, content} messages; (None, problem) otherwise."""
    if field not in data or data[field] is None:
        return None, f"missing field '{field}' (fields present: {', '.join(sorted(data)) or 'none'})"
    value = data[field]
    if isinstance(value, str):
        if not value.strip():
            return None, f"field '{field}' is empty"
        return (("text", value),), None
    if isinstance(value, list):
        if not value:
            return None, f"field '{field}' is an empty list"
        return message_turns(value, field)
    return None, f"field '{field}' must be a string or a list of messages, got {type(value).__name__}"


def _answer(turns: Messages, field: str) -> tuple[Messages, str | None, str | None]:
    """Split an answer field into (conversation before it, answer text, problem)."""
    if turns[0][0] == "text":
        return (), turns[0][1], None
    if turns[-1][0] != "assistant":
        return (), None, f"field '{field}' must end with an assistant message (the answer)"
    return turns[:-1], turns[-1][1], None


def _prompt(turns: Messages, cfg: DataConfig) -> Messages:
    """The prompt as a conversation: text becomes a user turn; data.system_prompt goes first unless one is set."""
    turns = (("user", turns[0][1]),) if turns[0][0] == "text" else turns
    if cfg.system_prompt and turns[0][0] != "system":
        turns = (("system", cfg.system_prompt), *turns)
    return turns


def _label(data: dict, field: str) -> tuple[bool | None, str | None]:
    if field not in data or data[field] is None:
        return None, f"missing field '{field}' (true: a desirable answer, false: an undesirable one)"
    value = data[field]
    if isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS, None  # CSV cells are text
    return None, f"field '{field}' must be true or false, got {value!r}"


def _with_prompt(data: dict, answer_prefix: Messages, pref: PreferenceConfig, cfg: DataConfig):
    """The row's prompt: its prompt field, or (no such field) the conversation its answers start with."""
    if pref.prompt_field in data or not answer_prefix:
        turns, problem = _conversation(data, pref.prompt_field)
        if problem:
            return None, problem
        if turns[-1][0] == "assistant":
            return (
                None,
                f"field '{pref.prompt_field}' ends with an assistant message; it must end where the answer starts",
            )
        if answer_prefix:
            return None, f"give the conversation in '{pref.prompt_field}' or in the answers, not in both"
        return _prompt(turns, cfg), None
    return _prompt(answer_prefix, cfg), None


def to_pair(row: Row, pref: PreferenceConfig, cfg: DataConfig) -> tuple[PreferencePair | None, str | None]:
    data = row.data
    chosen_turns, problem = _conversation(data, pref.chosen_field)
    rejected_turns, problem2 = _conversation(data, pref.rejected_field)
    if problem or problem2:
        return None, problem or problem2
    chosen_before, chosen, problem = _answer(chosen_turns, pref.chosen_field)
    rejected_before, rejected, problem2 = _answer(rejected_turns, pref.rejected_field)
    if problem or problem2:
        return None, problem or problem2
    if chosen_before != rejected_before:
        return None, (
            f"'{pref.chosen_field}' and '{pref.rejected_field}' differ before their last answer; "
            "both must continue the same prompt"
        )
    if chosen.strip() == rejected.strip():
        return None, f"'{pref.chosen_field}' and '{pref.rejected_field}' are identical; a pair must differ"
    prompt, problem = _with_prompt(data, chosen_before, pref, cfg)
    if problem:
        return None, problem
    return PreferencePair(row.where, prompt, chosen, rejected), None


def to_labelled(
    row: Row, pref: PreferenceConfig, cfg: DataConfig
) -> tuple[LabelledAnswer | None, str | None]:
    data = row.data
    turns, problem = _conversation(data, pref.completion_field)
    desirable, problem2 = _label(data, pref.label_field)
    if problem or problem2:
        return None, problem or problem2
    before, completion, problem = _answer(turns, pref.completion_field)
    if problem:
        return None, problem
    prompt, problem = _with_prompt(data, before, pref, cfg)
    if problem:
        return None, problem
    return LabelledAnswer(row.where, prompt, completion, desirable), None


def detect_shape(rows: list[Row], pref: PreferenceConfig, paired: bool) -> str:
    """'paired' (chosen/rejected) or, unless `paired`, 'unpaired' (completion/label), from the first readable row."""
    for row in rows:
        if row.data is None:
            continue
        keys = set(row.data)
        if {pref.chosen_field, pref.rejected_field} & keys:
            return "paired"
        if {pref.completion_field, pref.label_field} & keys and not paired:
            return "unpaired"
        unpaired_losses = " or ".join(losses.names(lambda spec: not spec.paired))
        unpaired = f"; or, for {unpaired_losses}, '{pref.completion_field}' and '{pref.label_field}'"
        raise TunesmithError(
            f"{row.where}: preference rows need '{pref.chosen_field}' and '{pref.rejected_field}'"
            f"{unpaired}, got fields {sorted(keys)}; set preference.chosen_field / rejected_field "
            "(or completion_field / label_field) to your names"
        )
    raise TunesmithError(
        f"{rows[0].source if rows else 'data'}: no readable rows; check the file is not empty"
    )


def validate_preference_rows(rows: list[Row], shape: str, pref: PreferenceConfig, cfg: DataConfig):
    """Valid examples and one 'file:line: reason' per bad row."""
    convert = to_pair if shape == "paired" else to_labelled
    return each_row(rows, partial(convert, pref=pref, cfg=cfg))


def unpair(pairs: list[PreferencePair]) -> list[LabelledAnswer]:
    """An unpaired loss (KTO) on paired data: each chosen answer is a desirable example, each rejected one an
    undesirable one."""
    answers = []
    for pair in pairs:
        answers.append(LabelledAnswer(pair.where, pair.prompt, pair.chosen, True))
        answers.append(LabelledAnswer(pair.where, pair.prompt, pair.rejected, False))
    return answers


def _split_by_prompt(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    """Hold out whole prompts, so that no held-out answer's prompt was seen in training."""
    import random

    prompts = list(dict.fromkeys(example.prompt for example in examples))
    random.Random(seed).shuffle(prompts)
    n_val = max(1, round(len(prompts) * ratio)) if len(prompts) > 1 else 0
    held = set(prompts[:n_val])
    return [e for e in examples if e.prompt not in held], [e for e in examples if e.prompt in held]


def check_preference_data(cfg: DataConfig, pref: PreferenceConfig, as_pairs: bool = False) -> CheckedData:
    """Read and validate every row of the train (validation and test) files; split as every task splits (whole
    prompts held out), counted in the report. As the loss reads them (pairs, or unpaired answers), or as pairs
    whatever the loss (`as_pairs`: a run of an unpaired loss is evaluated on pairs)."""
    paired = as_pairs or losses.get_loss(pref.loss).paired
    rows = read_rows(cfg.train_file)
    shape = detect_shape(rows, pref, paired)
    validate = partial(validate_preference_rows, shape=shape, pref=pref, cfg=cfg)
    train, validation, test, problems, read = read_splits(cfg, rows, validate)
    unpaired_for_loss = shape == "paired" and not paired
    fmt = f"preference ({shape}{f', unpaired for {pref.loss}' if unpaired_for_loss else ''})"
    report = rows_report(cfg, fmt, problems, read)
    if problems and cfg.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{cfg.validation_ratio:g} of the prompts in {cfg.train_file} held out (seed {cfg.seed})"
    # Split the rows as written, then unpair: a KTO run and its pair-scoring eval hold out the same prompts.
    train, validation, test = three_splits(train, validation, test, cfg, report, _split_by_prompt, held_out)
    if unpaired_for_loss:
        train, validation, test = unpair(train), unpair(validation), unpair(test)
    if not paired:
        report["desirable"] = sum(example.desirable for example in train)
        report["undesirable"] = len(train) - report["desirable"]
    return CheckedData(train, validation, report, problems, test)


# -- tokens ------------------------------------------------------------------------------------------------


def encode_answer(renderer: Renderer, prompt: Messages, answer: str) -> tuple[str, list[int], list[int]]:
    """(prompt text, prompt ids, answer ids) for one answer; the answer's ids end with the template's stop token.

    The prompt and the answer are tokenized apart, as SFT does, so the prompt's ids never depend on the answer.
    """
    pieces = renderer.segments((*prompt, ("assistant", answer)))
    prompt_text = "".join(text for text, _ in pieces[:-1])
    tokenizer = renderer.tokenizer
    prompt_ids = tokenizer(prompt_text, add_special_tokens=renderer.add_special_tokens)["input_ids"]
    answer_ids = tokenizer(pieces[-1][0], add_special_tokens=False)["input_ids"]
    return prompt_text, prompt_ids, answer_ids


def encode_pair(pair: PreferencePair, renderer: Renderer) -> tuple[dict | None, str | None]:
    prompt_text, prompt_ids, chosen_ids = encode_answer(renderer, pair.prompt, pair.chosen)
    other_prompt, _, rejected_ids = encode_answer(renderer, pair.prompt, pair.rejected)
    if other_prompt != prompt_text:
        return None, "the template renders the prompt differently before the two answers; check data.template"
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}, None


def encode_labelled(example: LabelledAnswer, renderer: Renderer) -> tuple[dict, None]:
    _, prompt_ids, completion_ids = encode_answer(renderer, example.prompt, example.completion)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "desirable": example.desirable}, None


def longest(item: dict) -> int:
    """The longest sequence the model sees for this example (prompt plus its longer answer)."""
    answers = [len(item[key]) for key in ("chosen_ids", "rejected_ids", "completion_ids") if key in item]
    return len(item["prompt_ids"]) + max(answers)


def tokenize_preference(
    examples: list, renderer: Renderer, max_length: int, split: str
) -> tuple[list[dict], dict]:
    """Tokenize; a pair longer than max_length is dropped whole (never one answer truncated), and counted."""
    encode = encode_pair if examples and isinstance(examples[0], PreferencePair) else encode_labelled
    stops = set(renderer.stop_token_ids())
    kept, over, unrenderable, without_stop = [], [], [], 0
    for example in examples:
        item, problem = encode(example, renderer)
        if problem:
            unrenderable.append(f"{example.where}: {problem}")
            continue
        if longest(item) > max_length:
            over.append(f"{example.where}: {longest(item)} tokens")
            continue
        answers = [item[key] for key in ("chosen_ids", "rejected_ids", "completion_ids") if key in item]
        without_stop += any(not stops & set(ids) for ids in answers)
        kept.append(item)
    if kept and "completion_ids" in kept[0]:
        add_mismatched_answers(kept)
    report = {
        f"{split}_over_max_length": {
            "max_length": max_length,
            "action": "drop",
            "count": len(over),
            "list": over[:50],
        },
        f"{split}_template_problems": unrenderable[:50],
        f"{split}_answers_without_stop_token": without_stop,
        f"{split}_pairs": len(kept),
    }
    return kept, report


def add_mismatched_answers(items: list[dict]) -> None:
    """KTO's KL reference point is estimated from prompts paired with answers written for other prompts: each
    example gets the previous one's answer (as TRL rotates completions), fixed here so that it can be cached."""
    for item, previous in zip(items, [items[-1], *items[:-1]], strict=True):
        item["kl_completion_ids"] = previous["completion_ids"]


# -- batches -----------------------------------------------------------------------------------------------


def _rows(prompt_ids: list[int], answer_ids: list[int]) -> dict:
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids}


class PreferenceCollator(PadCollator):
    """One batch of 2B rows: every chosen answer, then every rejected one, right-padded to the longest.

    Labels hold the answer ids (EOS included) and IGNORE on prompt and padding; reference log-probabilities
    precomputed for the pairs ride along.
    """

    def __call__(self, pairs: list[dict]) -> dict[str, torch.Tensor]:
        rows = [_rows(p["prompt_ids"], p["chosen_ids"]) for p in pairs]
        rows += [_rows(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
        batch = super().__call__(rows)
        if "ref_chosen_logps" in pairs[0]:
            batch["ref_logps"] = torch.tensor(
                [p["ref_chosen_logps"] for p in pairs] + [p["ref_rejected_logps"] for p in pairs]
            )
        return batch


class UnpairedCollator(PadCollator):
    """KTO batches: each prompt with its answer, plus (as kl_*) each prompt with its mismatched answer."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__([_rows(e["prompt_ids"], e["completion_ids"]) for e in examples])
        kl = PadCollator(self.pad_token_id)(
            [_rows(e["prompt_ids"], e["kl_completion_ids"]) for e in examples]
        )
        batch.update({f"kl_{key}": value for key, value in kl.items()})
        batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([e["ref_logps"] for e in examples])
            batch["ref_kl_logps"] = torch.tensor([e["ref_kl_logps"] for e in examples])
        return batch

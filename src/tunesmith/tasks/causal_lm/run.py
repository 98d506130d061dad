"""A finished causal-LM run: its tuned model and renderer, `tunesmith eval` on it, and what export needs of it."""

from __future__ import annotations

from contextlib import nullcontext

from tunesmith.console import say
from tunesmith.data.collate import pad_token_id
from tunesmith.data.prepare import check_data, tokenize_data, tokenize_examples
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.lm import language_model_loss
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.evaluation.tool_calls import NO_TRACE, tool_scores, tool_turns
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable
from tunesmith.models.loading import default_cache_dir, load_model
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import generator
from tunesmith.tasks.common import bad_rows_error, data_for_eval
from tunesmith.tasks.generator import eval_result, load_run


def evaluate(run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
    """Loss/perplexity on every example, and ROUGE/BLEU/exact match on `generations` of them; base beside it."""
    from tunesmith.tasks.causal_lm import overflow_line, sample_conversations

    tuned_lm = load_run(run)
    cfg = tuned_lm.cfg
    generations = cfg.eval.generations if generations is None else generations
    data_cfg = data_for_eval(cfg.data, data)
    checked = check_data(data_cfg)
    if checked.problems and data_cfg.on_error == "stop":
        raise bad_rows_error(checked)
    model, renderer = tuned_lm.model, tuned_lm.renderer
    tokenized = tokenize_data(checked, data_cfg, renderer, default_cache_dir(cfg.output.cache_dir))
    split = "data" if data else ("test" if checked.test else "validation")  # test: nothing was chosen on it
    if split == "test":
        examples = checked.test
        rows, over = tokenize_examples(examples, data_cfg, renderer)
    else:
        examples = checked.train if data else checked.validation
        rows = tokenized["train" if data else "validation"]
        over = tokenized["report"]["over_max_length"]["train" if data else "validation"]
    if not rows:
        raise TunesmithError(f"eval: no examples to score in {data or 'the validation split'}")
    if over["count"]:
        say(f"eval: {overflow_line(over, 'evaluated')}")
    pad_id = pad_token_id(renderer.tokenizer)
    prompts = sample_conversations(examples, generations)
    turns = tool_turns(examples, generations)

    def score(network) -> tuple[dict, list[str], list[str]]:
        scores = language_model_loss(network, rows, pad_id, cfg.eval.batch_size)
        outputs = (
            generate(network, renderer, [p[1] for p in prompts], cfg.eval.max_new_tokens) if prompts else []
        )
        if prompts:
            scores |= generation_scores([p[2] for p in prompts], outputs)
            scores["generated_examples"] = scores.pop("examples")
            scores["examples"] = len(rows)
        turn_outputs = []
        if turns:
            turn_scores, turn_outputs = score_tool_turns(network, renderer, turns, cfg.eval.max_new_tokens)
            scores |= turn_scores
        return scores, outputs, turn_outputs

    tuned, outputs, turn_outputs = score(model)
    base, base_outputs, base_turn_outputs = None, [None] * len(prompts), [None] * len(turns)
    if baseline:
        if hasattr(model, "disable_adapter"):  # LoRA/DoRA: the base is the same weights with the adapter off
            context, base_model = model.disable_adapter(), model
        else:
            base_model = load_model(run.read_summary().base_model_path, cfg.model)
            context = nullcontext()
        with context:
            base, base_outputs, base_turn_outputs = score(base_model)
    result = eval_result(cfg, split, len(rows), (tuned, base), prompts, outputs, base_outputs)
    if turns:
        result["tool_turns"] = [
            {
                "where": turn.where,
                "functions": [call.name for call in turn.reference.tool_calls],
                "after_tool": turn.after_tool is not None,
                "reference": turn.reference.content,
                "reference_calls": [[c.name, c.argument_values] for c in turn.reference.tool_calls],
                "output": output,
                "base_output": base_output,
            }
            for turn, output, base_output in zip(turns, turn_outputs, base_turn_outputs, strict=True)
        ]
    return result


def score_tool_turns(network, renderer, turns: list, max_new_tokens: int) -> tuple[dict, list[str]]:
    """evaluation/tool_calls.py's scores and the generated turns: each assistant turn generated from the
    conversation before it, its tools rendered; reasoning turns once more with an empty trace forced."""
    conversations, tools = [t.prompt for t in turns], [t.tools for t in turns]
    outputs = generate(network, renderer, conversations, max_new_tokens, tools=tools)
    no_trace = None
    if any(turn.reference.reasoning for turn in turns):
        no_trace = generate(network, renderer, conversations, max_new_tokens, tools=tools, prefill=NO_TRACE)
    return tool_scores(turns, outputs, no_trace), outputs


def exportable(run: RunFolder, auto_class: str) -> Exportable:
    """The merged model, left-padded prompt probes of two shapes, and validation batches for the loss check."""
    from tunesmith.tasks.causal_lm import CAUSAL_LM

    tuned_lm = load_run(run)
    cfg = tuned_lm.cfg
    checked = CAUSAL_LM.validated_data(cfg)
    cache = default_cache_dir(cfg.output.cache_dir)
    rows = tokenize_data(checked, cfg.data, tuned_lm.renderer, cache)["validation"][:MAX_VALIDATION_EXAMPLES]
    return generator.exportable(tuned_lm, rows, auto_class)

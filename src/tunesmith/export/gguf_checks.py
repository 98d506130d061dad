"""The proofs that a GGUF file behaves like the tuned model: reloaded logits, template token ids, llama.cpp itself."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tunesmith.data.templates import Messages, Renderer
from tunesmith.errors import TunesmithError
from tunesmith.export.chat_template import render

TOLERANCE = 1e-4  # f32/f16: the same numbers through another loader differ by rounding only
# llama.cpp's CPU kernels round activations to the weights' type before each product (f16 weights: f16
# activations), which transformers does not. Where the tuned model's two best next tokens are closer than that
# rounding (a logit near 25 rounds to f16 in steps of 0.016), greedy decoding may take either: a tie, not a
# different model. A llama.cpp answer is the tuned model's greedy answer "up to ties" when, read back through the
# tuned model in one forward, every token it chose (and its end token) is within this margin of the best logit.
TIE_MARGIN = {"f32": 5e-3, "f16": 0.02}  # f32: a cached decode and a whole forward differ by ~1e-3
# What an export says, on screen and in export.json and its README.md, when llama.cpp could not run the file.
NOT_CHECKED = "not checked in llama.cpp"
# Defaults of the quality gate against the fp32 merged model: mean KL (nats/token) and top-1 disagreement.
GATES = {
    "f32": {"max_kl": 1e-6, "max_drop": 0.0},
    "f16": {"max_kl": 1e-3, "max_drop": 0.01},
    "q8_0": {"max_kl": 1e-2, "max_drop": 0.03},
    # Measured on the quickstart run (bench/results/gguf_quickstart.json): q4_k_m, the coarsest, KL 0.066 and 13.4%
    # disagreement; a file that lost the fine-tune (the base model) 0.265 and 21.5%. The gates sit between the two.
    "k-quant": {"max_kl": 0.1, "max_drop": 0.17},
}


def gate(quantize: str, max_kl: float | None, max_drop: float | None) -> dict:
    defaults = GATES.get(quantize, GATES["k-quant"])
    return {
        "max_kl": defaults["max_kl"] if max_kl is None else max_kl,
        "max_drop": defaults["max_drop"] if max_drop is None else max_drop,
    }


def metadata(path: Path) -> dict:
    """The GGUF fields the checks read back from the written file (never from memory)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    read = {key: fields[key].contents() for key in fields if key.startswith(("tokenizer.", "general."))}
    tokens = read["tokenizer.ggml.tokens"]
    bos = read.get("tokenizer.ggml.bos_token_id")
    return {
        "template": read["tokenizer.chat_template"],
        "add_bos": bool(read.get("tokenizer.ggml.add_bos_token", False)),
        "bos_id": bos,
        "bos": tokens[bos] if bos is not None else "",
        "eos": tokens[read["tokenizer.ggml.eos_token_id"]],
    }


def _rounded_to_file(model, quantize: str):
    """The merged model with each weight at the precision the file stores it (f16: every 2-D tensor)."""
    if quantize == "f32":
        return model
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.ndim == 2:
                parameter.copy_(parameter.to(torch.float16).to(torch.float32))
    return rounded


def batches(sequences: list[list[int]], size: int = 8):
    for start in range(0, len(sequences), size):
        chunk = sequences[start : start + size]
        width = max(map(len, chunk))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
        yield ids, mask  # right padding: a causal model's real positions never see it


def reload_check(
    model, folder: Path, file_name: str, quantize: str, sequences: list[list[int]], limits: dict
) -> dict:
    """transformers' GGUF loader reads the file back; its logits against the merged model, gated."""
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file_name, dtype=torch.float32
    ).eval()
    exact = _rounded_to_file(model, quantize) if quantize in ("f32", "f16") else None
    kl_sum = agree = count = 0.0
    largest = 0.0
    with torch.no_grad():
        for ids, mask in batches(sequences):
            real = mask.bool()
            got = reloaded(input_ids=ids, attention_mask=mask).logits[real].double()
            reference = model(input_ids=ids, attention_mask=mask).logits[real].double()
            if exact is not None:
                stored = exact(input_ids=ids, attention_mask=mask).logits[real].double()
                largest = max(largest, (got - stored).abs().max().item())
            p_log, q_log = reference.log_softmax(-1), got.log_softmax(-1)
            kl_sum += (p_log.exp() * (p_log - q_log)).sum().item()
            agree += (reference.argmax(-1) == got.argmax(-1)).sum().item()
            count += real.sum().item()
    record = {
        "loader": f"transformers {transformers.__version__} AutoModelForCausalLM.from_pretrained(gguf_file=...)",
        "sequences": len(sequences),
        "tokens": int(count),
        "mean_kl": kl_sum / count,
        "top1_agreement": agree / count,
        **limits,
    }
    if exact is not None:
        record |= {"max_abs_logit_difference_vs_stored_weights": largest, "tolerance": TOLERANCE}
    problems = []
    if exact is not None and largest > TOLERANCE:
        problems.append(f"logits differ by {largest:.2e} from the merged model at {quantize} (> {TOLERANCE})")
    if record["mean_kl"] > limits["max_kl"]:
        problems.append(f"mean KL {record['mean_kl']:.3g} > max_kl {limits['max_kl']}")
    if 1 - record["top1_agreement"] > limits["max_drop"]:
        problems.append(
            f"top-1 agreement {record['top1_agreement']:.4f} is below 1 - max_drop ({limits['max_drop']})"
        )
    if problems:
        raise TunesmithError(
            f"export --format gguf --quantize {quantize} refused: {'; '.join(problems)}; nothing was written"
        )
    record["verdict"] = (
        f"mean KL {record['mean_kl']:.2e}, top-1 agreement {record['top1_agreement']:.2%} over {int(count)} tokens"
        + (f", max logit difference {largest:.1e} vs the weights as stored" if exact is not None else "")
    )
    return record


def _llama_cpp_prompt_ids(llama, template: str):
    """llama-cpp-python's own chat path: its Jinja2ChatFormatter on the file's template, then llama.cpp's tokenizer."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token: int) -> str:  # as llama-cpp-python builds its chat formatter from the file
        return llama._model.token_get_text(token) if token != -1 else ""

    formatter = Jinja2ChatFormatter(template, token_text(llama.token_eos()), token_text(llama.token_bos()))

    def prompt_ids(prompt: Messages | list[dict], tools=None) -> list[int]:
        messages = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in prompt]
        text = formatter(messages=messages, tools=tools).prompt
        return llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    return prompt_ids


def template_check(
    path: Path, renderer: Renderer, prompts: list[Messages], llama=None, tool_prompts: list[tuple] = ()
) -> dict:
    """The embedded template rendered by Jinja and tokenized gives exactly the ids tunesmith trained with: for
    plain prompts, and for `tool_prompts` ((conversation, tools as JSON text) pairs) with their tools."""
    meta = metadata(path)
    tokenizer = renderer.tokenizer
    llama_prompt_ids = _llama_cpp_prompt_ids(llama, meta["template"]) if llama is not None else None
    cases = [(prompt, prompt, None, ()) for prompt in prompts] + [
        (conversation, renderer.template_messages(conversation, tools), [json.loads(t) for t in tools], tools)
        for conversation, tools in tool_prompts
    ]
    equal = equal_llama = 0
    first_difference = None
    for index, (conversation, shown, tool_list, tools) in enumerate(cases):
        expected = (
            renderer.encode_prompt(conversation, tools) if tools else renderer.encode_prompt(conversation)
        )
        text = render(meta["template"], shown, True, meta["bos"], meta["eos"], tool_list)
        ids = [meta["bos_id"]] if meta["add_bos"] else []
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        same = ids == expected
        equal += same
        if llama_prompt_ids is not None:  # rendered and tokenized by the runtime, from the file alone
            same_llama = llama_prompt_ids(shown, tool_list) == expected
            equal_llama += same_llama
            same = same and same_llama
        if not same and first_difference is None:
            first_difference = {"prompt": index, "text": text[:300]}
    record = {
        "prompts": len(prompts),
        "tool_prompts": len(tool_prompts),
        "equal": equal,
        "add_bos_token": meta["add_bos"],
    }
    if llama is not None:
        record["equal_in_llama_cpp"] = equal_llama
    if first_difference is not None:
        record["first_difference"] = first_difference
        raise TunesmithError(
            f"export --format gguf refused: the embedded template gives other token ids than training for prompt "
            f"{first_difference['prompt']} ({equal} of {len(cases)} equal, llama.cpp: {equal_llama}); "
            "nothing was written"
        )
    return record


def _tunesmith_greedy(
    model, prompt_ids: list[int], stop_ids: list[int], max_new_tokens: int
) -> tuple[list[int], bool]:
    """tunesmith generate's decoding for one prompt: greedy, stopping at the run's stop tokens."""
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[0],
        )[0, len(prompt_ids) :].tolist()
    for position, token in enumerate(output):
        if token in stop_ids:
            return output[:position], True
    return output, False


def not_checked_in_llama_cpp() -> dict:
    """The runtime check's record when llama.cpp could not be loaded: says so, and claims nothing about llama.cpp."""
    return {
        "checked": False,
        "verdict": f"{NOT_CHECKED}: llama-cpp-python is not installed (`pip install llama-cpp-python`; `make "
        "setup` builds it), so llama.cpp generated no answer; only the reload and template checks ran",
    }


def open_llama(path: Path, context: int):
    """llama-cpp-python's Llama on the file, or None when the package is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=context, n_threads=torch.get_num_threads(), seed=0, verbose=False
    )


def _llama_greedy(llama, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], int | None]:
    """llama.cpp's greedy answer and the end-of-generation token it stopped at (None: it ran to the limit)."""
    tokens = []
    for token in llama.generate(
        prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True
    ):
        if _is_end_of_generation(llama, token):
            return tokens, token
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
    return tokens, None


def largest_shortfall(model, prompt_ids: list[int], answer: list[int], end: int | None) -> float:
    """How far below the tuned model's best logit llama.cpp's choices fall, at worst, along llama.cpp's own answer
    (its end token included), from one forward pass: 0 when every choice is the model's own greedy one."""
    chosen = answer + ([end] if end is not None else [])
    if not chosen:
        return 0.0
    with torch.no_grad():
        logits = (
            model(input_ids=torch.tensor([prompt_ids + chosen])).logits[0, len(prompt_ids) - 1 : -1].float()
        )
    picked = logits.gather(-1, torch.tensor(chosen).unsqueeze(-1)).squeeze(-1)
    return (logits.max(-1).values - picked).max().item()


def _is_end_of_generation(llama, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llama.model), token))


def runtime_check(
    llama, model, renderer: Renderer, prompts: list[Messages], max_new_tokens: int, quantize: str = "f32"
) -> dict:
    """llama.cpp's greedy answers against tunesmith's, token for token, and whether both stop at the end token.

    At f32/f16 an answer that departs from tunesmith's must be the tuned model's greedy answer up to ties
    (TIE_MARGIN), or the export is refused; quantized files are compared and recorded, not gated here (their gate
    is the reload check's KL and top-1 agreement)."""
    if llama is None:
        return not_checked_in_llama_cpp()
    import llama_cpp

    from tunesmith.evaluation.generation import generate

    stop_ids = renderer.stop_token_ids()
    not_eog = [
        renderer.tokenizer.convert_ids_to_tokens(s) for s in stop_ids if not _is_end_of_generation(llama, s)
    ]
    if not_eog:
        raise TunesmithError(
            f"export --format gguf refused: llama.cpp does not end generation at {', '.join(not_eog)}; "
            "the model would never stop; nothing was written"
        )
    texts = generate(
        model, renderer, list(prompts), max_new_tokens=max_new_tokens
    )  # what `tunesmith generate` prints
    margin = TIE_MARGIN.get(quantize)
    equal = equal_text = up_to_ties = stopped_tunesmith = stopped_llama = 0
    differences = []
    worst = (0.0, -1)  # (shortfall, prompt): the answer furthest from the model's own, over every prompt
    for index, prompt in enumerate(prompts):
        ids = renderer.encode_prompt(prompt)
        expected, expected_stop = _tunesmith_greedy(model, ids, stop_ids, max_new_tokens)
        got, end = _llama_greedy(llama, ids, max_new_tokens)
        got_stop = end is not None
        same = got == expected and got_stop == expected_stop
        equal += same
        stopped_tunesmith += expected_stop
        stopped_llama += got_stop
        text = llama.detokenize(got, special=False).decode("utf-8", errors="replace").strip()
        equal_text += text == texts[index]
        shortfall = 0.0 if same else largest_shortfall(model, ids, got, end)
        up_to_ties += same or (margin is not None and shortfall <= margin)
        worst = max(worst, (shortfall, index))
        if not same and len(differences) < 3:
            differences.append(
                {
                    "prompt": index,
                    "tunesmith": texts[index],
                    "llama_cpp": text,
                    "largest_logit_shortfall_of_llama_cpps_choices": round(shortfall, 5),
                }
            )
    record = {
        "checked": True,
        "runtime": f"llama-cpp-python {llama_cpp.__version__}",
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "greedy_equal_tokens": equal,
        "greedy_equal_text": equal_text,
        "stopped_at_end_token": {"tunesmith": stopped_tunesmith, "llama_cpp": stopped_llama},
        "stop_tokens_end_generation_in_llama_cpp": True,
    }
    if margin is not None:
        record |= {"greedy_equal_up_to_ties": up_to_ties, "tie_margin": margin}
    if differences:
        record["first_differences"] = differences
    record["verdict"] = (
        f"greedy answers equal token for token on {equal} of {len(prompts)} prompts"
        + (f" ({up_to_ties} up to ties within {margin:g} logits)" if margin is not None else "")
        + f"; stopped at the end token: llama.cpp {stopped_llama}, tunesmith {stopped_tunesmith}"
    )
    if margin is not None and up_to_ties < len(prompts):
        raise TunesmithError(
            f"export --format gguf --quantize {quantize} refused: llama.cpp answers prompt {worst[1]} "
            f"unlike the tuned model (a token {worst[0]:.3g} logits "
            f"below its best, more than a {margin:g} tie); {record['verdict']}; nothing was written"
        )
    return record

"""Write a merged causal LM as one GGUF file with the gguf package: tensors, hyperparameters, tokenizer, template.

The tensor layout follows llama.cpp's convert_hf_to_gguf.py: Llama-family q/k projections are permuted back to
the rotary layout llama.cpp computes with (transformers' GGUF loader undoes it the same way), 1-D tensors stay f32,
and a tied output projection is left out (both runtimes then reuse the token embedding).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError

# transformers class -> (llama.cpp architecture, whether q/k are permuted to llama.cpp's rotary layout)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": (
        "llama",
        True,
    ),  # llama.cpp runs Mistral as llama (convert_hf_to_gguf does the same)
    "Qwen2ForCausalLM": ("qwen2", False),  # NEOX rotary: no permutation
}
FLOAT_TYPES = ("f32", "f16", "q8_0")  # written by the gguf package itself
K_QUANTS = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* for its quantizer
QUANTIZATIONS = (*FLOAT_TYPES, *K_QUANTS)
# The regex Qwen2's tokenizer.json splits with; llama.cpp's "qwen2" pre-tokenizer is the same expression.
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass
class Vocabulary:
    """What llama.cpp needs to tokenize as the run's tokenizer does, and to know when an answer ends."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str  # llama.cpp's name for the pre-tokenizer regex
    eos: int
    add_bos: (
        bool  # llama.cpp prepends BOS to a tokenized prompt when set: only where tunesmith's prompts have it
    )
    bos: int | None = None
    pad: int | None = None
    eot: int | None = None  # a turn-ending token other than EOS (e.g. <|im_end|> with eos <|endoftext|>)
    stop_ids: list[int] = field(default_factory=list)


def architecture_of(model) -> tuple[str, str, bool]:
    """(transformers class, llama.cpp arch, permute q/k) or a one-line refusal naming the architecture."""
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    name = names[0]
    if name not in ARCHITECTURES:
        raise TunesmithError(
            f"export --format gguf: architecture {name} is not supported; "
            f"tunesmith writes GGUF for {', '.join(ARCHITECTURES)} (use --format safetensors or onnx for this run)"
        )
    rope = getattr(model.config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if kind not in ("default", None):  # transformers 5 keeps rope scaling in rope_parameters
        raise TunesmithError(
            f"export --format gguf: {name} with rope scaling {kind!r} is not written yet; use --format safetensors"
        )
    return (name, *ARCHITECTURES[name])


def _pre_tokenizer(backend: dict) -> str:
    """llama.cpp's name for the run tokenizer's pre-tokenizer; a refusal when llama.cpp has none that matches."""
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is not None and not byte_level.get("add_prefix_space", False):
        if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
            return "gpt-2"
        if (
            kinds == ["Digits", "ByteLevel"]
            and steps[0].get("individual_digits")
            and byte_level.get("use_regex", True)
        ):
            return "smollm"
        split = (steps[0].get("pattern") or {}).get("Regex")
        if kinds == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True) and split == QWEN2_SPLIT:
            return "qwen2"
    raise TunesmithError(
        f"export --format gguf: the tokenizer's pre-tokenizer ({'+'.join(map(str, kinds)) or 'none'}) has no "
        "llama.cpp equivalent tunesmith can name; GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM2, Qwen2)"
    )


def vocabulary(renderer: Renderer, vocab_size: int) -> Vocabulary:
    """The run's tokenizer as GGUF metadata (byte-level BPE, as llama.cpp's convert_hf_to_gguf.py writes it)."""
    from gguf import TokenType

    tokenizer = renderer.tokenizer
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise TunesmithError(
            f"export --format gguf: the tokenizer is {backend['model']['type']}, not byte-level BPE; "
            "tunesmith writes GGUF vocabularies for BPE tokenizers only"
        )
    pre = _pre_tokenizer(backend)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise TunesmithError(
            f"export --format gguf: the tokenizer has id {max(by_id)} but the model only {vocab_size} embeddings"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and with_special == [tokenizer.bos_token_id, *plain]
    stops = renderer.stop_token_ids()
    others = [s for s in stops if s != tokenizer.eos_token_id]
    return Vocabulary(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre,
        eos=tokenizer.eos_token_id,
        add_bos=renderer.add_special_tokens and adds_bos,
        bos=tokenizer.bos_token_id,
        pad=tokenizer.pad_token_id,
        eot=others[0] if others else None,
        stop_ids=stops,
    )


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: transformers' rotate-half layout to llama.cpp's pairs."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def named_tensors(model, arch: str, permute: bool):
    """(GGUF name, float32 array) for every weight, in llama.cpp's names and layout."""
    import gguf

    config = model.config
    names = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunesmithError(f"export --format gguf: no GGUF name for tensor {name} of {arch}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if permute and ".q_proj." in name:
            data = _permute(data, heads)
        elif permute and ".k_proj." in name:
            data = _permute(data, kv_heads)
        yield gguf_name, data


def _stored(data: np.ndarray, quantize: str):
    """The array as written and its GGML type: 1-D tensors stay f32; q8_0 rows need a multiple of 32 values."""
    from gguf import GGMLQuantizationType, quants

    if data.ndim == 1 or quantize == "f32":
        return data, GGMLQuantizationType.F32
    if quantize == "q8_0" and data.shape[-1] % 32 == 0:
        return quants.quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), GGMLQuantizationType.F16


def write_gguf(model, vocab: Vocabulary, template: str, path: Path, quantize: str, name: str) -> dict:
    """Write the file; returns how many tensors went out as each GGML type."""
    import gguf

    _, arch, permute = architecture_of(model)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[quantize]
    )
    if quantize == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope_theta or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.eos)
    if vocab.bos is not None:
        writer.add_bos_token_id(vocab.bos)
    if vocab.pad is not None:
        writer.add_pad_token_id(vocab.pad)
    if vocab.eot is not None:
        writer.add_eot_token_id(vocab.eot)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)

    written: dict[str, int] = {}
    for tensor_name, data in named_tensors(model, arch, permute):
        stored, kind = _stored(data, quantize)
        writer.add_tensor(
            tensor_name, stored, raw_dtype=kind
        )  # q8_0: byte rows; the writer derives the shape
        written[kind.name] = written.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def k_quantizer(quantize: str) -> str:
    """Which llama.cpp quantizer will make a k-quant: the llama-quantize binary, or llama-cpp-python's copy."""
    binary = shutil.which("llama-quantize")
    if binary:
        return binary
    try:
        import llama_cpp
    except ImportError:
        raise TunesmithError(
            f"--quantize {quantize}: k-quants need llama.cpp's quantizer; put llama-quantize on PATH or "
            "`pip install llama-cpp-python` (tunesmith itself writes f32, f16 and q8_0)"
        ) from None
    return f"llama-cpp-python {llama_cpp.__version__} (llama_model_quantize)"


def k_quantize(source: Path, target: Path, quantize: str) -> str:
    """Quantize an f16 GGUF file to a k-quant with llama.cpp's own quantizer; returns which one ran."""
    quantizer = k_quantizer(quantize)
    if not quantizer.startswith("llama-cpp-python"):
        done = subprocess.run(
            [quantizer, str(source), str(target), quantize.upper()], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise TunesmithError(f"llama-quantize failed on {source}: {done.stderr.strip()[-300:]}")
        return quantizer
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[quantize]
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise TunesmithError(f"--quantize {quantize}: llama.cpp's quantizer failed on {source}")
    return quantizer

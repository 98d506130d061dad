"""Resolve model.name (local folder, hub id, or .gguf file) and load tokenizer and model."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from tunesmith.config import ModelConfig
from tunesmith.errors import TunesmithError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def default_cache_dir(configured: str | None = None) -> Path:
    return Path(
        configured or os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith"
    ).expanduser()


def _gguf_file(cfg: ModelConfig) -> Path | None:
    """The .gguf file model.name points at, if any (a file, or a folder holding one with no config.json)."""
    path = Path(cfg.name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        if cfg.gguf_file:
            return path / cfg.gguf_file
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs and not (path / "config.json").exists():
            if len(ggufs) > 1:
                raise TunesmithError(
                    f"model.name: {path} holds several .gguf files; pick one with model.gguf_file"
                )
            return ggufs[0]
    return None


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """De-quantize a GGUF file once into a trainable safetensors folder, cached by file identity."""
    if not gguf.is_file():
        raise TunesmithError(f"model.gguf_file: {gguf} not found")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf.name} to a trainable safetensors folder (once; cached in {target})")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantized weights are plain floats; drop the GGUF quantizer flags the Trainer refuses to train.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a half-written conversion is never mistaken for a finished one
    return target


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def refuse_pickle_only(folder: Path, allow_pickle: bool) -> None:
    """Weights must come from safetensors; pickle files can execute code when loaded."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or allow_pickle:
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise TunesmithError(
            f"model.name: {folder} holds only pickle weights ({', '.join(pickles)}), which can run code when loaded; "
            "convert them to safetensors, or pass --allow-pickle (model.allow_pickle: true) to load them with "
            "torch.load(weights_only=True)"
        )


def resolve_model(cfg: ModelConfig, cache_dir: Path) -> str:
    """A local folder path (possibly a converted GGUF) or a hub id to pass to from_pretrained."""
    gguf = _gguf_file(cfg)
    if gguf is not None:
        return str(convert_gguf(gguf, cache_dir))
    path = Path(cfg.name).expanduser()
    if path.exists():
        refuse_pickle_only(path, cfg.allow_pickle)
        if not (path / "config.json").exists():
            raise TunesmithError(
                f"model.name: {path} is not a Hugging Face model folder (no config.json) and holds no .gguf file"
            )
        return str(path)
    if cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1:
        raise TunesmithError(f"model.name: {cfg.name} does not exist; check the path")
    return cfg.name


def _hub_error(name: str, exc: Exception) -> TunesmithError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = (
        "HF_HUB_OFFLINE=1 is set and it is not in the local cache"
        if offline
        else f"it could not be fetched ({type(exc).__name__})"
    )
    return TunesmithError(
        f"model.name: '{name}' is not a local folder, and as a hub id {why}; download it once on a connected "
        f"machine (`hf download {name}`) or point model.name at a local folder or .gguf file"
    )


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    except OSError as exc:
        raise _hub_error(path, exc) from None


def load_model(
    path: str, cfg: ModelConfig, quantization_config=None, auto_class: str = "AutoModelForCausalLM", **extra
):
    """Load weights through a transformers Auto class; `extra` goes to from_pretrained (num_labels, id2label, ...).
    `quantization_config`: the method's own (qlora's 4-bit); otherwise model.quantization decides."""
    import transformers

    kwargs = {
        **extra,
        "dtype": DTYPES[cfg.dtype],
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
    }
    # transformers reads .bin files with torch.load(weights_only=True); without allow_pickle only safetensors load
    kwargs["use_safetensors"] = None if cfg.allow_pickle else True
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quantization_config is None and cfg.quantization == "int8":
        from tunesmith.models.quantized import int8_config

        quantization_config = int8_config()  # the base as the run trains on it, and again when it reloads
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else "cpu"
    try:
        return getattr(transformers, auto_class).from_pretrained(path, **kwargs)
    except OSError as exc:
        raise _hub_error(path, exc) from None
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise TunesmithError(
                f"model.name: {path}: transformers has no {auto_class} for this architecture; "
                "pick a model made for the task (e.g. an encoder for text classification)"
            ) from None
        if "trust_remote_code" in str(exc):
            raise TunesmithError(
                f"model.name: {path} needs custom code from its repository; read that code, then set model.trust_remote_code: true"
            ) from None
        raise


def model_fingerprint(model_path: str) -> str:
    """A key for caches of what a model computed: its folder and each file's name, size and modification time."""
    folder = Path(model_path)
    parts = [str(folder.resolve()) if folder.exists() else model_path]
    for file in sorted(folder.glob("*")) if folder.is_dir() else []:
        if file.is_file():
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()

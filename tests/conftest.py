"""Shared fixtures: a tiny randomly initialised Llama with the real SmolLM2 tokenizer.

The tokenizer is extracted once from the embedded GGUF and cached (about 15 s on first use);
the model has 2 layers of width 64, so a learning step takes milliseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from lifelong.model.loading import default_tokenizer_folder
from lifelong.model.policy import LoraSettings, Policy

torch.set_num_threads(2)

pytest_plugins = ["tests.memory.postgres"]  # the `pg_url` fixture: a PostgreSQL server on loopback


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(default_tokenizer_folder())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def make_tiny_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A 2-layer, 64-wide Llama over the real tokenizer; `overrides` change its LlamaConfig."""
    torch.manual_seed(seed)
    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(LlamaConfig(**(settings | overrides)))
    model.eval()
    return model


@pytest.fixture
def tiny_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    return make_tiny_model(tokenizer)


@pytest.fixture
def tiny_policy(tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> Policy:
    return Policy(tiny_model, tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tiny model saved as a Hugging Face folder, for `--model PATH` runs."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_eval_args(model_dir: Path, out: Path, *flags: str) -> list[str]:
    """`lifelong eval` argv for the smallest real comparison: tiny model, two one-update stages."""
    return ["eval", "--model", str(model_dir), "--tasks", "add,letter", "--methods", "frozen,grpo",
            "--episodes", "32", "--probe-size", "3", "--out", str(out), "--threads", "1",
            "--json", "--quiet", *flags]  # fmt: skip


def assert_rerun_only_resumes(run_dirs: list[Path], rerun: Callable[[], int]) -> None:
    """A second call reads finished run folders instead of training again: each metrics.jsonl
    gains only the resume record."""
    before = {d: (d / "metrics.jsonl").read_text().count("\n") for d in run_dirs}
    assert rerun() == 0
    assert {d: (d / "metrics.jsonl").read_text().count("\n") for d in run_dirs} == {d: n + 1 for d, n in before.items()}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height

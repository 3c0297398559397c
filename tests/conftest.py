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

from lifelong.guard.gate import GuardConfig
from lifelong.learn.distill import DistillConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.tenants import TenantLearningConfig
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


def make_learnable_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    return make_tiny_model(tokenizer, seed, pad_token_id=None, initializer_range=0.2)


@pytest.fixture
def tiny_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    return make_tiny_model(tokenizer)


@pytest.fixture
def tiny_policy(tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> Policy:
    return Policy(tiny_model, tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))


def model_folder(folder: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> Path:
    """`model` and `tokenizer` saved as a Hugging Face folder (what `--model PATH` loads)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tiny model saved as a Hugging Face folder, for `--model PATH` runs."""
    return model_folder(tmp_path_factory.mktemp("tiny-model"), make_tiny_model(tokenizer), tokenizer)


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


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    return model_folder(tmp_path_factory.mktemp("serve-model"), make_learnable_model(tokenizer), tokenizer)


@pytest.fixture
def serve_policy(serve_model_dir: Path) -> Policy:
    from lifelong.model.loading import load_model

    model, tokenizer, name = load_model(str(serve_model_dir))
    torch.manual_seed(0)  # the LoRA initialisation
    return Policy(model, tokenizer, name=name, lora=LoraSettings(rank=4, alpha=8))


SKY = "What color is the sky? ({})"


def teach_blue(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, steps: int = 15) -> None:
    """Full fine-tune so the base model itself answers sky questions with "blue" in plain chat (the
    server's format at reasoning effort none): operator probes then measure something the model
    knows, and flipped feedback has something to damage."""
    from lifelong.learn.logprobs import completion_logprobs
    from lifelong.types import Sample

    target = (*tokenizer.encode("blue", add_special_tokens=False), tokenizer.eos_token_id)
    samples = []
    for i in range(200, 216):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": SKY.format(i)}], add_generation_prompt=True, tokenize=True
        )
        prompt = prompt if isinstance(prompt, list) else prompt["input_ids"]
        samples.append(Sample(tuple(prompt), target, (0.0,) * len(target), (1,) * len(target), 1.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logp, _, mask = completion_logprobs(model, samples, tokenizer.eos_token_id)
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def knowing_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny model that already answers "blue" to sky questions (see teach_blue)."""
    folder = tmp_path_factory.mktemp("knowing-model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = make_learnable_model(tokenizer, seed=1)
    teach_blue(model, tokenizer)
    torch.set_num_threads(threads)
    return model_folder(folder, model, tokenizer)


# Learning settings for tiny models: few probes, strong steps. A random tiny model's replies are
# near-uniform (about -8.6 nats/token) and a round at these rates moves them about 0.4, and changes
# most of its greedy first words: the general-likelihood, changed- and lost-answer budgets are wide open
# (the tests that check them set their own).
FAST_LEARNING = TenantLearningConfig(
    steps_per_round=4,
    probe_items=4,
    anchor_items=4,
    anchor_per_step=2,
    answer_tokens=4,
    grpo=GRPOConfig(learning_rate=1e-2, group_size=2, kl_coef=0.02, temperature=1.0),
    distill=DistillConfig(learning_rate=1e-2),
    guard=GuardConfig(
        confirm_items=0,
        drift_prompts=2,
        general_likelihood_budget=100.0,
        general_changed_budget=1.0,
        general_lost_budget=1.0,
    ),
)

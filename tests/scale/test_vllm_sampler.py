"""The vLLM backend. On CPU: its protocol, adapter hot-loading and mismatch metric, driven through a
stand-in engine that loads each adapter folder with peft and samples with the torch sampler. On a
GPU with vLLM installed (marked `gpu`): the real engine."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from lifelong.cli import main
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job
from lifelong.loop.runtime import RunConfig
from lifelong.model.adapters import trainable
from lifelong.model.loading import load_model
from lifelong.model.policy import LoraSettings, Policy
from lifelong.model.sampler import STOP, sample
from lifelong.model.vllm_sampler import Adapter
from lifelong.scale.vllm_actor import VLLMActor, vllm_runtime
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import StopReason

COIN = "tests.support_envs:coin"


class PeftEngine:
    """Stands in for vLLM: loads every adapter folder it is named, by id, and samples with it."""

    def __init__(self, model_dir: Path, tokenizer: PreTrainedTokenizerBase, eos_ids: set[int]) -> None:
        self.model_dir, self.tokenizer, self.eos_ids = model_dir, tokenizer, eos_ids
        self.loaded: dict[int, PeftModel] = {}

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_tokens: int,
        stop: list[str],
        temperature: float,
        seeds: list[int],
        adapter: Adapter,
    ) -> list[tuple[list[int], list[float]]]:
        if adapter.id not in self.loaded:
            base = AutoModelForCausalLM.from_pretrained(self.model_dir)
            self.loaded[adapter.id] = PeftModel.from_pretrained(base, adapter.path).eval()
        rows = sample(
            self.loaded[adapter.id],
            contexts,
            max_new_tokens=max_tokens,
            eos_ids=self.eos_ids,
            pad_id=int(self.tokenizer.pad_token_id),
            temperature=temperature,
            generator=torch.Generator().manual_seed(seeds[0]),
            control=lambda row, ids: STOP if any(s in self.tokenizer.decode(ids) for s in stop) else None,
        )
        return [(r.token_ids, r.logprobs) for r in rows]


def _config(model_dir: Path, **kw: Any) -> RunConfig:
    stream = Stream("t", (Stage(Task.of(COIN), 8),), probe_size=4)
    return RunConfig(
        stream=stream.to_dict(), model=str(model_dir), lora=LoraSettings(rank=4, alpha=8), answer_tokens=4, **kw
    )


@pytest.mark.parametrize("thinking", [0, 6])
def test_adapters_are_hot_loaded_by_version_and_the_mismatch_is_measured(
    tiny_model_dir: Path, tmp_path: Path, thinking: int
) -> None:
    config = _config(tiny_model_dir, thinking_tokens=thinking)
    torch.manual_seed(0)
    model, tokenizer, name = load_model(config.model)
    learner = Policy(model, tokenizer, name=name, lora=config.lora)
    engine = PeftEngine(tiny_model_dir, tokenizer, learner.eos_ids)
    actor = VLLMActor(learner, config, tmp_path, engine=engine)
    jobs = [Job(COIN, 5, group="1:0")] * 4
    gen = config.generation(1.0)
    for version in (0, 1):
        with torch.no_grad():  # an update: the engine must answer with these adapters, not older ones
            for p in trainable(learner):
                p.add_(0.3 * torch.randn_like(p))
        learner.version = version
        episodes = actor.play(jobs, gen)
        assert {e.adapter_version for e in episodes} == {version}
    assert sorted(engine.loaded) == [1, 2]  # one engine adapter id per version
    record = json.loads((tmp_path / "rollouts.jsonl").read_text().splitlines()[-1])
    # The stand-in runs the same fp32 weights, read back from the saved adapter folder: no gap.
    assert record["sampler/logprob_mismatch"] < 1e-4 and record["total/adapter_loads"] == 2
    for e in episodes:
        c = e.turns[0].completion
        assert len(c.token_ids) == len(c.logprobs) == len(c.loss_mask)
        forced = [lp for lp, m in zip(c.logprobs, c.loss_mask, strict=True) if m == 0]
        assert forced and all(lp == 0.0 for lp in forced)  # the "Answer:" marker is never a target
        if thinking == 0:
            assert c.stop in (StopReason.THINK_BUDGET, StopReason.ANSWER_BUDGET) and c.reasoning == ""


def test_a_run_with_the_vllm_actor_learns_through_the_same_runtime(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, prompts_per_step=2, grpo=GRPOConfig(group_size=4, learning_rate=1e-3))
    model, tokenizer, name = load_model(config.model)
    policy = Policy(model, tokenizer, name=name, lora=config.lora)
    engine = PeftEngine(tiny_model_dir, tokenizer, policy.eos_ids)
    summary = vllm_runtime(config, policy, tmp_path / "run", engine=engine).run()
    assert summary.episodes == 8 and set(summary.after) == {COIN}
    assert (tmp_path / "run" / "vllm-adapters").is_dir()


_HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(_HAS_VLLM and torch.cuda.is_available(), reason="vLLM and a GPU are here: the sampler runs")
def test_the_vllm_sampler_without_vllm_or_a_gpu_is_a_one_line_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--model", str(tiny_model_dir), "--tasks", COIN, "--runs-dir", str(tmp_path), "--quiet",
            "--sampler", "vllm"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the vllm sampler needs") and " -- " in err[0]


@pytest.mark.gpu
def test_vllm_on_a_gpu_samples_with_the_learners_adapters(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'lifelong[gpu]' on a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the vLLM sampler needs an NVIDIA GPU")
    stream = Stream("t", (Stage(Task.of("add", max_value=20), 32),), probe_size=4)
    config = RunConfig(stream=stream.to_dict())  # the embedded SmolLM2-135M-Instruct
    model, tokenizer, name = load_model(config.model)
    learner = Policy(model, tokenizer, name=name, lora=config.lora)
    actor = VLLMActor(learner, config, tmp_path, gpu_memory_utilization=0.2)
    jobs = [Job("add(max_value=20)", seed, group=str(seed)) for seed in range(4) for _ in range(8)]
    for version in (0, 1):
        with torch.no_grad():
            for p in trainable(learner):
                p.add_(0.01 * torch.randn_like(p))
        learner.version = version
        episodes = actor.play(jobs, config.generation(1.0))
        assert {e.adapter_version for e in episodes} == {version}
    record = json.loads((tmp_path / "rollouts.jsonl").read_text().splitlines()[-1])
    # bf16/fp16 kernels vs the fp32 learner: a small gap, measured (the ratio corrects it)
    assert 0.0 <= record["sampler/logprob_mismatch"] < 0.5

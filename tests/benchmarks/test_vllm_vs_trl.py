"""benchmarks/vllm_vs_trl.py, our side without a GPU: the tiny model, the stand-in engine of
tests/scale/test_vllm_sampler.py and the coin task. Every applied update takes a new version through
the learning core, and the actor loads it into the engine before sampling again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tests.benchmarks.conftest import load_benchmark
from tests.scale.test_vllm_sampler import PeftEngine
from transformers import PreTrainedTokenizerBase

from lifelong.model.loading import load_model
from lifelong.model.policy import Policy

bench = load_benchmark("vllm_vs_trl")


def test_our_side_samples_every_step_with_the_adapters_it_learned_last(
    tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "TASK", "tests.support_envs:coin")  # rewards a random model earns
    monkeypatch.setattr(bench, "TASK_PARAMS", {})
    args = argparse.Namespace(
        model=str(tiny_model_dir), prompts=2, group=4, completion_tokens=4, lr=1e-3, vllm_memory=0.3,
        warmup=1, steps=3, seed=0, workdir=str(tmp_path),
    )  # fmt: skip
    model, _, _ = load_model(str(tiny_model_dir))
    engine = PeftEngine(tiny_model_dir, tokenizer, Policy(model, tokenizer).eos_ids)
    result = bench.run_ours(args, device="cpu", engine=engine)
    assert result["updates_applied"] >= 2, "updates were skipped: the test lost its signal"
    rollouts = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    versions = [r["version"] for r in rollouts]
    # one load per version sampled with, each a version the core gave an applied update
    assert result["adapter_loads"] == len(set(versions)) == len(engine.loaded) >= 2
    assert versions == sorted(versions) and all(r["staleness/max"] == 0 for r in rollouts)
    assert result["sampled_tokens"] > 0 and result["sampler_mismatch_mean"] is not None

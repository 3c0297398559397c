"""benchmarks/faults.py: its faults go in through the runtime's public parts, in the fault steps only.

On the tiny model and the coin task (rewards a random model earns): a four-step run per fault. The
serve target on the tiny model through a live server (kill9 of `lifelong serve` is covered by
tests/serve/test_durability.py)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.benchmarks.conftest import load_benchmark
from tests.conftest import FAST_LEARNING

from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.loop.tenants import CorrectionRule
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import LoraSettings, Policy
from lifelong.streams.stream import Stage, Stream, Task

faults = load_benchmark("faults")
COIN = "tests.support_envs:coin"
STEPS = 4  # the fault is active in steps 1..3 (faults.FAULT_STEPS), step 4 is normal
# The serve target on the tiny model: NLL corrections (a random model reads no quoted correction).
SERVE_LEARNING = replace(FAST_LEARNING, steps_per_round=2, correction_rule=CorrectionRule.NLL)


def _runtime(policy: Policy, run_dir: Path, guard: bool) -> Runtime:
    stream = Stream("t", (Stage(Task.of(COIN), STEPS * 8),), probe_size=2)
    config = RunConfig(
        stream=stream.to_dict(),
        prompts_per_step=2,
        eval_every=0,
        answer_tokens=3,
        consolidate=False,
        grpo=GRPOConfig(group_size=4, learning_rate=1e-3),
        guard=GuardConfig(enabled=guard, drift_prompts=2, confirm_items=0),
    )
    return Runtime(config, policy, run_dir)


def _inject(runtime: Runtime, fault: str) -> Runtime:
    """As faults.run_fault does."""
    actor = faults.FaultyActor(runtime, fault)
    runtime.actor = actor
    runtime.core.learner = faults.FaultyLearner(runtime.learner, fault, actor.active)
    return runtime


def _updates(run_dir: Path) -> dict[int, dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["type"] == "update"}


def test_lr_spike_multiplies_the_rate_in_the_fault_steps_only(tiny_policy: Policy, tmp_path: Path) -> None:
    _inject(_runtime(tiny_policy, tmp_path / "run", guard=False), "lr_spike").run()
    lr = {step: r["optim/lr"] for step, r in _updates(tmp_path / "run").items() if r["applied"]}
    assert set(lr) & set(faults.FAULT_STEPS) and STEPS in lr, "updates were skipped: the test lost its signal"
    assert all(rate == pytest.approx(1e-3 * (100 if step in faults.FAULT_STEPS else 1)) for step, rate in lr.items())


def test_nan_grad_is_refused_by_the_learner_and_seen_by_the_guard(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = _inject(_runtime(tiny_policy, tmp_path / "run", guard=True), "nan_grad")
    version = runtime.core.version
    runtime.run()
    updates = _updates(tmp_path / "run")
    in_fault = {updates[s]["reason"] for s in faults.FAULT_STEPS}
    assert "non-finite gradient" in in_fault and in_fault <= {"non-finite gradient", "no group had reward spread"}
    assert updates[STEPS]["applied"]  # the fault is over
    assert runtime.core.version == version + 1  # a refused update takes no new version
    assert "non_finite" in faults.findings(tmp_path / "run")


def test_reward_faults_rewrite_training_rewards_never_probes(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = _inject(_runtime(tiny_policy, tmp_path / "run", guard=False), "always_one")
    runtime.run()
    with ExperienceStore(tmp_path / "run" / "experience.sqlite") as store:
        rewards = {s: {e.reward for e in store.episodes(step=s, split="train")} for s in range(1, STEPS + 1)}
        probes = {e.reward for e in store.episodes(split="probe")}
    assert all(rewards[s] == {1.0} for s in faults.FAULT_STEPS)
    assert rewards[STEPS] != {1.0} and probes != {1.0}  # the coin pays about half of the answers


def test_kill9_marks_the_moment_it_is_inside_the_update_after_the_first(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = _runtime(tiny_policy, tmp_path / "run", guard=False)
    marker = tmp_path / "in-update"
    learner = runtime.learner
    runtime.core.learner = faults.FaultyLearner(learner, "kill9", lambda: learner.step == 1, marker)  # as child()
    runtime.run(stop_after=1)
    assert learner.step == 1 and not marker.exists()
    runtime.run(resume=True)  # the learner's step comes back through the wrapper
    assert learner.step >= 2 and marker.exists()


def test_the_serve_target_injects_faults_through_a_live_server(
    serve_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """Control, nan_grad and garbage corrections, guard on and off, through loopback HTTP: nothing
    acknowledged is lost and the bystander tenant's answers stay the same tokens."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server and its learner use
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    setup = faults.ServeSetup(
        str(serve_model_dir), tmp_path, SERVE_LEARNING, LoraSettings(rank=4, alpha=8), questions=2, answer_tokens=4
    )
    t0 = time.time()
    results = faults.compare(faults.ServeBench(setup).run, ["nan_grad", "garbage_corrections"], t0)
    rows = {(r.fault, r.guard): r for r in results}
    assert set(rows) == {(f, g) for f in (faults.CONTROL, "nan_grad", "garbage_corrections") for g in (True, False)}
    assert all(r.episodes_lost == 0 and r.bystander_identical for r in results)
    assert rows["nan_grad", True].detected and "non_finite" in rows["nan_grad", True].findings
    assert not rows["nan_grad", False].detected and not rows["nan_grad", False].findings  # no guard, no evidence
    assert all(r.control_delta is not None for r in results if r.fault != faults.CONTROL)
    for guard in (True, False):  # every victim round was learned and recorded
        with ExperienceStore(
            tmp_path / f"serve-garbage_corrections-{'on' if guard else 'off'}" / "experience.sqlite"
        ) as s:
            assert len(s.adapters("victim")) == faults.SERVE_ROUNDS and len(s.adapters("bystander")) == 1
            assert not s.pending_summary()
    faults.report(results, t0, as_json=True)
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert {"fault", "guard", "detected", "recovered", "probe_delta", "episodes_lost"} <= set(out[0])
    assert {"control_delta", "recovered_vs_control", "bystander_identical"} <= set(out[0])

"""The rollback path of the runtime, on the tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.memory.store import ExperienceStore
from lifelong.model.adapters import AdapterSnapshot, trainable
from lifelong.model.policy import LoraSettings, Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Batch, UpdateReport


def _config(guard: bool, **guard_settings: Any) -> RunConfig:
    stream = Stream("t", (Stage(Task.of("tests.support_envs:coin"), 48),), probe_size=4)
    return RunConfig(
        stream=stream.to_dict(),
        prompts_per_step=2,
        eval_every=2,
        answer_tokens=3,
        grpo=GRPOConfig(group_size=4, learning_rate=1e-3),
        guard=GuardConfig(enabled=guard, **guard_settings),
    )


def _spike_at(runtime: Runtime, step: int) -> None:
    """Fault injection: the learning rate is multiplied by 1000 for the update of one step."""
    update = runtime.learner.update
    calls = [0]  # the runtime asks for one update per step (learner.step counts only applied ones)

    def faulty(batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        calls[0] += 1
        return update(batch, lr_scale * 1000 if calls[0] == step else lr_scale)

    runtime.learner.update = faulty  # type: ignore[method-assign]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_rejected_update_is_rolled_back_to_the_last_good_checkpoint(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(_config(guard=True), tiny_policy, tmp_path / "run")
    _spike_at(runtime, 5)
    runtime.run(stop_after=5)
    records = _records(tmp_path / "run")
    rollbacks = [r for r in records if r["type"] == "rollback"]
    assert [(r["step"], r["to_step"]) for r in rollbacks] == [(5, 4)]
    assert "median" in rollbacks[0]["reason"]
    # the live adapters are exactly those of the good checkpoint at step 4
    good = load_file(runtime.ring.folder / "step-000004" / "adapter_model.safetensors")
    live = [p.detach() for p in trainable(tiny_policy)]
    assert all(torch.equal(a, b) for a, b in zip(live, good.values(), strict=True)) or sum(
        float(p.abs().sum()) for p in live
    ) == sum(float(v.abs().sum()) for v in good.values())
    assert runtime.guard.state.lr_scale == 0.5  # backed off
    events = (tmp_path / "run" / "guard_events.jsonl").read_text()
    assert '"detector": "update_spike"' in events and '"detector": "rollback"' in events


def test_without_the_guard_the_spike_stays(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(_config(guard=False), tiny_policy, tmp_path / "run")
    _spike_at(runtime, 5)
    runtime.run(stop_after=5)
    assert not [r for r in _records(tmp_path / "run") if r["type"] == "rollback"]
    assert not (tmp_path / "run" / "guard_events.jsonl").exists()


def test_guard_state_survives_a_resume(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(_config(guard=True), tiny_policy, tmp_path / "run")
    _spike_at(runtime, 5)
    runtime.run(stop_after=5)
    resumed = Runtime(_config(guard=True), tiny_policy, tmp_path / "run")
    assert resumed.restore() == 5
    assert resumed.guard.state.rollbacks == 1
    assert resumed.guard.state.lr_scale == 0.5  # still backed off: no gate has passed since


def _worse_probes_at_step_4(runtime: Runtime) -> None:
    """Fault injection: the probe scores of step 4 are 7 points below the last good version's:
    inside the 10-point budget for guarded tasks, over the 5-point budget for the task being
    trained (a flipped reward does this). The model itself is unchanged."""
    evaluate = runtime.evaluate

    def worse_at_step_4(step: int) -> dict[str, float]:
        scores = evaluate(step)
        return {t: runtime.guard.state.reference_scores[t] - 0.07 for t in scores} if step == 4 else scores

    runtime.evaluate = worse_at_step_4  # type: ignore[method-assign]


def test_the_task_being_trained_getting_worse_is_rolled_back(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(_config(guard=True, confirm_items=0), tiny_policy, tmp_path / "run")
    _worse_probes_at_step_4(runtime)
    runtime.run(stop_after=4)
    rollbacks = [r for r in _records(tmp_path / "run") if r["type"] == "rollback"]
    assert [(r["step"], r["to_step"]) for r in rollbacks] == [(4, 2)]
    assert "while being trained" in rollbacks[0]["reason"]


def test_a_probe_drop_that_fresh_items_do_not_show_is_kept(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(_config(guard=True), tiny_policy, tmp_path / "run")
    _worse_probes_at_step_4(runtime)
    runtime.run(stop_after=4)
    assert not [r for r in _records(tmp_path / "run") if r["type"] == "rollback"]
    events = [json.loads(line) for line in (tmp_path / "run" / "guard_events.jsonl").read_text().splitlines()]
    (finding,) = [e for e in events if e["detector"] == "trained_regression"]
    assert finding["step"] == 4 and not finding["reject"] and "kept" in finding["message"]
    (coin,) = finding["evidence"]["drops"]
    assert finding["evidence"]["rescored"][coin]["items"] == 64  # fresh ones, beside the probes' 4
    assert finding["evidence"]["pooled_drops"][coin] < 0.05


def test_rescoring_compares_the_live_adapters_with_those_of_the_last_passed_gate(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    runtime = Runtime(_config(guard=True), tiny_policy, tmp_path / "run")
    runtime.run(stop_after=2)  # step 2's gate passed: the live adapters are the last good ones
    coin = runtime.stream.tasks[0].label
    same = runtime.rescore(coin, "last_good")
    assert same.items == 64 and same.now == same.reference
    with torch.no_grad():  # move the live adapters far from the good ones
        generator = torch.Generator().manual_seed(0)
        for p in trainable(tiny_policy):
            p.add_(torch.randn(p.shape, generator=generator))
    tiny_policy.version += 1  # as every change of the weights does
    moved = AdapterSnapshot(tiny_policy)
    after = runtime.rescore(coin, "last_good")
    assert after.reference == same.reference and after.now != same.now
    assert moved.distance(tiny_policy) == 0.0  # the live adapters are back after scoring the good ones
    with pytest.raises(ValueError, match="'last_good' or 'pretrained'"):
        runtime.rescore(coin, "best")


def test_watching_a_run_does_not_change_what_it_samples(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    """The guard draws its drift samples from its own generator, so a run with the guard on samples
    exactly what the same run without it samples (while no update is rejected)."""
    answers = {}
    for guard in (True, False):
        policy = Policy(make_tiny_model(tokenizer), tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))
        run_dir = tmp_path / f"guard-{guard}"
        Runtime(_config(guard=guard), policy, run_dir).run(stop_after=4)
        assert not [r for r in _records(run_dir) if r["type"] == "rollback"]
        with ExperienceStore(run_dir / "experience.sqlite") as store:
            episodes = [
                e for step in range(1, 5) for e in store.episodes(run_id=run_dir.name, step=step, split="train")
            ]
        answers[guard] = [t.completion.token_ids for e in episodes for t in e.turns]
    assert answers[True] == answers[False] and len(answers[True]) == 4 * 8


@pytest.mark.parametrize("hold_upcoming", [False, True])
def test_a_task_not_reached_yet_is_held_to_the_pretrained_score_when_asked(
    tiny_policy: Policy, tmp_path: Path, hold_upcoming: bool
) -> None:
    """A later stage's task that falls while an earlier one trains is ability the model had: with
    `hold_upcoming` the guard rolls the update back against the pretrained score; without, nothing
    guards it (the default until measured on the default stream)."""
    coin, later = Task.of("tests.support_envs:coin"), Task.of("add", max_value=5)
    stream = Stream("t", (Stage(coin, 48), Stage(later, 16)), probe_size=4)
    config = replace(_config(guard=True, confirm_items=0, hold_upcoming=hold_upcoming), stream=stream.to_dict())
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    evaluate = runtime.evaluate

    def later_falls_at_step_2(step: int) -> dict[str, float]:
        scores = evaluate(step)
        return {**scores, later.label: runtime.guard.state.base_scores[later.label] - 0.2} if step == 2 else scores

    runtime.evaluate = later_falls_at_step_2  # type: ignore[method-assign]
    runtime.run(stop_after=2)
    rollbacks = [r for r in _records(tmp_path / "run") if r["type"] == "rollback"]
    if hold_upcoming:
        assert [(r["step"], r["to_step"]) for r in rollbacks] == [(2, 0)]
        assert later.label in rollbacks[0]["reason"] and "pretrained" in rollbacks[0]["reason"]
    else:
        assert rollbacks == []

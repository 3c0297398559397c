"""The reasoning monitor watches what a run learns from: its flags reach the run's store,
flags.jsonl and report, and never change a reward or an update (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.evaluate.report import write_report
from lifelong.guard.monitor import Monitor, Observation, TextMonitor
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.model.policy import LoraSettings, Policy
from lifelong.streams.stream import Stage, Stream, Task


class FlagEverything:
    """A monitor that flags every turn it reads (with a pipe, which the report must escape)."""

    def check(self, reasoning: str, answer: str) -> list[Observation]:
        return [Observation("reward_gaming", f"test flag | answer {answer!r}")]


class Recording(TextMonitor):
    """The real monitor, remembering what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def check(self, reasoning: str, answer: str) -> list[Observation]:
        self.seen.append((reasoning, answer))
        return super().check(reasoning, answer)


def _config(episodes: int = 16, **settings: Any) -> RunConfig:
    # the coin pays about half of random answers, so a random tiny model's updates are applied
    stream = Stream("t", (Stage(Task.of("tests.support_envs:coin"), episodes),), probe_size=3)
    return RunConfig(
        stream=stream.to_dict(), prompts_per_step=2, eval_every=2, answer_tokens=3, grpo=GRPOConfig(group_size=4),
        **settings,
    )  # fmt: skip


def _run(tokenizer: PreTrainedTokenizerBase, run_dir: Path, monitor: Monitor, config: RunConfig) -> Runtime:
    policy = Policy(make_tiny_model(tokenizer), tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))
    runtime = Runtime(config, policy, run_dir, monitor=monitor)
    summary = runtime.run()
    write_report(run_dir, summary.to_json(), config.to_dict())
    return runtime


def _learning(run_dir: Path) -> list[dict[str, Any]]:
    """What the run measured and learned, minus wall-clock times."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records]


def test_flags_reach_the_store_the_log_and_the_report_and_never_change_learning(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    flagged = _run(tokenizer, tmp_path / "flagged", FlagEverything(), _config())
    quiet = _run(tokenizer, tmp_path / "quiet", TextMonitor(), _config())

    # Every turn of every training episode is flagged once, in the store and in flags.jsonl; probes are not.
    train = flagged.store.episodes(run_id="flagged", split="train")
    stored = [flag for _, flag in flagged.store.flags(tenant="", limit=1000)]
    assert len(train) == 16 and sorted((f.source, f.index) for f in stored) == sorted((e.id, 0) for e in train)
    lines = [json.loads(line) for line in (tmp_path / "flagged" / "flags.jsonl").read_text().splitlines()]
    step_of = {e.id: step for step in (1, 2) for e in flagged.store.episodes(run_id="flagged", step=step)}
    assert [(d["source"], d["kind"], d["detail"]) for d in lines] == [(f.source, f.kind, f.detail) for f in stored]
    assert all(d["step"] == step_of[d["source"]] and d["task"] == "tests.support_envs:coin" for d in lines)

    report = (tmp_path / "flagged" / "report.md").read_text()
    assert "## Reasoning monitor" in report and "never change a reward" in report
    assert "16 flags on 16 episodes: 16 `reward_gaming`" in report
    assert f"| `{lines[0]['source']}` | tests.support_envs:coin | {lines[0]['step']} | 0 | reward_gaming |" in report
    assert "test flag \\| answer" in report  # a pipe in the detail cannot break the table

    # The flags informed; learning is exactly that of the unflagged run (same rewards, same updates).
    updates = [r for r in _learning(tmp_path / "flagged") if r["type"] == "update"]
    assert len(updates) == 2 and any(u["applied"] for u in updates)
    assert _learning(tmp_path / "flagged") == _learning(tmp_path / "quiet")
    assert [e.reward for e in train] == [e.reward for e in quiet.store.episodes(run_id="quiet", split="train")]

    # At reasoning effort none there is no chain, so the real monitor raised nothing, and says why.
    assert quiet.store.flags(tenant="") == [] and not (tmp_path / "quiet" / "flags.jsonl").exists()
    report = (tmp_path / "quiet" / "report.md").read_text()
    assert "No flags were raised (reasoning effort `none`)" in report and "no chain of thought to read" in report


def test_the_text_monitor_reads_every_chain_of_a_run_at_effort_low(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    monitor = Recording()
    runtime = _run(tokenizer, tmp_path / "low", monitor, _config(episodes=8, reasoning_effort="low"))
    train = runtime.store.episodes(run_id="low", split="train")
    # It read each training turn's reasoning and answer, once, and no probe's.
    chains = [(t.completion.reasoning, t.completion.answer) for e in train for t in e.turns]
    assert sorted(monitor.seen) == sorted(chains) and len(chains) == 8
    assert any(reasoning.strip() for reasoning, _ in monitor.seen)  # at effort low there is a chain to read
    # Whatever it found (a random tiny model may say nothing flaggable) is in the store, the log and the report.
    stored = [flag for _, flag in runtime.store.flags(tenant="", limit=1000)]
    log = tmp_path / "low" / "flags.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert [(d["source"], d["index"], d["kind"]) for d in lines] == [(f.source, f.index, f.kind) for f in stored]
    assert {f.source for f in stored} <= {e.id for e in train}
    report = (tmp_path / "low" / "report.md").read_text()
    if stored:
        assert f"{len(stored)} flags on" in report
    else:
        assert "No flags were raised (reasoning effort `low`)" in report

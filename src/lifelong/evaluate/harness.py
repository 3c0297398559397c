"""`lifelong eval`: every method on the same model, stream, seeds and budget; one report.

Each method runs the stream in its own run folder (`<out>/runs/<method>/`) through the same
runtime, from the same pretrained weights and the same adapter initialisation; only the method
settings differ (`RunConfig.for_method`). Its accuracy matrix comes from the held-out evaluations
at stage ends, so every method is measured by exactly the same probes. An external method (TRL)
only has to leave a run folder in the same format to be compared alongside.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifelong.evaluate.metrics import CLMetrics, cl_metrics, online_accuracy
from lifelong.evaluate.report import read_metrics
from lifelong.loop.runtime import Progress, RunConfig, Runtime
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import Policy
from lifelong.streams.stream import Stream


@dataclass(frozen=True)
class MethodResult:
    method: str
    tasks: list[str]  # column j of R: the task of stage j
    R: list[list[float]]  # (T+1) x T: row 0 before learning, row t after stage t
    general: dict[str, tuple[float, float]]  # general-ability probe -> (before, after)
    metrics: CLMetrics
    online_acc: float
    general_delta: float
    episodes: int
    minutes: float
    probe_size: int  # held-out items per task: one item is 1/probe_size of a score
    curves: list[dict[str, Any]] = field(default_factory=list)  # the eval records, in order

    @property
    def episodes_per_min(self) -> float:
        return self.episodes / self.minutes if self.minutes > 0 else 0.0

    def summary(self) -> dict[str, float]:
        m = self.metrics
        return {
            "ACC": round(m.ACC, 4),
            "BWT": round(m.BWT, 4),
            "FWT": round(m.FWT, 4),
            "forgetting": round(m.forgetting, 4),
            "learning_accuracy": round(m.learning_accuracy, 4),
            "online_acc": round(self.online_acc, 4),
            "general_delta": round(self.general_delta, 4),
            "episodes_per_min": round(self.episodes_per_min, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


def stage_end_steps(config: RunConfig) -> list[int]:
    """The global step at which each stage ends (the runtime evaluates there)."""
    per_step = config.episodes_per_step
    ends, step = [], 0
    for stage in Stream.from_dict(config.stream).stages:
        step += -(-stage.episodes // per_step)
        ends.append(step)
    return ends


def result_from_run(method: str, run_dir: Path) -> MethodResult:
    """Read a finished run folder (any method, ours or external) into a MethodResult."""
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    stream = Stream.from_dict(config.stream)
    records = read_metrics(run_dir)
    evals = {r["step"]: r for r in records if r.get("type") == "eval"}  # the newest per step wins
    ends = stage_end_steps(config)
    missing = [s for s in [0, *ends] if s not in evals]
    if missing:
        raise ValueError(f"{run_dir}: no evaluation at steps {missing}; did the run finish?")
    tasks = [s.task.label for s in stream.stages]
    R = [[evals[step]["scores"][t] for t in tasks] for step in [0, *ends]]
    general = {g.label: (evals[0]["scores"][g.label], evals[ends[-1]]["scores"][g.label]) for g in stream.general}
    deltas = [after - before for before, after in general.values()]
    # A run folder's own SQLite store holds only its run (whatever the folder is called now); a
    # shared store (PostgreSQL) is filtered by the run's id, the folder name it was run under.
    run_id = run_dir.name if config.store else None
    with ExperienceStore(config.store or run_dir / "experience.sqlite") as store:
        online = online_accuracy([e.success for e in store.iter_episodes(run_id=run_id, split="train")])
    updates = [r for r in records if r.get("type") == "update"]
    seconds = sum(r.get("time/act_s", 0.0) + r.get("time/learn_s", 0.0) for r in updates)
    return MethodResult(
        method=method,
        tasks=tasks,
        R=R,
        general=general,
        metrics=cl_metrics(R),
        online_acc=online,
        general_delta=sum(deltas) / len(deltas) if deltas else 0.0,
        episodes=updates[-1]["episodes"] if updates else 0,
        minutes=seconds / 60,
        probe_size=stream.probe_size,
        curves=[evals[s] for s in sorted(evals)],
    )


PolicyFactory = Callable[[], Policy]


def run_methods(
    stream: Stream,
    methods: Sequence[str],
    make_policy: PolicyFactory,
    out: Path,
    settings: dict[str, Any] | None = None,
    on_start: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    external: dict[str, Callable[[RunConfig, Path], None]] | None = None,
) -> list[MethodResult]:
    """Run each method on the stream (resuming a method whose run folder is unfinished).

    `external` maps a method name to a runner that fills a run folder itself (e.g. TRL)."""
    results = []
    for method in methods:
        run_dir = out / "runs" / method
        if on_start is not None:
            on_start(method)
        runner = (external or {}).get(method)
        config = RunConfig.for_method(
            "grpo" if runner is not None else method, stream=stream.to_dict(), **(settings or {})
        )
        if runner is not None:
            runner(config, run_dir)
        else:
            torch.manual_seed(config.seed)  # the same adapter initialisation for every method
            runtime = Runtime(config, make_policy(), run_dir, progress)
            runtime.run(resume=(run_dir / "config.json").is_file())
        results.append(result_from_run(method, run_dir))
    return results

"""What a run remembers across a resume (`RunState`), what it reports at the end (`RunSummary`),
and what it tells a progress display while it works (`Progress`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class RunState:
    """The loop's position, saved in every checkpoint beside the adapters and the guard's state.

    `evals` holds the "eval" records of metrics.jsonl in order (the accuracy matrix is read from
    them); `episodes` counts training episodes learned from; `seconds` is wall time spent running,
    summed over resumes.
    """

    before: dict[str, float] = field(default_factory=dict)  # held-out scores of the untrained model
    evals: list[dict[str, Any]] = field(default_factory=list)
    episodes: int = 0
    seconds: float = 0.0
    curriculum: dict[str, int] = field(default_factory=dict)  # task label -> level (loop/curriculum.py)
    sampled: dict[str, int] = field(default_factory=dict)  # stage index -> episodes sampled (all splits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        """From a checkpoint's state (which also holds the core's keys: they are left out)."""
        return cls(
            dict(d["before"]),
            list(d["evals"]),
            d["episodes"],
            d["seconds"],
            dict(d.get("curriculum", {})),
            dict(d.get("sampled", {})),
        )


@dataclass(frozen=True)
class RunSummary:
    model: str
    tasks: list[str]
    episodes: int
    before: dict[str, float]
    after: dict[str, float]
    minutes: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    """What the runtime tells a progress display (the CLI's bar, or nothing)."""

    def start(self, total_episodes: int, done: int) -> None: ...
    def advance(self, episodes: int, reward: float, stage: str) -> None: ...
    def note(self, text: str) -> None: ...


class NoProgress:
    def start(self, total_episodes: int, done: int) -> None:
        pass

    def advance(self, episodes: int, reward: float, stage: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass


__all__ = ["NoProgress", "Progress", "RunState", "RunSummary"]

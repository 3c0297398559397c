"""Streams: what "continual" means here.

A `Stream` is an ordered list of `Stage`s; each stage trains on one task (an environment with fixed
difficulty settings) for a number of episodes. Every task has a held-out probe set: seeds from a
range never used for training, and training also skips any seed whose *item* (question) is in the
probe set, so probe scores measure generalisation, not recall.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lifelong.envs.base import Env
from lifelong.envs.registry import TURN_CREDIT, get_spec, make
from lifelong.errors import ConfigError

PROBE_SEED_BASE = 1_000_000_000  # probe seeds live far above any training seed


@dataclass(frozen=True)
class Task:
    """An environment name with its difficulty settings."""

    env: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, env: str, **params: Any) -> Task:
        return cls(env, tuple(sorted(params.items())))

    @property
    def label(self) -> str:
        if not self.params:
            return self.env
        return f"{self.env}({','.join(f'{k}={v}' for k, v in self.params)})"

    def make(self) -> Env:
        return make(self.env, **dict(self.params))

    @property
    def pays_turn_credit(self) -> bool:
        """Whether this task is a game that can say how far the agent got (it has `turn_credit`)."""
        return TURN_CREDIT in get_spec(self.env).knobs

    def with_turn_credit(self) -> Task:
        """This task paying progress move by move (`turn_credit`), where it can; otherwise as it is."""
        return Task.of(self.env, **{**dict(self.params), TURN_CREDIT: True}) if self.pays_turn_credit else self


@dataclass(frozen=True)
class Stage:
    task: Task
    episodes: int

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(
                f"stage {self.task.label} has {self.episodes} episodes", "give every stage at least 1 episode"
            )


@dataclass(frozen=True)
class Stream:
    name: str
    stages: tuple[Stage, ...]
    probe_size: int = 48
    description: str = ""
    # Tasks evaluated alongside the stages' probes but never trained on: skills the pretrained
    # model already has, to measure forgetting of them.
    general: tuple[Task, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"stream {self.name!r} has no stages", "add at least one stage")
        if self.probe_size < 1:
            raise ConfigError("probe_size must be >= 1", "use e.g. 48 held-out items per task")

    @property
    def tasks(self) -> list[Task]:
        """Distinct tasks in order of first appearance."""
        return list(dict.fromkeys(s.task for s in self.stages))

    def with_turn_credit(self) -> Stream:
        """This stream with every game that can pay turn credit paying it; a ConfigError when none can."""
        if not any(s.task.pays_turn_credit for s in self.stages):
            raise ConfigError(
                f"no task of stream {self.name!r} can pay turn credit",
                "turn credit needs a multi-turn game that can say how far the agent got (e.g. maze, wordle)",
            )
        stages = tuple(Stage(s.task.with_turn_credit(), s.episodes) for s in self.stages)
        return Stream(self.name, stages, self.probe_size, self.description, self.general)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "probe_size": self.probe_size,
            "description": self.description,
            "stages": [{"env": s.task.env, "params": dict(s.task.params), "episodes": s.episodes} for s in self.stages],
            "general": [{"env": t.env, "params": dict(t.params)} for t in self.general],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stream:
        stages = tuple(Stage(Task.of(s["env"], **s.get("params", {})), int(s["episodes"])) for s in d["stages"])
        general = tuple(Task.of(g["env"], **g.get("params", {})) for g in d.get("general", []))
        return cls(d["name"], stages, int(d.get("probe_size", 48)), d.get("description", ""), general)

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


@dataclass
class ProbeSet:
    """Held-out seeds for one task, and the items they cover (kept out of training)."""

    task: Task
    size: int
    seeds: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.seeds = [PROBE_SEED_BASE + i for i in range(self.size)]

    @cached_property
    def keys(self) -> frozenset[str]:
        env = self.task.make()
        return frozenset(env.item_key(s) for s in self.seeds)

    def _outside_probes(self, rng: random.Random, tries: int, items: Task | None = None) -> Iterator[tuple[int, str]]:
        """Seeds drawn from `rng` (at most `tries` draws) whose items (of `items`, by default the
        probed task itself) are not probe items, with their item keys."""
        env = (items or self.task).make()
        for _ in range(tries):
            s = rng.randrange(PROBE_SEED_BASE)
            key = env.item_key(s)
            if key not in self.keys:
                yield s, key

    def fresh_seeds(self, n: int) -> list[int]:
        """Up to n seeds of distinct items outside the probe set, the same every call: more held-out
        items for re-measuring a suspect probe drop (a small task may have fewer than n). They are
        not kept out of training; a comparison on them is paired, so both versions see the same."""
        found: dict[str, int] = {}
        for s, key in self._outside_probes(random.Random(f"fresh:{self.task.label}"), 200 * n):
            found.setdefault(key, s)
            if len(found) == n:
                break
        return list(found.values())

    def training_seeds(self, rng: random.Random, n: int, items: Task | None = None) -> list[int]:
        """n training seeds whose items are not in the probe set; `items`: an easier variant of the
        task (a curriculum's), whose items must stay out of the task's probes all the same."""
        seeds: list[int] = []
        for s, _ in self._outside_probes(rng, 200 * n, items):
            seeds.append(s)
            if len(seeds) == n:
                return seeds
        raise ConfigError(
            f"{(items or self.task).label}: the probe set of {self.task.label} covers almost every item",
            "lower probe_size or raise the task's difficulty so it has more distinct items",
        )

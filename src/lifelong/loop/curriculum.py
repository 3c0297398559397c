"""An automatic curriculum: when every attempt at a task fails, train on an easier version of it.

A group in which every sample fails carries no policy gradient; a task whose groups all fail
teaches nothing however long it is trained (issue 22: plain GRPO at 0-3% on last letters). So,
after each step, a task whose episodes all failed moves halfway down the rest of its ladder of
easier versions (its `Env.difficulty` knobs, each stepped towards its easiest value; add at 999
has ten levels, reached in four all-failed steps instead of ten), and one whose success share
reaches `up_at` moves one level back up, towards the stream's own setting. Only
training items change: probes and the guard always measure the task as the stream set it, and
an easier version's items never include a probe item of the task.

A ladder halves the distance to each knob's easiest value per level (add, max_value 20: 20, 10,
5, 3, 2, 1) and ends before a version with too few items outside the probes. The levels are part
of the run's state (resumed with it), and every update record holds the level each task of the
step was played at (`curriculum/<task>`), which the report plots.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lifelong.errors import ConfigError
from lifelong.streams.stream import ProbeSet, Task
from lifelong.types import Episode

METRIC = "curriculum/"  # + task label: the level it was trained at (0 = the stream's setting)


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False  # off until issue 22's benchmark measures it
    up_at: float = 0.5  # success share of a step's episodes at which a task steps back up a level
    # An all-failed step goes halfway down the rest of the ladder; False: one level. One level a
    # step left lifelong 2-3 levels down add's ten within its stage budget (dev/LOG.md, stop 22).
    halfway: bool = True
    min_items: int = 8  # a version needs this many distinct training items outside the probes

    def __post_init__(self) -> None:
        if not 0.0 < self.up_at <= 1.0 or self.min_items < 1:
            raise ConfigError("curriculum.up_at must be in (0, 1] and min_items >= 1", "defaults: 0.5 and 8")


def halving(target: int, easiest: int) -> list[int]:
    """Values from `target` down to `easiest`, halving the distance each time: 20, 1 -> 20 10 5 3
    2 1 (a knob's smaller values are the easier ones; a target at or below `easiest` stays)."""
    values = [target]
    while values[-1] > easiest:
        v = values[-1]
        values.append(easiest + (v - easiest) // 2 if abs(v - easiest) > 1 else easiest)
    return values


def ladder(task: Task, probes: ProbeSet, min_items: int) -> list[Task]:
    """The task, then easier versions of it, as long as each has `min_items` training items."""
    env = task.make()
    steps = {k.name: halving(env.knob(k.name), k.easiest) for k in env.difficulty}
    versions = [task]
    for level in range(1, max((len(v) for v in steps.values()), default=1)):
        params = dict(task.params) | {name: values[min(level, len(values) - 1)] for name, values in steps.items()}
        easier = Task.of(task.env, **params)
        if not _has_items(probes, easier, min_items):
            break
        versions.append(easier)
    return versions


def _has_items(probes: ProbeSet, version: Task, n: int) -> bool:
    try:  # a setting the task refuses (a knob below its minimum) ends the ladder too
        env = version.make()
        seeds = probes.training_seeds(random.Random(f"ladder:{version.label}"), 4 * n, items=version)
    except ConfigError:
        return False
    return len({env.item_key(s) for s in seeds}) >= n


class Curriculum:
    """Each task's level on its ladder (0 = as the stream set it)."""

    def __init__(self, config: CurriculumConfig, probes: dict[Task, ProbeSet], tasks: Sequence[Task]) -> None:
        self.config = config
        self.ladders = {t.label: ladder(t, probes[t], config.min_items) for t in tasks}
        self.levels = {label: 0 for label in self.ladders}
        self._task_of = {v.label: label for label, versions in self.ladders.items() for v in versions}

    def version(self, task: Task) -> Task:
        """What to train on for `task` now (the task itself when it has no ladder)."""
        versions = self.ladders.get(task.label)
        return versions[self.levels[task.label]] if versions else task

    def versions(self) -> dict[str, Task]:
        """Every version's label -> the version (what a run must be able to make)."""
        return {v.label: v for versions in self.ladders.values() for v in versions}

    def observe(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Move each task trained in this step by its episodes' success; returns the level each
        was played at (`curriculum/<task>`)."""
        tried: dict[str, list[bool]] = {}
        for ep in episodes:
            if ep.env in self._task_of:
                tried.setdefault(self._task_of[ep.env], []).append(ep.success)
        played = {f"{METRIC}{label}": float(self.levels[label]) for label in tried}
        for label, successes in tried.items():
            share = sum(successes) / len(successes)
            if share == 0.0:
                rest = len(self.ladders[label]) - 1 - self.levels[label]
                self.levels[label] += min(max(1, (rest + 1) // 2) if self.config.halfway else 1, rest)
            elif share >= self.config.up_at:
                self.levels[label] = max(self.levels[label] - 1, 0)
        return played

    def easiest(self, env: str) -> bool:
        """Whether the task behind the version label `env` can go no easier (or has no ladder)."""
        label = self._task_of.get(env)
        return label is None or self.levels[label] == len(self.ladders[label]) - 1

    def state(self) -> dict[str, int]:
        return dict(self.levels)

    def restore(self, levels: dict[str, int]) -> None:
        for label, level in levels.items():
            if label in self.levels:
                self.levels[label] = min(int(level), len(self.ladders[label]) - 1)


__all__ = ["METRIC", "Curriculum", "CurriculumConfig", "halving", "ladder"]

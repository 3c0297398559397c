"""The run's schedule: one slot per update, and the jobs (items to play) of each slot.

A stage of `episodes` training episodes takes ceil(episodes / episodes_per_step) updates. Each
update plays `prompts_per_step` items, each `group_size` times (one GRPO group per item): mostly
the stage's task, plus rehearsal of earlier tasks (a fixed share, and any task the guard reports as
slipping). Item seeds depend only on (run seed, step), so a resumed run draws the same items.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from lifelong.loop.actor import Job
from lifelong.loop.config import RunConfig
from lifelong.streams.stream import ProbeSet, Stream, Task

# (task, item seed) -> context put in front of the item (lessons and examples recalled from memory)
Recall = Callable[[Task, int], str]
# task -> the version of it to train on now (an easier one, under a curriculum)
Version = Callable[[Task], Task]


@dataclass(frozen=True)
class Slot:
    """One update of the schedule: which stage, and which step of the whole run."""

    step: int  # 1-based global step
    stage: int


class Schedule(Sequence[Slot]):
    """The slots of a run in order (`schedule[i].step == i + 1`), and what each one plays."""

    def __init__(self, config: RunConfig, stream: Stream, probes: dict[Task, ProbeSet]) -> None:
        self.config = config
        self.stream = stream
        self.probes = probes  # their training seeds are the items (never the probes themselves)
        self._slots: list[Slot] = []
        for i, stage in enumerate(stream.stages):
            for _ in range(math.ceil(stage.episodes / config.episodes_per_step)):
                self._slots.append(Slot(len(self._slots) + 1, i))

    @overload
    def __getitem__(self, i: int) -> Slot: ...
    @overload
    def __getitem__(self, i: slice) -> list[Slot]: ...
    def __getitem__(self, i: int | slice) -> Slot | list[Slot]:
        return self._slots[i]

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    # ---- what a slot plays ---------------------------------------------------------------------
    def tasks_for(self, slot: Slot, slipping: Sequence[str] = ()) -> list[Task]:
        """The task of each prompt of a step: the stage's task, plus rehearsal of earlier tasks.
        `slipping`: labels of tasks whose probe score slipped below their best (`Guard.slipping`)."""
        tasks = {t.label: t for t in [*self.stream.tasks, *self.stream.general]}
        current = self.stream.stages[slot.stage].task
        earlier = [t for t in dict.fromkeys(s.task for s in self.stream.stages[: slot.stage]) if t != current]
        slipped = [tasks[label] for label in slipping if tasks[label] in earlier]
        n = self.config.prompts_per_step
        # Rehearsal is a share of the run's prompts, not of each step's: at 4 prompts a step, 0.125
        # is one old prompt every other step (the running total is rounded down, step by step).
        share = n * self.config.rehearsal
        n_old = min(n - 1, math.floor(slot.step * share) - math.floor((slot.step - 1) * share)) if earlier else 0
        if slipped:  # re-learn what slips, even when plain rehearsal is off
            n_old = max(n_old, min(n - 1, 1))
        # Slipping tasks first, then round-robin over earlier tasks across steps.
        rotation = [earlier[(slot.step * n_old + i) % len(earlier)] for i in range(n_old)] if earlier else []
        old = (slipped + rotation)[:n_old]
        return [current] * (n - n_old) + old

    def jobs_for(
        self, slot: Slot, slipping: Sequence[str] = (), recall: Recall | None = None, version: Version | None = None
    ) -> list[Job]:
        """The episodes of a step: one group of `group_size` jobs per prompt; `recall` gives each
        item its context (the memory method), none plays it bare; `version` picks the version of
        each task to play (a curriculum's), none the task itself."""
        # Seeds depend only on (run seed, step) and the versions: a resumed run draws the same items.
        rng = random.Random(f"{self.config.seed}:{slot.step}")
        jobs = []
        for i, task in enumerate(self.tasks_for(slot, slipping)):
            played = version(task) if version is not None else task
            (seed,) = self.probes[task].training_seeds(rng, 1, items=played)
            context = recall(played, seed) if recall is not None else ""
            jobs += [Job(played.label, seed, group=f"{slot.step}:{i}", context=context)] * self.config.grpo.group_size
        return jobs

    # ---- where a slot stands in the stream -----------------------------------------------------
    def last_of_stage(self, slot: Slot) -> bool:
        return slot.step == len(self) or self[slot.step].stage != slot.stage

    def evaluates(self, slot: Slot) -> bool:
        """Probes are played after this slot: at every stage end and every `eval_every` steps."""
        every = self.config.eval_every
        return self.last_of_stage(slot) or bool(every and slot.step % every == 0)

    @property
    def general(self) -> list[str]:
        """The general-ability probes (never trained)."""
        return [t.label for t in self.stream.general]

    def guarded(self, slot: Slot) -> list[str]:
        """Tasks that must not regress: general probes and every task reached so far."""
        return self.general + sorted(self._reached(slot))

    def upcoming(self, slot: Slot) -> list[str]:
        """Tasks of later stages the stream has not reached yet."""
        return sorted({s.task.label for s in self.stream.stages[slot.stage + 1 :]} - self._reached(slot))

    def _reached(self, slot: Slot) -> set[str]:
        return {s.task.label for s in self.stream.stages[: slot.stage + 1]}

    def trained(self, slot: Slot) -> list[str]:
        """The task trained since the last gate: a gate never spans stages."""
        return [self.stream.stages[slot.stage].task.label]


__all__ = ["Recall", "Schedule", "Slot", "Version"]

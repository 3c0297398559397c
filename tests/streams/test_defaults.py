"""The streams lifelong ships: `demo` stays as the demo needs it; `default` is a real curriculum."""

from __future__ import annotations

import random

from lifelong.streams.defaults import STREAMS
from lifelong.streams.stream import ProbeSet, Stage, Stream, Task


def test_the_demo_stream_is_unchanged() -> None:
    assert STREAMS["demo"] == Stream(
        "demo",
        (Stage(Task.of("add", max_value=20), 512), Stage(Task.of("letter", position="first"), 256)),
        probe_size=64,
        description="addition then first letters; the first slice's end-to-end demo",
    )


def test_the_default_stream_is_a_curriculum_with_general_probes() -> None:
    stream = STREAMS["default"]
    skills = {t.label for t in stream.tasks}
    assert len(skills) >= 5 and len(stream.stages) == len(skills)
    assert {t.env for t in stream.general} == {"facts", "instruct"}
    assert not set(stream.general) & set(stream.tasks)  # never trained on
    assert any(t.make().max_turns > 1 for t in stream.tasks)  # a multi-turn game among them


def test_every_default_task_has_enough_items_for_its_probes() -> None:
    stream = STREAMS["default"]
    for task in [*stream.tasks, *stream.general]:
        probe = ProbeSet(task, stream.probe_size)
        assert len(probe.keys) >= stream.probe_size // 2, task.label  # mostly distinct held-out items
        if task in stream.tasks:
            assert len(probe.training_seeds(random.Random(0), 8)) == 8

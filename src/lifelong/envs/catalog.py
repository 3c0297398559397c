"""Registers every environment lifelong ships with (imported once, by the registry)."""

from __future__ import annotations

from lifelong.envs import tasks
from lifelong.envs.registry import register

for _task in (
    tasks.Addition,
    tasks.Larger,
    tasks.NextNumber,
    tasks.Uppercase,
    tasks.FirstLetter,
    tasks.ReverseWord,
):
    register(_task.name, _task)

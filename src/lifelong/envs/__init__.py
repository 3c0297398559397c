"""Environments: tasks and games with verifiable rewards, behind one Gymnasium-like interface."""

from lifelong.envs.base import Env, Game, Item, Outcome, SingleTurnTask, StepResult
from lifelong.envs.registry import EnvSpec, env_specs, get_spec, make, register

__all__ = [
    "Env",
    "EnvSpec",
    "Game",
    "Item",
    "Outcome",
    "SingleTurnTask",
    "StepResult",
    "env_specs",
    "get_spec",
    "make",
    "register",
]

"""Errors the user can act on.

Every error raised for bad input is a `LifelongError` whose message names the problem and the fix;
the CLI prints it as one line and exits with code 2, without a traceback unless `--debug` is given.
"""

from __future__ import annotations


class LifelongError(Exception):
    """A problem with what the user gave us, with a hint on how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} -- {fix}")
        self.problem = problem
        self.fix = fix


class ModelLoadError(LifelongError):
    pass


class UnknownEnvError(LifelongError):
    pass


class CheckpointError(LifelongError):
    pass


class ConfigError(LifelongError):
    pass

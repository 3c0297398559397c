"""Answers first: the server says when it is answering, and the learning worker pauses meanwhile.

On 2 cores the worker's lowest CPU priority (nice 19) is not enough: its matrix products still
share the caches and the memory bus with the server's, and a request that arrives mid-pass waits
for a core (stop 21: time to first token 1.84x with learning on). So the server raises a one-byte
flag in a shared file (`AnsweringFlag`) while it generates, and the worker, between any two
decoder layers of a forward or a backward pass (`pause_while_answering`), waits until the flag is
down. A pause is bounded (`max_pause_s`), so a server that answers without a break still lets
learning advance, and a flag left up by a killed server cannot stall the worker. The pauses are
timed as the part `yield` (timing.py), so a round's metrics say how long it gave way.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.model.memory_layer import decoder_layers
from lifelong.timing import part

FLAG_FILE = "answering.flag"


class AnsweringFlag:
    """A byte in `<store>/answering.flag`, mapped into memory: 1 while the server generates."""

    def __init__(self, path: Path, writer: bool = False) -> None:
        self.path = path
        self.writer = writer
        self._map: mmap.mmap | None = None
        if writer:  # the server: a fresh flag, down (a flag left up by a killed server is reset)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0")

    def _mapped(self) -> mmap.mmap | None:
        if self._map is None:
            try:
                with open(self.path, "r+b" if self.writer else "rb") as f:
                    access = mmap.ACCESS_WRITE if self.writer else mmap.ACCESS_READ
                    self._map = mmap.mmap(f.fileno(), 1, access=access)
            except (OSError, ValueError):  # no server has made the flag yet: nobody is answering
                return None
        return self._map

    @property
    def up(self) -> bool:
        flag = self._mapped()
        return flag is not None and flag[0] == 1

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Up for the block (the server's generation), down after it, whatever it raised."""
        flag = self._mapped()
        assert flag is not None and self.writer, "only the server's writable flag is raised"
        flag[0] = 1
        try:
            yield
        finally:
            flag[0] = 0


def pause_while_answering(model: nn.Module, flag: AnsweringFlag, max_pause_s: float = 5.0) -> list[Any]:
    """Make every decoder layer of `model` wait, before its forward and before its backward, while
    `flag` is up (at most `max_pause_s` at a time). Returns the hook handles (`.remove()` undoes)."""

    def wait() -> None:
        if not flag.up:
            return
        with part("yield"):
            deadline = time.monotonic() + max_pause_s
            while flag.up and time.monotonic() < deadline:
                time.sleep(0.005)

    def before_forward(_module: nn.Module, _args: Any) -> None:
        wait()

    def before_backward(grad: torch.Tensor) -> None:
        wait()

    def after_forward(_module: nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(before_backward)  # runs when the backward pass reaches this layer

    handles = []
    for layer in decoder_layers(model):
        handles.append(layer.register_forward_pre_hook(before_forward))
        handles.append(layer.register_forward_hook(after_forward))
    return handles


__all__ = ["FLAG_FILE", "AnsweringFlag", "pause_while_answering"]

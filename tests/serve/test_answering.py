"""Answers first: the flag the server raises while generating, and the worker's pauses on it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.model.memory_layer import decoder_layers
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.serve import LearnerConfig
from lifelong.serve.answering import AnsweringFlag, pause_while_answering
from lifelong.serve.engine import Engine
from lifelong.timing import CLOCK


def test_a_reader_sees_the_servers_flag_and_nothing_before_it_exists(tmp_path: Path) -> None:
    path = tmp_path / "answering.flag"
    reader = AnsweringFlag(path)
    assert not reader.up  # no server yet: nobody is answering
    server = AnsweringFlag(path, writer=True)
    assert not reader.up
    with server.answering():
        assert reader.up
    assert not reader.up
    with pytest.raises(RuntimeError), server.answering():
        raise RuntimeError("a generation that fails")
    assert not reader.up  # lowered whatever the generation raised


def test_a_new_server_lowers_a_flag_a_killed_one_left_up(tmp_path: Path) -> None:
    path = tmp_path / "answering.flag"
    path.write_bytes(b"\1")
    assert AnsweringFlag(path).up
    AnsweringFlag(path, writer=True)
    assert not AnsweringFlag(path).up


def _held_for(flag: AnsweringFlag, seconds: float) -> threading.Thread:
    started = threading.Event()

    def hold() -> None:
        with flag.answering():
            started.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait()
    return thread


def test_forward_and_backward_wait_while_the_server_answers(tmp_path: Path, tiny_policy: Policy) -> None:
    model = tiny_policy.model
    server = AnsweringFlag(tmp_path / "answering.flag", writer=True)
    handles = pause_while_answering(model, AnsweringFlag(server.path), max_pause_s=30.0)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = CLOCK.seconds().get("yield", 0.0)

    holder = _held_for(server, 0.4)
    t0 = time.perf_counter()
    loss = model(input_ids=ids).logits.sum()
    forward_s = time.perf_counter() - t0
    holder.join()
    assert forward_s >= 0.35  # it waited for the answer to finish

    holder = _held_for(server, 0.4)
    t0 = time.perf_counter()
    loss.backward()
    backward_s = time.perf_counter() - t0
    holder.join()
    assert backward_s >= 0.35
    assert CLOCK.seconds()["yield"] - before >= 0.7  # the pauses are timed as their own part

    for handle in handles:
        handle.remove()
    holder = _held_for(server, 0.4)
    t0 = time.perf_counter()
    model(input_ids=ids)
    assert time.perf_counter() - t0 < 0.35  # hooks removed: no waiting
    holder.join()


def test_a_pause_is_bounded(tmp_path: Path, tiny_policy: Policy) -> None:
    model = tiny_policy.model
    server = AnsweringFlag(tmp_path / "answering.flag", writer=True)
    handles = pause_while_answering(model, AnsweringFlag(server.path), max_pause_s=0.05)
    layers = len(decoder_layers(model))
    with server.answering():  # a server that never stops answering
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
        elapsed = time.perf_counter() - t0
    assert 0.05 * layers <= elapsed < 0.05 * layers + 2.0  # each layer waited its bound, then went on
    for handle in handles:
        handle.remove()


def test_the_engine_raises_the_flag_only_while_generating(tmp_path: Path, tiny_policy: Policy) -> None:
    server = AnsweringFlag(tmp_path / "answering.flag", writer=True)
    reader = AnsweringFlag(server.path)
    bank: Any = SimpleNamespace(get=lambda tenant: SimpleNamespace(version=0, tensors={}))
    engine = Engine(tiny_policy, bank, server)
    engine._applied = ("alice", 0)  # the adapter is loaded: no swap
    seen: list[bool] = []
    started: list[bool] = []
    chat = tiny_policy.chat

    def chat_spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(reader.up)
        return chat(*args, **kwargs)

    tiny_policy.chat = chat_spy  # type: ignore[method-assign]
    engine.generate(
        "alice",
        [1, 2, 3],
        GenerationConfig(answer_tokens=2, protocol=False),
        on_start=lambda v: started.append(reader.up),
    )
    assert seen == [True] and started == [False] and not reader.up


def test_a_pause_bound_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_pause_s"):
        LearnerConfig(max_pause_s=0)

"""kill -9 of `lifelong serve` loses nothing it acknowledged, and a restart resumes with the last
good adapters. The server runs as a real subprocess (`python -m lifelong.cli serve`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import openai
import pytest

from lifelong.memory.store import ExperienceStore
from tests.serve.conftest import LEARNING, ask, client, http, write_probes
from tests.serve.test_learning import HELD_OUT, NLL_LEARNING, TRAIN, correct, version_of, wait_for_version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`lifelong serve` in a subprocess, with the same arguments each time it is started."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "lifelong.cli", "serve", "--port", str(self.port), *args]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if http("GET", self.url.removesuffix("/v1") + "/health", tenant=None).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("lifelong serve did not come up:\n" + self.log.read_text()[-2000:])

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # graceful: uvicorn shuts down and stops its learner
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve_process(tmp_path: Path, serve_model_dir: Path, keys_file: Path) -> Iterator[ServeProcess]:
    settings = {
        "threads": 1,
        "lora": {"rank": 4, "alpha": 8},
        "learner": {**asdict(LEARNING), "min_feedback": 4},
        "learning": asdict(NLL_LEARNING),
        "memory": {"enabled": False},  # what the weights learnt is under test (see test_learning.WEIGHTS_ONLY)
    }
    (tmp_path / "serve.json").write_text(json.dumps(settings))
    args = ["--model", str(serve_model_dir), "--keys", str(keys_file), "--store", str(tmp_path / "store")]
    args += ["--probes", str(write_probes(tmp_path / "probes.jsonl", [])), "--config", str(tmp_path / "serve.json")]
    proc = ServeProcess(args, tmp_path / "server.log")
    yield proc
    proc.stop()


def test_kill_9_loses_nothing_acknowledged_and_restart_resumes_the_last_good_adapters(
    serve_process: ServeProcess, tmp_path: Path, model_id: str
) -> None:
    serve_process.start()
    alice, bob = client(serve_process.url, "alice"), client(serve_process.url, "bob")
    for q in TRAIN[:4]:  # one round for alice: version 1 goes live
        correct(alice, model_id, q, "blue")
    wait_for_version(alice, 1, timeout=120)
    answers = [ask(alice, model_id, q) for q in HELD_OUT[:3]]

    # bob keeps chatting and rating while the server is killed in mid-stream
    acked_chats: list[tuple[str, str]] = []
    acked_feedback: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            try:
                r = bob.chat.completions.create(
                    model=model_id, messages=[{"role": "user", "content": f"Hello {i}"}], max_tokens=3
                )
                acked_chats.append((r.id, r.choices[0].message.content or ""))
                ack = bob.post("/feedback", body={"completion_id": r.id, "rating": "up"}, cast_to=object)
                acked_feedback.append(int(ack["id"].removeprefix("fb-")))  # type: ignore[index]
            except (openai.APIConnectionError, openai.APITimeoutError):
                return
            i += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    deadline = time.time() + 60
    while len(acked_feedback) < 6 and time.time() < deadline:
        time.sleep(0.05)
    serve_process.kill9()
    stop.set()
    worker.join(timeout=60)
    assert len(acked_feedback) >= 6

    # everything acknowledged is in the store, readable while nothing runs
    with ExperienceStore(tmp_path / "store" / "experience.sqlite") as store:
        stored_feedback = {f.id for f in store.feedback("bob")}
        live = store.live_versions()
        for rid, content in acked_chats:
            req = store.request(rid)
            assert req is not None and req.status == "completed" and req.choices[0].answer == content
    assert set(acked_feedback) <= stored_feedback
    newest_alice = live["alice"][0].version
    assert newest_alice == 1

    # a restart serves alice's last good adapter: same version, same answers
    time.sleep(0.5)  # the orphaned learner notices its parent is gone and lets go of the store
    serve_process.start()
    alice = client(serve_process.url, "alice")
    bob = client(serve_process.url, "bob")
    assert version_of(alice) == newest_alice
    assert [ask(alice, model_id, q) for q in HELD_OUT[:3]] == answers
    for rid, content in acked_chats:  # acknowledged completions read back through the API
        assert bob.chat.completions.retrieve(rid).choices[0].message.content == content

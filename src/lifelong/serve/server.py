"""Process layout of `lifelong serve`: the HTTP server answers, a worker process learns.

  server process   uvicorn + FastAPI; one model; every tenant's live adapter in memory; a watcher
                   thread that hot-loads new adapter versions (adapters.py) between requests
  worker process   `python -m lifelong.serve.worker`, its own model copy, at nice 19 with 1 thread;
                   runs the runtime's learning core on each tenant's feedback (loop/tenants.py),
                   pausing while the server generates (answering.py)
They share only the experience store (SQLite in WAL mode, or PostgreSQL with `--database`), the
adapter folders and the one-byte answering flag. The server never waits for the worker; if the
worker dies, the server keeps answering with the last good adapters. The worker exits when the
server does (it watches its parent).

Files under the store folder: experience.sqlite (requests, completions, feedback and the episodes
made of it, adapter versions, flags), adapters/<tenant>/step-NNNNNN/ (each tenant's checkpoint ring,
with its guard_events.jsonl and metrics.jsonl), flags.jsonl (monitor flags), learner.jsonl (rounds),
learner.log (the worker's output), serve.json (the config the worker reads), answering.flag (up
while the server generates), keys.json (generated keys). A serve.sqlite of the old separate
serving schema is carried into the experience store at start-up and kept as serve.sqlite.migrated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from lifelong.loop.tenants import ensure_initial_adapter
from lifelong.memory.store import ExperienceStore, import_serve_store
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.serve.adapters import AdapterBank
from lifelong.serve.app import build_app
from lifelong.serve.config import ServeConfig, TenantKey, adapters_folder, load_keys
from lifelong.serve.service import ChatService, model_id_for


class LearnerProcess:
    """The learning worker as a child process; started and stopped with the server."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.store_dir / "learner.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lifelong.serve.worker", str(self.store_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Server:
    """Everything `lifelong serve` runs, built from a ServeConfig; `app` is the FastAPI app."""

    def __init__(self, config: ServeConfig, announce: Callable[[str], None] | None = None) -> None:
        say = announce or (lambda _: None)
        self.config = config
        config.store.mkdir(parents=True, exist_ok=True)
        self.keys: dict[str, TenantKey]
        self.keys, note = load_keys(config)
        if note:
            say(note)
        torch.set_num_threads(config.threads)
        model, tokenizer, name = load_model(config.model)
        self.policy = Policy.for_config(model, tokenizer, name, config)
        self.store = ExperienceStore(config.database_location)
        old = config.store / "serve.sqlite"
        if old.is_file():  # a store of the old separate serving schema: carry it over, keep the file
            rows = import_serve_store(old, self.store)
            say(f"carried {sum(rows.values())} rows of {old} into {self.store.location} (kept as {old.name}.migrated)")
        self.store.claim_model(name)
        initial = ensure_initial_adapter(self.policy, adapters_folder(config))
        self.bank = AdapterBank(self.store, initial, adapters_folder(config))
        for tenant, version in self.bank.refresh():  # restart resumes with the last good adapters
            say(f"tenant {tenant}: adapter version {version}")
        self.service = ChatService(config, self.policy, self.store, self.bank, model_id_for(name))
        (config.store / "serve.json").write_text(json.dumps(config.to_dict(), indent=1))
        self.learner = LearnerProcess(config.store) if config.learner.enabled else None
        self._stop = threading.Event()
        self.app: FastAPI = build_app(self.service, self.keys, lifespan=self._lifespan)

    def _watch(self) -> None:
        """Hot-load new adapter versions off the request path; restart a learner that died (its
        output is in learner.log) at most every `restart_s` seconds."""
        restart_s, last_start = 30.0, time.time()
        while not self._stop.wait(self.config.learner.poll_s):
            with contextlib.suppress(Exception):  # a busy or unreadable store must not kill the watcher
                self.bank.refresh()
            if self.learner is not None and not self.learner.alive and time.time() - last_start > restart_s:
                self.learner.start()
                last_start = time.time()

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self._stop.clear()
        watcher = threading.Thread(target=self._watch, name="adapter-watcher", daemon=True)
        watcher.start()
        if self.learner is not None:
            self.learner.start()
        try:
            yield
        finally:
            self._stop.set()
            if self.learner is not None:
                await asyncio.to_thread(self.learner.stop)
            watcher.join(timeout=5)

    def close(self) -> None:
        self.store.close()


# Seconds an idle keep-alive connection stays open: longer than any client pool keeps one (httpx,
# under the openai client, drops them after 5 s), so the client always closes first. At uvicorn's
# 5 s the two timers race, and under load a client reusing the connection as the server closes it
# gets "Server disconnected without sending a response" (two benchmark runs died of it, dev/LOG.md).
KEEP_ALIVE_S = 75


def run_server(config: ServeConfig, announce: Callable[[str], None] | None = None) -> None:
    """`lifelong serve`: build everything, then serve until interrupted."""
    server = Server(config, announce)
    if announce:
        announce(f"serving {server.service.model_id} on http://{config.host}:{config.port}/v1 (store {config.store})")
    try:
        uvicorn.run(
            server.app, host=config.host, port=config.port, log_level="warning", access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )  # fmt: skip
    finally:
        server.close()


class BackgroundServer:
    """A real uvicorn server on 127.0.0.1 and a free port, in a thread of this process (tests,
    benchmarks). `with BackgroundServer(server) as url:` gives the base URL ending in /v1."""

    def __init__(self, server: Server, timeout: float = 60.0) -> None:
        self.server = server
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(server.app, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
        )
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.time() + self.timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

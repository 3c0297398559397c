"""Fixtures for the server tests: a tiny model that can learn a short answer, keys, live servers.

The tiny model differs from the suite-wide one in two ways that let it learn a fixed answer in a
few steps: no pad token (a pad id equal to EOS would zero the EOS embedding row, and with tied
embeddings the model could never end its turn), and a larger init (logits of a 64-wide model
initialised at 0.02 are too flat for any token to win by a wide margin).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from lifelong.model.policy import LoraSettings
from lifelong.serve import BackgroundServer, LearnerConfig, ServeConfig, Server
from tests.conftest import FAST_LEARNING

KEYS = {"alice": "sk-alice", "bob": "sk-bob", "carol": "sk-carol", "ops": "sk-ops"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread here, as the server and its learner use: on 2 shared cores a second spinning
    thread per process makes small models many times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    entries: list[dict[str, Any]] = [{"key": k, "tenant": t} for t, k in KEYS.items() if t != "ops"]
    entries.append({"key": KEYS["ops"], "tenant": "ops", "operator": True})
    path.write_text(json.dumps({"keys": entries}))
    return path


def write_probes(path: Path, probes: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in probes))
    return path


@pytest.fixture
def serve_config(tmp_path: Path, serve_model_dir: Path, keys_file: Path) -> ServeConfig:
    """Learner off (fast); tests that learn turn it on with `replace`."""
    return ServeConfig(
        store=tmp_path / "serve",
        model=str(serve_model_dir),
        keys_file=keys_file,
        threads=1,
        probes_file=write_probes(tmp_path / "no-probes.jsonl", []),
        lora=LoraSettings(rank=4, alpha=8),
        learner=LearnerConfig(enabled=False),
    )


# A worker that starts a round at the first feedback. nice=0: on a busy shared machine a nice-19
# worker can wait minutes for a core, and these tests time learning, not politeness
# (benchmarks/serve_load.py does). Consolidation off: these tests count and compare the versions
# feedback rounds make, and a consolidation would add versions of its own between them (its worker
# trigger is tested in tests/loop/test_consolidation.py).
LEARNING = LearnerConfig(
    min_feedback=1, max_wait_s=0.0, poll_s=0.1, max_items_per_round=64, nice=0,
    consolidate_after_items=0, consolidate_when_idle_s=0.0,
)  # fmt: skip


def learning_on(config: ServeConfig, **learning: Any) -> ServeConfig:
    """`config` with its worker on and the fast tiny-model learning settings (FAST_LEARNING)."""
    return replace(config, learner=LEARNING, learning=replace(FAST_LEARNING, **learning))


@pytest.fixture
def start_server() -> Iterator[Callable[..., str]]:
    """start_server(config) -> base URL of a real uvicorn server on 127.0.0.1 (stopped at teardown)."""
    with ExitStack() as stack:

        def start(config: ServeConfig, **changes: Any) -> str:
            server = Server(replace(config, **changes) if changes else config)
            stack.callback(server.close)
            return stack.enter_context(BackgroundServer(server))

        yield start


def client(url: str, tenant: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(api_key=KEYS[tenant], base_url=url, max_retries=0, timeout=60)


def ask(c: openai.OpenAI, model: str, question: str, **kw: Any) -> str:
    kw.setdefault("temperature", 0)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)
    return r.choices[0].message.content or ""


@pytest.fixture(scope="session")
def model_id(serve_model_dir: Path) -> str:
    """What clients pass as `model`: the model folder's name."""
    return serve_model_dir.name


@dataclass(frozen=True)
class Reply:
    """A raw HTTP reply (stdlib only: malformed bodies are the point of some tests)."""

    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def http(method: str, url: str, body: Any = None, tenant: str | None = "alice", raw: bytes | None = None) -> Reply:
    """`url` is absolute; `body` is sent as JSON, `raw` as is; `tenant` picks the bearer key."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if tenant is not None:
        headers["Authorization"] = f"Bearer {KEYS.get(tenant, tenant)}"  # a name not in KEYS is sent as the key
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn = HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode())
    finally:
        conn.close()

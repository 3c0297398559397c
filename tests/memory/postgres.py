"""A throwaway PostgreSQL server on loopback for tests, started from the machine's own binaries.

`.ci/run` installs PostgreSQL where it is missing; where a server still cannot start (no
binaries, no `postgres` user to run it as root), `start()` returns None and the tests that need
it skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """Yields (url, reason): url is None and reason says why when no server could start."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        yield None, "PostgreSQL binaries (initdb, pg_ctl) not found"
        return
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            yield None, "running as root and there is no postgres user to start the server as"
            return
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="lifelong-pg-"))
    os.chmod(root, 0o777)
    data, port = root / "data", _free_port()
    log = root / "server.log"
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "lifelong", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
             "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        yield None, f"PostgreSQL did not start: {exc} {detail.decode(errors='replace')[:300]}"
        shutil.rmtree(root, ignore_errors=True)
        return
    try:
        url = f"postgresql://lifelong@127.0.0.1:{port}/postgres"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield url, ""
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on loopback for the module's tests; skips with the reason if none can start."""
    with postgres_server() as (url, reason):
        if url is None:
            pytest.skip(reason)
        yield url

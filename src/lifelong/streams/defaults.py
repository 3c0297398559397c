"""Named streams shipped with lifelong. `lifelong run --stream NAME` picks one."""

from __future__ import annotations

from lifelong.errors import ConfigError
from lifelong.streams.stream import Stage, Stream, Task

STREAMS: dict[str, Stream] = {
    # The `make demo` run: learn addition, then first letters, on CPU within minutes.
    "demo": Stream(
        "demo",
        (
            Stage(Task.of("add", max_value=20), 512),
            Stage(Task.of("letter", position="first"), 256),
        ),
        probe_size=64,
        description="addition then first letters; the first slice's end-to-end demo",
    ),
}


def get_stream(name: str) -> Stream:
    if name not in STREAMS:
        raise ConfigError(f"unknown stream {name!r}", f"use one of {', '.join(STREAMS)} or a stream YAML file")
    return STREAMS[name]

"""Streams from YAML files: `lifelong run --stream my_stream.yaml`.

The file holds the same fields as `Stream.to_dict()`:

    name: arithmetic-then-words        # optional; defaults to the file name
    description: what this stream shows
    probe_size: 32                     # held-out items per task
    stages:
      - env: add
        params: {max_value: 20}        # the task's difficulty knobs (`lifelong envs` lists them)
        episodes: 256
      - env: rg:spell_backward
        episodes: 256
    general: [facts, instruct]         # never trained on; a name or {env, params}

Everything is checked before a run starts, and each mistake is one error that says where it is
and how to fix it: an unknown key names the close key, an unknown environment lists close names,
a bad difficulty value names the allowed values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from lifelong.errors import ConfigError, LifelongError
from lifelong.streams.stream import Stage, Stream, Task

STREAM_KEYS = ("name", "description", "probe_size", "stages", "general")
STAGE_KEYS = ("env", "params", "episodes")
TASK_KEYS = ("env", "params")


def _check_keys(found: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in found:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            fix = f"did you mean '{close[0]}'?" if close else f"the keys allowed there are: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key '{key}'", fix)


def _int(value: Any, name: str, where: str, example: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}", f"e.g. {name}: {example}")
    return value


def _task(entry: Any, where: str, keys: tuple[str, ...]) -> tuple[Task, dict[str, Any]]:
    """A task from `name` or `{env: name, params: {...}}`, checked by building its environment."""
    if isinstance(entry, str):
        entry = {"env": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with 'env', got {entry!r}", "write e.g. `- env: add`")
    _check_keys(entry, keys, where)
    if "env" not in entry:
        raise ConfigError(f"{where}: missing 'env'", "name the environment, e.g. `env: add`")
    env, params = entry["env"], entry.get("params") or {}
    if not isinstance(env, str):
        raise ConfigError(f"{where}: env must be a name, got {env!r}", "e.g. `env: add` (`lifelong envs` lists them)")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ConfigError(
            f"{where}: params must be a mapping of knob names, got {params!r}", "e.g. `params: {max_value: 20}`"
        )
    task = Task.of(env, **params)
    try:
        task.make()  # unknown env (close names), unknown knob (the knobs), bad value (the range)
    except LifelongError as exc:
        raise type(exc)(f"{where}: {exc.problem}", exc.fix) from exc
    return task, entry


def parse_stream(data: Any, origin: str = "stream", default_name: str = "stream") -> Stream:
    """A checked `Stream` from parsed YAML/JSON data; `origin` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'stages'", "see docs/envs.md for the stream format")
    _check_keys(data, STREAM_KEYS, origin)
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise ConfigError(
            f"{origin}: 'stages' must be a non-empty list", "add e.g. `stages: [{env: add, episodes: 256}]`"
        )
    stages = []
    for i, entry in enumerate(stages_data, start=1):
        where = f"{origin}: stage {i}"
        task, entry = _task(entry, where, STAGE_KEYS)
        if "episodes" not in entry:
            raise ConfigError(f"{where} ({task.label}): missing 'episodes'", "give every stage e.g. `episodes: 256`")
        stages.append(Stage(task, _int(entry["episodes"], "episodes", f"{where} ({task.label})", 256)))
    general_data = data.get("general") or []
    if not isinstance(general_data, list):
        raise ConfigError(f"{origin}: 'general' must be a list", "e.g. `general: [facts, instruct]`")
    general = tuple(_task(g, f"{origin}: general {i}", TASK_KEYS)[0] for i, g in enumerate(general_data, start=1))
    probe_size = _int(data.get("probe_size", 48), "probe_size", origin, 48)
    name = data.get("name", default_name)
    return Stream(str(name), tuple(stages), probe_size, str(data.get("description", "")), general)


def load_stream_file(path: str | Path) -> Stream:
    """Read and check a stream YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"stream file {path} does not exist", "check the path, or pass a stream name like `default`")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{at}", "fix the indentation or quoting there") from exc
    return parse_stream(data, origin=str(path), default_name=path.stem)

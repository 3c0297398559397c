"""Named environments: `make("add", max_value=10)` and the table behind `lifelong envs`.

Each entry records where the environment comes from (built-in or a library), whether it is
multi-turn, and its difficulty knobs with defaults, so the CLI can list them and errors can say
which values are allowed.

Names with a library prefix (`rg:<dataset>`, `ta:<game id>`) reach beyond the listed entries: a
source registered with `register_source` resolves any of its names on first use, so every
reasoning-gym dataset works by name without being listed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lifelong.envs.base import Env, pays_turn_credit, with_turn_credit
from lifelong.errors import ConfigError, UnknownEnvError


@dataclass(frozen=True)
class EnvSpec:
    name: str
    factory: Callable[..., Env]
    source: str = "built-in"
    multi_turn: bool = False
    description: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)  # knob name -> default value
    listed: bool = True  # False for names resolved on demand (`rg:<any dataset>`): not in the table
    # True when the factory takes more knobs than `knobs` lists and checks them itself (a library
    # dataset's whole config; `knobs` then holds the ones lifelong sets).
    more_knobs: bool = False


# The knob of every game that can say how far the agent got: pay progress move by move, not at the end.
TURN_CREDIT = "turn_credit"

_REGISTRY: dict[str, EnvSpec] = {}
# prefix ("rg") -> (source name, resolver: name after the prefix -> (factory, knobs, description))
_SOURCES: dict[str, tuple[str, Callable[[str], tuple[Callable[..., Env], dict[str, Any], str]], bool]] = {}


def register(
    name: str,
    factory: Callable[..., Env],
    *,
    source: str = "built-in",
    multi_turn: bool = False,
    description: str = "",
    knobs: dict[str, Any] | None = None,
    listed: bool = True,
    more_knobs: bool = False,
) -> EnvSpec:
    if knobs is None:  # read the knobs off the factory's keyword arguments
        params = inspect.signature(factory).parameters.values()
        knobs = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    if isinstance(factory, type) and pays_turn_credit(factory):  # `make` applies it (envs/base.py)
        knobs = {**knobs, TURN_CREDIT: False}
    doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
    spec = EnvSpec(name, factory, source, multi_turn, doc, dict(knobs), listed, more_knobs)
    _REGISTRY[name] = spec
    return spec


def register_source(
    prefix: str,
    source: str,
    resolve: Callable[[str], tuple[Callable[..., Env], dict[str, Any], str]],
    *,
    multi_turn: bool = False,
) -> None:
    """Let `<prefix>:<name>` resolve names of a library that are not listed one by one."""
    _SOURCES[prefix] = (source, resolve, multi_turn)


def _ensure_loaded() -> None:
    if not _REGISTRY:
        from lifelong.envs import catalog  # noqa: F401  (registers everything on import)


def env_specs() -> list[EnvSpec]:
    _ensure_loaded()
    return sorted((s for s in _REGISTRY.values() if s.listed), key=lambda s: (s.source, s.name))


def get_spec(name: str) -> EnvSpec:
    """Look up an environment. `package.module:name` imports the module first (which registers its
    environments), as Gymnasium's `make("module:Env")` does, so user environments work everywhere."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, _, rest = name.partition(":")
    if rest and prefix in _SOURCES:
        source, resolve, multi_turn = _SOURCES[prefix]
        factory, knobs, description = resolve(rest)  # unknown names raise with close matches
        return register(
            name, factory, source=source, multi_turn=multi_turn, description=description, knobs=knobs, listed=False
        )
    if ":" in name:
        module, _, name = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownEnvError(
                f"cannot import module {module!r} ({exc})", "check the module path and PYTHONPATH"
            ) from exc
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `lifelong envs` to list them"
        raise UnknownEnvError(f"unknown environment {name!r}", hint)
    return _REGISTRY[name]


def make(name: str, **params: Any) -> Env:
    """Create a fresh environment instance. Unknown names and knobs give a clear error."""
    spec = get_spec(name)
    unknown = sorted(set(params) - set(spec.knobs))
    if unknown and not spec.more_knobs:
        allowed = ", ".join(f"{k}={v!r}" for k, v in spec.knobs.items()) or "none"
        raise ConfigError(f"{name} has no difficulty knob {', '.join(unknown)}", f"its knobs are: {allowed}")
    turn_credit = params.pop(TURN_CREDIT, False) if TURN_CREDIT in spec.knobs else False
    if not isinstance(turn_credit, bool):
        raise ConfigError(
            f"{name}: {TURN_CREDIT} must be true or false, got {turn_credit!r}", f"e.g. {TURN_CREDIT}=true"
        )
    try:
        env = spec.factory(**params)
    except (ConfigError, UnknownEnvError):
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad settings for {name}: {exc}", f"its knobs are: {spec.knobs}") from exc
    return with_turn_credit(env) if turn_credit else env

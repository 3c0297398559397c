"""Configuration of `lifelong serve`: the server, its learning worker, how it learns, and its tenants.

Every knob has a working default (`ServeConfig()` serves the embedded model on 127.0.0.1:8000 and
learns from feedback). Cross-field checks run in `__post_init__` and say the fix. The config is
written to `<store>/serve.json` at start-up so the learner process reads exactly what the server
was given. API keys are not part of it: they stay in the server process.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifelong.errors import ConfigError
from lifelong.loop.tenants import TenantLearningConfig
from lifelong.memory.recall import RecallConfig
from lifelong.model.memory_layer import MemorySettings
from lifelong.model.policy import EFFORT_BUDGETS, LoraSettings, Precision, Unit, check_precision, check_unit

# Tenant names become folder names under <store>/adapters/; keep them boring.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LearnerConfig:
    """The learning worker: when a tenant's round starts, and how politely it shares the CPU. What a
    round learns and how it is guarded is `ServeConfig.learning` (the runtime's settings)."""

    enabled: bool = True
    min_feedback: int = 4  # a tenant's pending feedback items that start a round...
    max_wait_s: float = 30.0  # ...or fewer, once the oldest of them has waited this long
    max_items_per_round: int = 32
    holdout_every: int = 5  # every Nth correction is held out as a probe, never trained on (0 = none)
    threads: int = 1  # torch threads of the worker process; the server keeps the rest
    nice: int = 19  # lowest CPU priority: answers first, learning in the gaps
    # ...and between decoder layers it waits while the server generates (serve/answering.py), at
    # most this long at a time, so that learning still advances under a server that never idles.
    pause_while_answering: bool = True
    max_pause_s: float = 5.0
    poll_s: float = 0.5
    # Consolidation of a tenant's memory into its weights (TenantLearner.consolidate), after its
    # feedback rounds: once it has this many unconsolidated items (after a rejected consolidation,
    # this many new ones: a rejection is not retried at every poll) (0 = never by count)...
    consolidate_after_items: int = 8
    # ...or once it has been idle this long (no pending feedback, no new item, no round) with items
    # left unconsolidated (0 = never when idle). A rejected consolidation is retried on these triggers.
    consolidate_when_idle_s: float = 300.0

    def __post_init__(self) -> None:
        if self.consolidate_after_items < 0 or self.consolidate_when_idle_s < 0:
            raise ConfigError(
                "learner.consolidate_after_items and learner.consolidate_when_idle_s must be >= 0",
                "0 turns that trigger off; the defaults are 8 items and 300 seconds",
            )
        if self.min_feedback < 1 or self.max_items_per_round < self.min_feedback:
            raise ConfigError(
                "learner.min_feedback must be >= 1 and <= max_items_per_round", "the defaults are 4 and 32"
            )
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise ConfigError(
                "learner.holdout_every must be 0 or >= 2", "1 would hold out every correction and learn from none"
            )
        if self.threads < 1:
            raise ConfigError("learner.threads must be >= 1", "the default is 1")
        if self.max_pause_s <= 0:
            raise ConfigError("learner.max_pause_s must be > 0", "the default is 5 seconds")


@dataclass(frozen=True)
class ServeConfig:
    store: Path = Path("serve-data")  # folder: experience.sqlite, adapters/, flags.jsonl, learner.log
    model: str | None = None  # None = the embedded SmolLM2-135M-Instruct
    database: str | None = None  # a postgresql:// URL for the experience store; None = <store>/experience.sqlite
    host: str = "127.0.0.1"
    port: int = 8000
    keys_file: Path | None = None
    keys: tuple[tuple[str, str], ...] = ()  # (tenant, key) pairs given on the command line
    operator_keys: tuple[str, ...] = ()  # keys of tenant "operator", allowed to read monitor flags
    expose_reasoning: bool = False  # operators only: put the raw chain of thought in responses
    reasoning_effort: str = "none"  # default when a request names none; 2 CPU cores favour none
    answer_tokens: int = 32  # default answer budget (max_tokens of a request overrides it)
    max_answer_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_body_bytes: int = 1 << 20
    max_document_bytes: int = 2 << 20  # POST /v1/documents: a document's bytes (a file, or JSON text)
    max_n: int = 4
    threads: int = 2  # torch threads for answering
    probes_file: Path | None = None  # JSONL of {"prompt", "answer", "tenant"?}; None = built-in probes
    lora: LoraSettings = field(default_factory=LoraSettings)
    unit: Unit = Unit.LORA  # what learns: LoRA, memory-layer values (`memory_unit`) or every weight
    memory_unit: MemorySettings = field(default_factory=MemorySettings)
    # fp32: with bf16 decoding the embedded model's greedy answers matched the bare fp32 model's on
    # 36 of 40 questions, one right answer (a near tie) lost (dev/LOG.md, stop 24); `auto` opts in.
    sampler_precision: Precision = Precision.FLOAT32
    learner_precision: Precision = Precision.FLOAT32  # as RunConfig's (loop/config.py says why)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    learning: TenantLearningConfig = field(default_factory=TenantLearningConfig)
    memory: RecallConfig = field(default_factory=RecallConfig)  # corrections and documents in context

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(self.store))
        object.__setattr__(self, "unit", check_unit(self.unit))
        object.__setattr__(self, "sampler_precision", check_precision(self.sampler_precision))
        object.__setattr__(self, "learner_precision", check_precision(self.learner_precision))
        if self.reasoning_effort not in EFFORT_BUDGETS:
            raise ConfigError(
                f"unknown reasoning_effort {self.reasoning_effort!r}", f"use one of {', '.join(EFFORT_BUDGETS)}"
            )
        if not 1 <= self.answer_tokens <= self.max_answer_tokens:
            raise ConfigError("answer_tokens must be in [1, max_answer_tokens]", "the defaults are 32 and 256")
        if self.max_prompt_tokens < 16 or self.max_body_bytes < 1024 or self.max_n < 1:
            raise ConfigError(
                "max_prompt_tokens >= 16, max_body_bytes >= 1024 and max_n >= 1 are required",
                "the defaults are 2048, 1 MiB and 4",
            )
        if self.max_document_bytes < 1024:
            raise ConfigError("max_document_bytes must be >= 1024", "the default is 2 MiB")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range", "use a port in 1..65535 (0 = any free port)")
        if self.threads < 1:
            raise ConfigError("threads must be >= 1", "the default is 2")
        for tenant, key in self.keys:
            check_tenant(tenant)
            if not key:
                raise ConfigError(f"empty API key for tenant {tenant!r}", "pass --key TENANT=KEY with a non-empty key")
        if any(not k for k in self.operator_keys):
            raise ConfigError("empty operator key", "pass --operator-key with a non-empty key")

    @property
    def database_location(self) -> str | Path:
        return self.database or self.store / "experience.sqlite"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keys"], d["operator_keys"] = [], []  # secrets stay in the server process
        for k in ("store", "keys_file", "probes_file"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        d = dict(d)
        d["lora"] = LoraSettings(**d.get("lora", {}))
        d["memory_unit"] = MemorySettings.from_dict(d.get("memory_unit", {}))
        if "gate" in d or "gate" in d.get("learner", {}):
            raise ConfigError(
                "the serving gate's settings moved into the guard",
                'use "learning": {"guard": {"answer_likelihood_budget": 0.3, ...}} (see loop/tenants.py)',
            )
        d["learner"] = LearnerConfig(**d.get("learner", {}))
        d["learning"] = TenantLearningConfig.from_dict(d.get("learning", {}))
        d["memory"] = RecallConfig(**d.get("memory", {}))
        d["keys"] = tuple(tuple(k) for k in d.get("keys", ()))
        d["operator_keys"] = tuple(d.get("operator_keys", ()))
        for k in ("keys_file", "probes_file"):
            d[k] = None if d.get(k) is None else Path(d[k])
        return cls(**d)


def adapters_folder(config: ServeConfig) -> Path:
    """`<store>/adapters/`: one checkpoint ring per tenant, and the shared initial adapter."""
    return config.store / "adapters"


def check_tenant(name: str) -> str:
    if not TENANT_PATTERN.match(name):
        raise ConfigError(
            f"tenant name {name!r} is not allowed",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class TenantKey:
    """One API key: whose it is, and whether it may read operator endpoints (monitor flags)."""

    key: str
    tenant: str
    operator: bool = False


def load_keys(config: ServeConfig) -> tuple[dict[str, TenantKey], str | None]:
    """API keys from the keys file and --key flags; (keys, note). With neither, a key for tenant
    `default` is generated once into <store>/keys.json and the note says where it is.

    Keys file format: {"keys": [{"key": "sk-...", "tenant": "alice"},
                                {"key": "sk-...", "tenant": "ops", "operator": true}]}
    """
    keys: dict[str, TenantKey] = {}
    note = None
    path = config.keys_file
    if path is None and not config.keys and not config.operator_keys:
        path = config.store / "keys.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            generated = {"keys": [{"key": "sk-" + secrets.token_urlsafe(24), "tenant": "default", "operator": True}]}
            path.write_text(json.dumps(generated, indent=1))
            path.chmod(0o600)
        note = f"API keys are in {path} (pass --keys FILE or --key TENANT=KEY to choose your own)"
    if path is not None:
        fix = 'write {"keys": [{"key": "sk-...", "tenant": "alice"}, ...]} (operator: true for operators)'
        try:
            data = json.loads(Path(path).read_text())
            entries = data["keys"]
            for e in entries:
                k = TenantKey(str(e["key"]), check_tenant(str(e["tenant"])), bool(e.get("operator", False)))
                if not k.key:
                    raise ValueError("empty key")
                keys[k.key] = k
        except OSError as exc:
            raise ConfigError(f"cannot read keys file {path} ({exc.strerror})", "check the --keys path") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"keys file {path} is not valid ({type(exc).__name__}: {exc})", fix) from exc
    for tenant, key in config.keys:
        keys[key] = TenantKey(key, tenant, operator=False)
    for key in config.operator_keys:
        keys[key] = TenantKey(key, "operator", operator=True)
    if not keys:
        raise ConfigError("no API keys configured", "pass --key TENANT=KEY or a --keys file with at least one key")
    return keys, note

"""Adapter versions on disk and in memory.

On disk, each tenant has a CheckpointRing under `<store>/adapters/<tenant>/` written by the learner;
version 0 (the LoRA initialisation every tenant starts from) lives in `adapters/_initial/`, saved
once so that the server, the learner and every restart start from the same weights.

In memory, `AdapterBank` holds per tenant the newest live version that verified on disk (version 0
for a tenant without one). The server's watcher thread calls `refresh()`: it reads the versions the
learner recorded in the store, checks each adapter file against its manifest hash and loads it off
the request path; the bank's entry is then replaced in one assignment, so a request sees either the
old version or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from lifelong.guard.checkpoints import CheckpointRing
from lifelong.model.policy import Policy
from lifelong.serve.store import ServeStore

Adapter = dict[str, torch.Tensor]  # peft state-dict keys -> LoRA tensors
INITIAL = "_initial"  # folder of version 0, shared by every tenant (tenant names start alphanumeric)


def adapter_folder(store_dir: Path, tenant: str) -> Path:
    return store_dir / "adapters" / tenant


def adapter_state(policy: Policy) -> Adapter:
    """A copy of the live LoRA tensors (the state dict shares storage with the parameters)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}


def ensure_initial_adapter(policy: Policy, store_dir: Path) -> Adapter:
    """Version 0 of every tenant: the LoRA initialisation, saved once so that the server, the
    learner and every restart start from the same weights."""
    ring = CheckpointRing(adapter_folder(store_dir, INITIAL), keep=1)
    checkpoint = ring.latest()
    if checkpoint is None:
        ring.save(policy.model, None, 0, {"initial": True})
    else:
        ring.restore(checkpoint, policy.model, None)
    return adapter_state(policy)


def load_adapter(policy: Policy, adapter: Adapter) -> None:
    """Copy adapter tensors into the policy's LoRA parameters."""
    set_peft_model_state_dict(policy.model, dict(adapter))


_ADAPTER = "adapter_model.safetensors"  # the CheckpointRing's file names
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class LiveAdapter:
    version: int
    tensors: Adapter
    loaded: float  # when this process loaded it


def read_adapter(folder: Path) -> Adapter:
    """The adapter tensors of a checkpoint folder, after checking them against its manifest. Only the
    adapter is hashed (the optimizer state next to it is the learner's business)."""
    manifest = json.loads((folder / _MANIFEST).read_text())
    data = (folder / _ADAPTER).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest[_ADAPTER]:
        raise ValueError(f"{folder / _ADAPTER} does not match its manifest")
    return load_file(folder / _ADAPTER)


class AdapterBank:
    def __init__(self, store: ServeStore, initial: Adapter) -> None:
        self.store = store
        self.initial = LiveAdapter(0, initial, time.time())
        self._live: dict[str, LiveAdapter] = {}
        self._refresh_lock = threading.Lock()

    def get(self, tenant: str) -> LiveAdapter:
        return self._live.get(tenant, self.initial)

    def versions(self) -> dict[str, int]:
        return {t: a.version for t, a in self._live.items()}

    def refresh(self) -> list[tuple[str, int]]:
        """Load every tenant's newest live version that verifies; returns what changed."""
        changed = []
        with self._refresh_lock:
            for tenant, records in self.store.live_versions().items():
                have = self.get(tenant).version
                for rec in records:  # newest first; a damaged or pruned one falls back to the next
                    if rec.version <= have or rec.path is None:
                        break
                    try:
                        tensors = read_adapter(Path(rec.path))
                    except (OSError, ValueError, KeyError):
                        continue
                    self._live[tenant] = LiveAdapter(rec.version, tensors, time.time())
                    changed.append((tenant, rec.version))
                    break
        return changed

"""Every tenant's live adapter version in the server's memory, swapped in between requests.

The learning worker (loop/tenants.py) writes each tenant's versions into its checkpoint ring under
`<store>/adapters/<tenant>/` and records the live ones in the experience store. `AdapterBank` holds
per tenant the newest live version that verifies on disk (the initial adapter for a tenant without
one). The server's watcher thread calls `refresh()`: it reads the live versions from the store,
checks each checkpoint against its manifest and loads it off the request path; the bank's entry is
then replaced in one assignment, so a request sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from lifelong.errors import CheckpointError
from lifelong.guard.checkpoints import ADAPTER_FILE, CheckpointRing
from lifelong.memory.store import ExperienceStore
from lifelong.model.adapters import Adapter


@dataclass(frozen=True)
class LiveAdapter:
    version: int
    tensors: Adapter
    loaded: float  # when this process loaded it


def read_adapter(folder: Path) -> Adapter:
    """The adapter tensors of a checkpoint folder, after verifying it against its manifest."""
    CheckpointRing(folder.parent).verify(folder)
    return load_file(folder / ADAPTER_FILE)


class AdapterBank:
    def __init__(self, store: ExperienceStore, initial: Adapter, folder: Path) -> None:
        self.store = store
        self.folder = folder  # the adapters folder the records' paths are relative to
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
                        tensors = read_adapter(self.folder / rec.path)  # an absolute path stays as it is
                    except (OSError, CheckpointError):
                        continue
                    self._live[tenant] = LiveAdapter(rec.version, tensors, time.time())
                    changed.append((tenant, rec.version))
                    break
        return changed

"""A ring of adapter checkpoints, each written atomically and verified on load.

A checkpoint is a folder `step-000042/` holding the learning unit's weights (model/adapters.py;
LoRA in peft's format, so `PeftModel.from_pretrained` can load it too), the optimizer state, the
runtime state and a manifest with the SHA-256 of every file. It is written under a temporary name,
fsynced and renamed into place, so a crash never leaves a half-written checkpoint that looks
whole. Only the newest `keep` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lifelong.errors import CheckpointError
from lifelong.model.adapters import adapter_state, load_adapter
from lifelong.model.policy import Policy, Unit

ADAPTER_FILE = "adapter_model.safetensors"
_OPTIMIZER = "optimizer.pt"
_STATE = "state.json"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rows_sparse(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with each mostly-zero matrix kept as its nonzero rows (a memory
    unit's Adam moments: 65,536 rows of which a run touches a few thousand, 300 MB dense)."""
    per_param = {
        key: {
            name: t.to_sparse(1) if t.dim() == 2 and int(t.abs().sum(-1).count_nonzero()) < t.shape[0] // 2 else t
            for name, t in entry.items()
        }
        for key, entry in state["state"].items()
    }
    return {**state, "state": per_param}


def _rows_dense(state: dict[str, Any]) -> dict[str, Any]:
    per_param = {
        key: {name: t.to_dense() if isinstance(t, torch.Tensor) and t.is_sparse else t for name, t in entry.items()}
        for key, entry in state["state"].items()
    }
    return {**state, "state": per_param}


class CheckpointRing:
    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.folder = Path(folder)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary folders are ignored)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("step-*") if p.is_dir())

    def save(self, policy: Policy, optimizer: torch.optim.Optimizer | None, step: int, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"step-{step:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder))
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state(policy).items()}
            save_file(tensors, tmp / ADAPTER_FILE)
            if policy.unit is Unit.LORA:
                policy.model.peft_config["default"].save_pretrained(str(tmp))
            if optimizer is not None:
                torch.save(_rows_sparse(optimizer.state_dict()), tmp / _OPTIMIZER)
            (tmp / _STATE).write_text(json.dumps({**state, "step": step}, indent=1))
            manifest = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            if target.exists():  # re-saving a step (e.g. after a resume) replaces it
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        good = self.latest_good_path()
        for old in self.paths()[: -self.keep]:
            if old != good:  # the newest good checkpoint is what a rollback needs: never prune it
                shutil.rmtree(old, ignore_errors=True)
        return target

    def discard_after(self, step: int) -> list[Path]:
        """Remove checkpoints of steps after `step` (work a crash left unrecorded); returns them."""
        gone = [p for p in self.paths() if int(p.name.removeprefix("step-")) > step]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone

    def verify(self, path: Path) -> None:
        """Raise CheckpointError if a file is missing or its hash does not match the manifest."""
        manifest_path = path / _MANIFEST
        fix = f"delete {path} to resume from an earlier checkpoint, or start a new run without --resume"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is corrupt: unreadable manifest ({exc})", fix) from exc
        for name, digest in manifest.items():
            file = path / name
            if not file.is_file() or _sha256(file) != digest:
                raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing or damaged", fix)

    def latest(self) -> Checkpoint | None:
        paths = self.paths()
        return self.load(paths[-1]) if paths else None

    def latest_good_path(self) -> Path | None:
        """The newest checkpoint whose state says `good` (passed the update gate)."""
        for path in reversed(self.paths()):
            try:
                if json.loads((path / _STATE).read_text()).get("good"):
                    return path
            except (OSError, ValueError):
                continue
        return None

    def latest_good(self) -> Checkpoint | None:
        path = self.latest_good_path()
        return self.load(path) if path else None

    def load(self, path: Path) -> Checkpoint:
        """A checkpoint folder, verified against its manifest."""
        self.verify(path)
        state = json.loads((path / _STATE).read_text())
        return Checkpoint(path, int(state["step"]), state)

    def restore(self, checkpoint: Checkpoint, policy: Policy, optimizer: torch.optim.Optimizer | None) -> None:
        """Load the unit's weights (and optimizer state) from a verified checkpoint into the policy."""
        self.verify(checkpoint.path)
        try:
            load_adapter(policy, load_file(checkpoint.path / ADAPTER_FILE))
            if optimizer is not None and (checkpoint.path / _OPTIMIZER).is_file():
                saved = torch.load(checkpoint.path / _OPTIMIZER, weights_only=True)
                optimizer.load_state_dict(_rows_dense(saved))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {checkpoint.path} does not fit this model ({str(exc)[:120]})",
                "resume with the same --model, --unit and unit settings the run was started with",
            ) from exc

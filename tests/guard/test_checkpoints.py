from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lifelong.errors import CheckpointError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.model.policy import Policy


def _perturb(policy: Policy, value: float) -> None:
    with torch.no_grad():
        for p in policy.model.parameters():
            if p.requires_grad:
                p.fill_(value)


def _adapter_values(policy: Policy) -> list[float]:
    return [float(p.detach().flatten()[0]) for p in policy.model.parameters() if p.requires_grad]


def test_save_restore_roundtrip(tiny_policy: Policy, tmp_path: Path) -> None:
    ring = CheckpointRing(tmp_path, keep=2)
    _perturb(tiny_policy, 0.5)
    ring.save(tiny_policy, None, 3, {"note": "x"})
    _perturb(tiny_policy, -1.0)
    latest = ring.latest()
    assert latest is not None and latest.step == 3 and latest.state["note"] == "x"
    ring.restore(latest, tiny_policy, None)
    assert set(_adapter_values(tiny_policy)) == {0.5}


def test_ring_keeps_the_newest(tiny_policy: Policy, tmp_path: Path) -> None:
    ring = CheckpointRing(tmp_path, keep=2)
    for step in range(1, 5):
        ring.save(tiny_policy, None, step, {})
    assert [p.name for p in ring.paths()] == ["step-000003", "step-000004"]


def test_optimizer_state_is_restored(tiny_policy: Policy, tmp_path: Path) -> None:
    params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    ring = CheckpointRing(tmp_path)
    ring.save(tiny_policy, opt, 1, {})
    fresh = torch.optim.AdamW(params, lr=0.1)
    ring.restore(ring.latest(), tiny_policy, fresh)  # type: ignore[arg-type]
    assert fresh.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_corruption_is_detected_with_a_fix(tiny_policy: Policy, tmp_path: Path) -> None:
    ring = CheckpointRing(tmp_path)
    path = ring.save(tiny_policy, None, 1, {})
    data = bytearray((path / "adapter_model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        ring.latest()
    assert "delete" in err.value.fix


def test_a_crash_mid_save_leaves_no_checkpoint(
    tiny_policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = CheckpointRing(tmp_path)
    ring.save(tiny_policy, None, 1, {})

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ring.save(tiny_policy, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 2, {})
    assert [p.name for p in ring.paths()] == ["step-000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

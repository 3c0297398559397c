from __future__ import annotations

import torch

from lifelong.guard.health import AdapterSnapshot, trainable
from lifelong.model.policy import Policy


def _weights(policy: Policy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainable(policy)]


def test_a_snapshot_undoes_an_update_and_lends_its_weights_for_a_block(tiny_policy: Policy) -> None:
    snapshot = AdapterSnapshot(tiny_policy)
    before = _weights(tiny_policy)
    with torch.no_grad():
        for p in trainable(tiny_policy):
            p.add_(0.5)
    after = _weights(tiny_policy)
    assert snapshot.distance(tiny_policy) > 0

    with snapshot.loaded(tiny_policy):  # the earlier weights inside, the live ones back afterwards
        assert all(torch.equal(p, b) for p, b in zip(trainable(tiny_policy), before, strict=True))
    assert all(torch.equal(p, a) for p, a in zip(trainable(tiny_policy), after, strict=True))

    snapshot.restore(tiny_policy)
    assert snapshot.distance(tiny_policy) == 0.0

from __future__ import annotations

import math

from lifelong.guard.detectors import (
    EntropyBounds,
    KLDriftGuard,
    NonFiniteCheck,
    ProbeRegression,
    Rescored,
    RewardConsistency,
    RewardSaturation,
    UpdateSizeSpike,
)
from lifelong.types import Completion, Episode, StopReason, Turn


def test_non_finite_metrics_or_weights_reject() -> None:
    check = NonFiniteCheck()
    assert check.check({"loss/policy": 0.1}, 0) is None
    assert check.check({"loss/policy": math.nan}, 0).reject  # type: ignore[union-attr]
    assert check.check({"loss/policy": 0.1}, 3).evidence["nonfinite_params"] == 3  # type: ignore[union-attr]


def test_update_spike_needs_warmup_and_ignores_rejected_sizes() -> None:
    spike = UpdateSizeSpike(factor=10, warmup=3)
    assert spike.check(50.0) is None  # no baseline yet: warm-up
    spike = UpdateSizeSpike(factor=10, warmup=3)
    for size in (1.0, 1.2, 0.9):
        assert spike.check(size) is None
    found = spike.check(50.0)
    assert found is not None and found.reject and "x the recent median" in found.message
    assert 50.0 not in spike.history  # a rejected update does not raise the baseline
    assert spike.check(1.1) is None
    assert spike.check(math.inf) is not None


def test_entropy_collapse_is_absolute_explosion_is_relative() -> None:
    bounds = EntropyBounds(low=0.01, margin=2.0)
    assert bounds.check(0.001, "batch").reject  # type: ignore[union-attr]
    assert bounds.check(10.8, "probes") is None  # no reference: a random model is not "exploded"
    assert bounds.check(10.8, "probes", reference=10.79) is None
    assert bounds.check(5.0, "probes", reference=1.5) is not None
    assert bounds.check(math.nan, "batch") is not None


def test_kl_drift_budget() -> None:
    guard = KLDriftGuard(budget=0.5)
    assert guard.check(0.2) is None
    assert guard.check(0.8).reject  # type: ignore[union-attr]
    assert guard.check(math.nan) is not None


def test_probe_regression_names_the_worst_task() -> None:
    check = ProbeRegression(budget=0.1)
    assert check.check({"a": 0.55, "b": 0.9}, {"a": 0.6, "b": 0.9}) is None  # within budget
    found = check.check({"a": 0.3, "b": 0.7}, {"a": 0.6, "b": 0.9})
    assert found is not None and found.message.startswith("a fell 30.0 pts")
    assert check.check({"new": 0.0}, {}) is None  # no reference yet


def test_a_probe_drop_stands_only_if_fresh_items_confirm_it() -> None:
    check = ProbeRegression(budget=0.1)
    found = check.check({"a": 0.5}, {"a": 0.65625})  # 5 of 32 probe items lost: 15.6 points
    assert found is not None and found.reject
    # no drop on 64 fresh items: (32 * 0.15625 + 64 * 0) / 96 = 5.2 points over all 96 items
    kept = check.confirm(found, lambda task: Rescored(now=0.5, reference=0.5, items=64), probe_items=32)
    assert not kept.reject
    assert "15.6 pts below the last good version on the probes but 5.2 over 96 items" in kept.message
    # 8 of 64 fresh items lost too: (5 + 8) / 96 = 13.5 points
    stands = check.confirm(found, lambda task: Rescored(now=0.375, reference=0.5, items=64), probe_items=32)
    assert stands.reject and stands.message.startswith("a fell 13.5 pts below the last good version over 96 items")
    assert stands.evidence["pooled_drops"] == {"a": 13 / 96} and stands.evidence["drops"] == found.evidence["drops"]
    # nothing more to score: the probes decide alone
    assert check.confirm(found, lambda task: Rescored(0.0, 0.0, 0), probe_items=32) is found


def _ep(group: str, answer: str, reward: float) -> Episode:
    c = Completion((1,), (0.0,), (1,), "", answer, StopReason.ANSWERED)
    return Episode(f"{group}{answer}{reward}", "t", 0, (Turn((1,), c, "q", reward),), reward, reward > 0, {}, 0, group)


def test_reward_consistency_drops_groups_that_score_one_answer_two_ways() -> None:
    episodes = [_ep("g1", "12", 1.0), _ep("g1", "12", 0.0), _ep("g2", "12", 1.0), _ep("g2", "13", 0.0)]
    kept, finding = RewardConsistency().screen(episodes)
    assert [e.group for e in kept] == ["g2", "g2"]
    assert finding is not None and finding.evidence["groups"] == ["g1"] and not finding.reject


def test_reward_saturation_needs_a_full_window_and_a_gap() -> None:
    sat = RewardSaturation(window=3, level=0.97, gap=0.35)
    assert sat.check("t", 1.0, 0.2) is None
    assert sat.check("t", 1.0, 0.2) is None
    found = sat.check("t", 1.0, 0.2)
    assert found is not None and "quarantined" in found.message
    honest = RewardSaturation(window=2)
    honest.check("t", 1.0, 0.9)
    assert honest.check("t", 1.0, 0.9) is None  # probes agree: a mastered task, not a hack

"""The answer-likelihood detector (the serving gate's check, now one detector of the guard)."""

from __future__ import annotations

import math

from lifelong.guard.detectors import AnswerLikelihoodDrop


def test_a_drop_below_the_better_of_last_good_and_pretrained_rejects() -> None:
    check = AnswerLikelihoodDrop(budget=0.3)
    assert check.check({"holdout": -1.2}, {"holdout": -1.0}, {"holdout": -1.5}) is None  # within budget
    found = check.check({"holdout": -1.4, "operator": -0.75}, {"holdout": -1.0}, {"holdout": -1.5, "operator": -0.4})
    assert found is not None and found.reject and found.detector == "answer_likelihood"
    assert found.message.startswith("holdout answers fell to -1.400")
    assert "operator answers fell to -0.750" in found.message  # every group that fell, the worst first
    # the pretrained model is the better reference here: a slow slide below it is caught too
    assert check.check({"g": -1.35}, {"g": -1.3}, {"g": -1.0}) is not None


def test_non_finite_scores_fall_and_groups_without_a_reference_pass() -> None:
    check = AnswerLikelihoodDrop(budget=0.3)
    assert check.check({"g": math.nan}, {"g": -1.0}, {}) is not None
    assert check.check({"new": -9.0}, {}, {}) is None  # nothing to compare with yet

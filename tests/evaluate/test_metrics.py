"""Metrics against matrices computed by hand."""

from __future__ import annotations

import pytest

from lifelong.evaluate.metrics import (
    acc,
    bwt,
    cl_metrics,
    forgetting,
    forgetting_avalanche,
    fwt,
    learning_accuracy,
    online_accuracy,
    plasticity,
)

# base row, then after stages 1..3; columns are the tasks of stages 1..3
R = [
    [0.1, 0.2, 0.0],
    [0.8, 0.3, 0.1],
    [0.6, 0.9, 0.2],
    [0.5, 0.7, 0.9],
]


def test_acc_is_the_mean_of_the_last_row() -> None:
    assert acc(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_bwt() -> None:
    # (R[3,1] - R[1,1] + R[3,2] - R[2,2]) / 2 = ((0.5 - 0.8) + (0.7 - 0.9)) / 2
    assert bwt(R) == pytest.approx(-0.25)


def test_fwt() -> None:
    # (R[1,2] - b2 + R[2,3] - b3) / 2 = ((0.3 - 0.2) + (0.2 - 0.0)) / 2
    assert fwt(R) == pytest.approx(0.15)


def test_forgetting_variants_differ_when_the_peak_is_not_at_training_time() -> None:
    peaked = [
        [0.0, 0.0, 0.0],
        [0.5, 0.0, 0.0],
        [0.9, 0.6, 0.0],  # task 1 keeps improving after its own stage
        [0.4, 0.6, 0.8],
    ]
    # max variant: ((0.9 - 0.4) + (0.6 - 0.6)) / 2; Avalanche's: ((0.5 - 0.4) + (0.6 - 0.6)) / 2
    assert forgetting(peaked) == pytest.approx(0.25)
    assert forgetting_avalanche(peaked) == pytest.approx(0.05)
    assert forgetting_avalanche(R) == pytest.approx(-bwt(R))


def test_learning_accuracy_and_plasticity() -> None:
    assert learning_accuracy(R) == pytest.approx((0.8 + 0.9 + 0.9) / 3)
    # gains while training: (0.8 - 0.1) + (0.9 - 0.3) + (0.9 - 0.2)
    assert plasticity(R) == pytest.approx((0.7 + 0.6 + 0.7) / 3)


def test_single_stage_has_no_backward_terms() -> None:
    one = [[0.2], [0.6]]
    m = cl_metrics(one)
    assert (m.ACC, m.BWT, m.FWT, m.forgetting) == (pytest.approx(0.6), 0.0, 0.0, 0.0)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="base row"):
        acc([[0.1]])
    with pytest.raises(ValueError, match="T = 2"):
        acc([[0.1, 0.2], [0.3], [0.4, 0.5]])


def test_online_accuracy() -> None:
    assert online_accuracy([True, False, True, True]) == 0.75
    assert online_accuracy([]) == 0.0

"""Continual-learning metrics over the accuracy matrix.

`R[t][j]` is the held-out score on the task of stage j after training stage t, for t = 1..T; row 0
is the model before any learning, so `R[0][j]` = b_j, the base score. Indices below are 1-based
like the papers; the arrays are 0-based with the base row first.

  ACC  = mean_j R[T,j]                                   (Lopez-Paz & Ranzato 2017)
  BWT  = mean_{j<T} (R[T,j] - R[j,j])                    (Lopez-Paz & Ranzato 2017)
  FWT  = mean_{j>=2} (R[j-1,j] - b_j)                    (Lopez-Paz & Ranzato 2017)
  forgetting (max)   F_T = mean_{j<T} (max_{l<T} R[l,j] - R[T,j])   (Chaudhry et al. 2018; Mammoth)
  forgetting (last)  mean_{j<T} (R[j,j] - R[T,j])        (Avalanche's ExperienceForgetting; = -BWT)
  learning accuracy  LA = mean_j R[j,j]                  (Riemer et al. 2019)
  plasticity         mean_j (R[j,j] - R[j-1,j])          (gain while training on j)
  online accuracy    mean over training items of success *before* learning from them

Libraries disagree on names: Avalanche's "forgetting" is the last-minus-trained variant, Mammoth's
is the max variant; both are reported, named explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CLMetrics:
    ACC: float
    BWT: float
    FWT: float
    forgetting: float  # the max variant (Chaudhry / Mammoth)
    forgetting_avalanche: float  # the last-minus-trained variant
    learning_accuracy: float
    plasticity: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check(R: Sequence[Sequence[float]]) -> int:
    T = len(R) - 1
    if T < 1:
        raise ValueError("R needs the base row and at least one stage row")
    if any(len(row) != T for row in R):
        raise ValueError(f"R must be (T+1) x T with T = {T} stages; got rows of lengths {[len(r) for r in R]}")
    return T


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def acc(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    return _mean([R[T][j] for j in range(T)])


def bwt(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    # stage j (1-based) is row j and column j-1
    return _mean([R[T][j - 1] - R[j][j - 1] for j in range(1, T)])


def fwt(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    # task j's column is j-1; after stage j-1 is row j-1; its base score is row 0
    return _mean([R[j - 1][j - 1] - R[0][j - 1] for j in range(2, T + 1)])


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """Max variant: how far each earlier task fell from its best score before the last stage."""
    T = _check(R)
    return _mean([max(R[s][j - 1] for s in range(1, T)) - R[T][j - 1] for j in range(1, T)])


def forgetting_avalanche(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    return _mean([R[j][j - 1] - R[T][j - 1] for j in range(1, T)])


def learning_accuracy(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    return _mean([R[j][j - 1] for j in range(1, T + 1)])


def plasticity(R: Sequence[Sequence[float]]) -> float:
    T = _check(R)
    return _mean([R[j][j - 1] - R[j - 1][j - 1] for j in range(1, T + 1)])


def online_accuracy(successes: Sequence[bool | float]) -> float:
    """Success of each training item at the moment it was met, before any update from it."""
    return _mean([float(s) for s in successes])


def cl_metrics(R: Sequence[Sequence[float]]) -> CLMetrics:
    return CLMetrics(
        ACC=acc(R),
        BWT=bwt(R),
        FWT=fwt(R),
        forgetting=forgetting(R),
        forgetting_avalanche=forgetting_avalanche(R),
        learning_accuracy=learning_accuracy(R),
        plasticity=plasticity(R),
    )

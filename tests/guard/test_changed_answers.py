"""The changed-answers check: how many general prompts' greedy answers (first words) differ from the
pretrained model's, and how many it got right are wrong now, each held to a share
(`GuardConfig.general_changed_budget`, `general_lost_budget`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.errors import ConfigError
from lifelong.guard.detectors import ChangedAnswers, GeneralAnswersChanged
from lifelong.guard.gate import Guard, GuardConfig
from lifelong.loop.tenants import TenantLearningConfig, first_word
from lifelong.model.policy import Policy


def test_an_answer_is_its_first_word_lower_cased_without_punctuation() -> None:
    assert first_word("  Paris. It is the capital") == "paris"
    assert first_word("“Blue”, of course") == "blue"
    assert first_word("") == first_word("   ") == ""


def test_changed_answers_count_the_prompts_whose_answer_differs() -> None:
    reading = ChangedAnswers.between(["paris", "blue", "", "4"], ["paris", "red", "yes", "4"], examples=1)
    assert (reading.changed, reading.asked, reading.examples) == (2, 4, (("blue", "red"),))
    assert reading.share == 0.5
    with pytest.raises(ValueError):  # answers of other prompts: a caller's bug, not a reading
        ChangedAnswers.between(["a"], ["a", "b"])
    assert reading.lost == 0  # right and wrong not given: nothing counts as lost


def test_a_lost_answer_is_one_that_was_right_and_is_wrong_now() -> None:
    before, now = ["paris", "the", "44", "repeat"], ["paris", "a", "444", "milk"]
    right_before, right_now = [True, False, True, False], [True, False, False, True]
    reading = ChangedAnswers.between(before, now, right_before=right_before, right_now=right_now)
    assert (reading.changed, reading.lost, reading.asked) == (3, 1, 4)  # 'the' -> 'a' was wrong either way
    assert reading.examples[0] == ("44", "444")  # the lost answer is shown first


def test_lost_answers_over_their_budget_reject_even_when_few_changed() -> None:
    check = GeneralAnswersChanged(budget=0.08, lost_budget=0.02)
    assert check.check(ChangedAnswers(10, 128, lost=2)) is None  # 10 changed, 2 lost: within both
    lost = check.check(ChangedAnswers(3, 128, (("44", "444"),), lost=3))
    assert lost is not None and lost.reject
    assert lost.message.startswith("3 of 128 general answers the pretrained model got right are wrong now")
    assert "budget 0.02: 2 of 128" in lost.message and lost.evidence["lost"] == 3
    wide = check.check(ChangedAnswers(11, 128, lost=0))
    assert wide is not None and wide.message.startswith("11 of 128 general answers changed")


def test_changes_over_the_budget_reject_and_the_message_names_the_counts() -> None:
    check = GeneralAnswersChanged(budget=0.03)
    assert check.check(ChangedAnswers(3, 128)) is None  # 3 of 128 is within 0.03
    found = check.check(ChangedAnswers(4, 128, (("paris", "lyon"),)))
    assert found is not None and found.reject and found.detector == "general_changed"
    assert found.message.startswith("4 of 128 general answers changed from the pretrained model's")
    assert "budget 0.03: 3 of 128" in found.message and "'paris' -> 'lyon'" in found.message
    assert found.evidence["changed"] == 4 and found.evidence["asked"] == 128
    assert GeneralAnswersChanged(budget=0.0).check(ChangedAnswers(1, 128)) is not None  # 0: no change at all
    assert GeneralAnswersChanged(budget=1.0).check(ChangedAnswers(128, 128)) is None  # 1: off


def test_nothing_measured_or_nothing_asked_passes() -> None:
    check = GeneralAnswersChanged(budget=0.0)
    assert check.check(None) is None  # the run path does not count changed answers
    empty = ChangedAnswers(0, 0)
    assert check.check(empty) is None and empty.share != empty.share  # no prompts: share NaN, no finding


def test_the_budget_is_a_share() -> None:
    for bad in (-0.01, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="general_changed_budget must be a share in"):
            GuardConfig(general_changed_budget=bad)
    with pytest.raises(ConfigError, match="general_changed_budget"):
        TenantLearningConfig.from_dict({"guard": {"general_changed_budget": 3}})  # a count is not a share
    with pytest.raises(ConfigError, match="general_lost_budget must be a share in"):
        GuardConfig(general_lost_budget=2.0)
    assert (GuardConfig().general_changed_budget, GuardConfig().general_lost_budget) == (0.08, 0.02)


def test_the_gate_rejects_changed_answers_and_logs_them(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = Guard(
        GuardConfig(general_changed_budget=0.1, general_lost_budget=0.0), tmp_path, [tiny_policy.start("probe")]
    )
    guard.mark_good(tiny_policy, {"t": 0.5})
    assert guard.gate(1, tiny_policy, {"t": 0.5}, guarded=["t"]).keep  # not measured: the run path
    assert guard.gate(2, tiny_policy, {"t": 0.5}, guarded=["t"], changed=ChangedAnswers(1, 10)).keep
    verdict = guard.gate(3, tiny_policy, {"t": 0.5}, guarded=["t"], changed=ChangedAnswers(2, 10))
    assert not verdict.keep and verdict.reason.startswith("2 of 10 general answers changed")
    (event,) = [json.loads(line) for line in (tmp_path / "guard_events.jsonl").read_text().splitlines()]
    assert event["detector"] == "general_changed"
    assert event["general_changed"] == {"changed": 2, "lost": 0, "asked": 10}
    lost = guard.gate(4, tiny_policy, {"t": 0.5}, guarded=["t"], changed=ChangedAnswers(1, 10, lost=1))
    assert not lost.keep and "right are wrong now" in lost.reason

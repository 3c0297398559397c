"""Serving's reasoning summary is short and never carries the chain (the monitor's own tests are
in tests/guard/test_monitor.py)."""

from __future__ import annotations

from lifelong.serve.monitor import summarize_reasoning


def test_a_summary_is_short_and_not_the_chain() -> None:
    chain = "First I list the options. " * 20 + "So the answer is blue."
    s = summarize_reasoning(chain, 120, 128, cut=False)
    assert s.startswith("Reasoned for 120 tokens (budget 128).") and s.endswith("So the answer is blue.")
    assert len(s) < 260 and chain not in s
    assert "cut at the budget" in summarize_reasoning("x " * 500, 32, 32, cut=True)
    assert summarize_reasoning("", 0, 0, cut=False) == "Answered without reasoning."

from __future__ import annotations

import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.model.policy import ANSWER_MARKER, EFFORT_BUDGETS, GenerationConfig, Policy
from lifelong.types import StopReason


def test_reasoning_budget_bounds_thinking_and_forces_an_answer(tiny_policy: Policy) -> None:
    ctx = [tiny_policy.start("What is 1 + 1?")] * 3
    gen = GenerationConfig(thinking_tokens=5, answer_tokens=4, temperature=1.0)
    for c in tiny_policy.respond(ctx, gen, torch.Generator().manual_seed(0)):
        # a random model never writes the marker itself: reasoning is cut at the budget
        assert c.stop in (StopReason.THINK_BUDGET, StopReason.ENDED_WITHOUT_ANSWER, StopReason.ANSWER_BUDGET)
        forced = [i for i, m in enumerate(c.loss_mask) if m == 0]
        assert forced, "the answer marker must be inserted"
        assert forced[0] <= 5  # at most the budget of sampled thinking tokens before the marker
        marker_text = tiny_policy.tokenizer.decode([c.token_ids[i] for i in forced])
        assert ANSWER_MARKER in marker_text
        assert all(c.logprobs[i] == 0.0 for i in forced)
        assert len(c.token_ids) - forced[-1] - 1 <= 4  # answer within its budget


def test_zero_budget_answers_directly(tiny_policy: Policy) -> None:
    c = tiny_policy.respond([tiny_policy.start("Say hi")], GenerationConfig(thinking_tokens=0, answer_tokens=3))[0]
    assert c.reasoning == ""
    assert c.loss_mask[: len(tiny_policy._bare_marker_ids)] == (0,) * len(tiny_policy._bare_marker_ids)


def test_effort_sets_the_budget_and_bad_values_are_refused() -> None:
    assert GenerationConfig(reasoning_effort="medium").think_budget == EFFORT_BUDGETS["medium"]
    assert GenerationConfig(reasoning_effort="high", thinking_tokens=7).think_budget == 7
    with pytest.raises(ConfigError, match="reasoning_effort"):
        GenerationConfig(reasoning_effort="extreme")
    with pytest.raises(ConfigError):
        GenerationConfig(temperature=-1)


def test_extend_keeps_the_whole_previous_reply(tiny_policy: Policy) -> None:
    ctx = tiny_policy.start("first question")
    c = tiny_policy.respond([ctx], GenerationConfig(thinking_tokens=4, answer_tokens=3))[0]
    nxt = tiny_policy.extend(ctx, c, "second observation")
    assert nxt[: len(ctx) + len(c.token_ids)] == ctx + list(c.token_ids)
    text = tiny_policy.tokenizer.decode(nxt[len(ctx) + len(c.token_ids) :])
    assert "second observation" in text and text.rstrip().endswith("assistant")


def test_reasoning_tokens_are_never_targets(tiny_policy: Policy) -> None:
    """The answer mask (what distillation and the anchor train on) excludes the chain of thought."""
    c = tiny_policy.respond([tiny_policy.start("q")], GenerationConfig(thinking_tokens=4, answer_tokens=2))[0]
    mask = tiny_policy.answer_mask(c)
    start = tiny_policy.answer_start(c)
    assert not any(mask[:start]) and any(mask[start:])

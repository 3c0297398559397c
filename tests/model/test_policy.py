from __future__ import annotations

from dataclasses import replace

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


# ---- the run path, pinned --------------------------------------------------------------------------
# Computed with the code before plain chat and sampling options existed (tiny model, seed 0 weights),
# and again when the sampler's draw changed from torch.multinomial to one uniform per row (stop 24;
# test_sampler.py checks that draw's frequencies): the run path must give these tokens, masks, stop
# reasons and texts bit for bit.
RUN_PATH_PINNED = {
    "think5_t1": (
        GenerationConfig(thinking_tokens=5, answer_tokens=4, temperature=1.0),
        0,
        [
            ([47687, 22577, 31708, 8769, 28576, 198, 21350, 42, 23676, 20031, 32658, 10325], 5,
             "answer_budget", "lington hell SCI representative", "STRUCT </bps exceedchu", -97.4359),
            ([34792, 45251, 38887, 17248, 14170, 198, 21350, 42, 21643, 10093, 38571, 33255], 5,
             "answer_budget", "electrodes ionYP disclosed", "estim reincarnation\ufffd\ufffd deaf Ball", -98.0773),
        ],
    ),
    "none_t1": (
        GenerationConfig("none", answer_tokens=4, temperature=1.0),
        1,
        [
            ([21350, 42, 3011, 11494, 27352, 22646], 0, "answer_budget", "amples dinner impurities <<", "", -42.5582),
            ([21350, 42, 11036, 8736, 5371, 34839], 0, "answer_budget", "Cell Author completedGW", "", -42.8985),
        ],
    ),
    "think3_t07": (
        GenerationConfig(thinking_tokens=3, answer_tokens=3, temperature=0.7),
        3,
        [
            ([1669, 38013, 37124, 198, 21350, 42, 9178, 21934, 47687], 3, "answer_budget",
             "addiction reluctantSTRUCT", "fri prioritizing tonic", -64.9656),
            ([14068, 8587, 29915, 198, 21350, 42, 29199, 16809, 4286], 3, "answer_budget",
             "formatted padding regions", "secularpeutic Glac", -65.4141),
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RUN_PATH_PINNED))
def test_run_path_respond_is_unchanged(tiny_policy: Policy, case: str) -> None:
    gen, seed, expected = RUN_PATH_PINNED[case]
    ctx = [tiny_policy.start("What is 1 + 1?"), tiny_policy.start("Name a color.")]
    got = tiny_policy.respond(ctx, gen, torch.Generator().manual_seed(seed))
    for c, (ids, thought, stop, answer, reasoning, logprob) in zip(got, expected, strict=True):
        assert list(c.token_ids) == ids
        marker = 3 if thought else 2  # "\nAnswer:" after reasoning, "Answer:" opening the reply
        assert list(c.loss_mask) == [1] * thought + [0] * marker + [1] * (len(ids) - thought - marker)
        assert (c.stop.value, c.answer, c.reasoning) == (stop, answer, reasoning)
        assert sum(c.logprobs) == pytest.approx(logprob, abs=1e-3)


# ---- plain chat ------------------------------------------------------------------------------------
PLAIN = GenerationConfig(protocol=False, answer_tokens=8, temperature=0.0)


def chat_ids(policy: Policy, text: str) -> list[int]:
    ids = policy.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids if isinstance(ids, list) else ids["input_ids"])  # type: ignore[arg-type,index]


def test_plain_chat_has_no_marker_and_every_token_is_a_target(tiny_policy: Policy) -> None:
    c = tiny_policy.chat([chat_ids(tiny_policy, "Say hi")], PLAIN)[0]
    assert len(c.token_ids) == 8 and c.stop == StopReason.ANSWER_BUDGET  # a random model never ends its turn
    assert c.loss_mask == (1,) * 8 and c.reasoning == ""
    assert c.answer == tiny_policy.tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
    assert ANSWER_MARKER not in c.answer and all(lp <= 0 for lp in c.logprobs)
    # a learner may learn from all of it
    assert tiny_policy.answer_start(c) == 0 and tiny_policy.answer_mask(c) == c.loss_mask
    # respond with protocol=False is the same thing
    assert tiny_policy.respond([chat_ids(tiny_policy, "Say hi")], PLAIN)[0] == c


def test_plain_chat_ends_at_end_of_turn(tiny_policy: Policy) -> None:
    ctx, gen = chat_ids(tiny_policy, "Say hi"), replace(PLAIN, temperature=1.0)
    third = tiny_policy.chat([ctx], gen, torch.Generator().manual_seed(0))[0].token_ids[2]
    tiny_policy.eos_ids.add(third)  # pretend the third token ends the turn
    c = tiny_policy.chat([ctx], gen, torch.Generator().manual_seed(0))[0]
    assert len(c.token_ids) == 3 and c.stop == StopReason.ANSWERED


def test_a_stop_string_cuts_the_answer(tiny_policy: Policy) -> None:
    ctx, gen = [chat_ids(tiny_policy, "Say hi")], replace(PLAIN, temperature=1.0)
    whole = tiny_policy.chat(ctx, gen, torch.Generator().manual_seed(0))[0].answer
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    c = tiny_policy.chat(ctx, replace(gen, stop=("never there", stop)), torch.Generator().manual_seed(0))[0]
    assert c.answer == whole[: whole.index(stop)] and c.stop == StopReason.ANSWERED
    # the protocol's answer line is cut the same way (the pinned none_t1 case answers "amples dinner ...")
    proto = GenerationConfig("none", answer_tokens=4, temperature=1.0, stop=("dinner",))
    questions = [tiny_policy.start("What is 1 + 1?"), tiny_policy.start("Name a color.")]
    c = tiny_policy.respond(questions, proto, torch.Generator().manual_seed(1))[0]
    assert c.answer == "amples" and c.stop != StopReason.ANSWER_BUDGET  # finished, not cut by the budget


def test_plain_chat_streams_pieces_that_add_up_to_the_answer(tiny_policy: Policy) -> None:
    pieces: dict[int, list[str]] = {0: [], 1: []}
    ctx = [chat_ids(tiny_policy, "Say hi"), chat_ids(tiny_policy, "Name a color")]
    gen = replace(PLAIN, temperature=1.0)
    got = tiny_policy.chat(ctx, gen, torch.Generator().manual_seed(0), on_text=lambda i, p: pieces[i].append(p))
    for i, c in enumerate(got):
        assert len(pieces[i]) > 1 and "".join(pieces[i]) == c.answer
    # streaming changes nothing about what is sampled
    assert tiny_policy.chat(ctx, gen, torch.Generator().manual_seed(0)) == got


def test_streaming_holds_back_what_may_become_a_stop_string(tiny_policy: Policy) -> None:
    ctx = [chat_ids(tiny_policy, "Say hi")]
    whole = tiny_policy.chat(ctx, PLAIN)[0].answer
    stop = whole[len(whole) // 2 :] + "!"  # never completed: its prefixes must still not leak early
    sent: list[str] = []
    c = tiny_policy.chat(ctx, replace(PLAIN, stop=(stop,)), on_text=lambda i, p: sent.append(p))
    assert c[0].answer == whole and "".join(sent) == whole
    assert len("".join(sent[:-1])) <= len(whole) // 2  # the tail came only once the reply ended


def test_new_generation_options_are_checked() -> None:
    for bad in ({"top_p": 1.5}, {"top_k": -1}, {"presence_penalty": 2.5}, {"frequency_penalty": -3.0}, {"stop": ("",)},
                {"memory_contrast": -0.5}):  # fmt: skip
        with pytest.raises(ConfigError):
            GenerationConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", [False, True])
def test_a_bare_prompt_is_contrasted_only_when_asked(tiny_policy: Policy, protocol: bool) -> None:
    with_notes = chat_ids(tiny_policy, "Note: Zorbia's capital is Vudrairk. What is the capital of Zorbia?")
    bare = chat_ids(tiny_policy, "What is the capital of Zorbia?")
    gen = replace(PLAIN, protocol=protocol, thinking_tokens=0)
    plain = tiny_policy.respond([with_notes], gen)[0]
    assert tiny_policy.respond([with_notes], gen, bare=[bare])[0] == plain  # memory_contrast 0: off
    leaning = tiny_policy.respond([with_notes], replace(gen, memory_contrast=1.0), bare=[bare])[0]
    assert leaning.logprobs != plain.logprobs
    assert tiny_policy.respond([with_notes], replace(gen, memory_contrast=1.0), bare=[None])[0] == plain

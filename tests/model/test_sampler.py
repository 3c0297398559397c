from __future__ import annotations

import pytest
import torch

from lifelong.model.sampler import STOP, Contrast, Force, Shaping, draw, left_pad, penalise, positions, sample, truncate


def test_left_pad_aligns_right_and_positions_start_at_zero() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def _greedy(model, contexts, n=6, **kw):
    return sample(model, contexts, max_new_tokens=n, eos_ids=set(), pad_id=2, temperature=0.0, **kw)


def test_greedy_output_does_not_depend_on_batch_neighbours(tiny_model, tokenizer) -> None:
    short = tokenizer.encode("What is 2 + 2?")
    long = tokenizer.encode("A much longer context that forces padding on the short one, surely.")
    alone = _greedy(tiny_model, [short])[0]
    batched = _greedy(tiny_model, [long, short, short])
    assert batched[1].token_ids == alone.token_ids
    assert batched[2].token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(batched[1].logprobs), torch.tensor(alone.logprobs), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_logprobs_are_negative(tiny_model, tokenizer) -> None:
    ctx = [tokenizer.encode("hello")] * 4
    a = sample(tiny_model, ctx, max_new_tokens=5, eos_ids=set(), pad_id=2, generator=torch.Generator().manual_seed(1))
    b = sample(tiny_model, ctx, max_new_tokens=5, eos_ids=set(), pad_id=2, generator=torch.Generator().manual_seed(1))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert len({tuple(r.token_ids) for r in a}) > 1  # rows of one group differ
    assert all(lp <= 0 for r in a for lp in r.logprobs)


def test_control_can_stop_and_force_tokens(tiny_model, tokenizer) -> None:
    ctx = [tokenizer.encode("hi")]

    def force_then_stop(row: int, ids: list[int]) -> Force | str | None:
        return Force((11, 12)) if len(ids) == 1 else STOP

    row = _greedy(tiny_model, ctx, n=10, control=force_then_stop)[0]
    assert row.token_ids[1:3] == [11, 12]
    assert row.forced == [False, True, True, False]
    assert row.logprobs[1:3] == [0.0, 0.0]
    assert row.ended == "stop"


def test_force_can_replace_the_sampled_token(tiny_model, tokenizer) -> None:
    def replace(row: int, ids: list[int]) -> Force | str | None:
        return Force((99,), replace_last=True) if len(ids) == 1 else STOP

    row = _greedy(tiny_model, [tokenizer.encode("hi")], control=replace)[0]
    assert row.token_ids[0] == 99 and row.forced[0]


def test_eos_ends_a_row(tiny_model, tokenizer) -> None:
    ctx = [tokenizer.encode("hi")]
    first = _greedy(tiny_model, ctx, n=1)[0].token_ids[0]
    row = sample(tiny_model, ctx, max_new_tokens=10, eos_ids={first}, pad_id=2, temperature=0.0)[0]
    assert row.token_ids == [first] and row.ended == "eos"


def test_broken_weights_give_text_not_a_crash(tiny_model, tokenizer) -> None:
    with torch.no_grad():
        tiny_model.lm_head.weight[0, 0] = float("nan")
    rows = sample(tiny_model, [tokenizer.encode("hi")] * 2, max_new_tokens=3, eos_ids=set(), pad_id=2)
    assert all(len(r.token_ids) == 3 for r in rows)


def test_default_sampling_is_unchanged(tiny_model, tokenizer) -> None:
    """Pinned when the draw became one uniform per row (stop 24); the default path samples exactly so."""
    rows = sample(tiny_model, [tokenizer.encode("hello")] * 3, max_new_tokens=6, eos_ids=set(), pad_id=2,
                  temperature=0.8, generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert [r.token_ids for r in rows] == [
        [31528, 15502, 28443, 22245, 39396, 16195],
        [12765, 13111, 35382, 17589, 10714, 17373],
        [17739, 41857, 41650, 15974, 5456, 18255],
    ]
    assert [sum(r.logprobs) for r in rows] == pytest.approx([-65.0221, -64.1476, -65.5742], abs=1e-3)


def test_a_draw_follows_the_distribution_and_never_picks_an_impossible_token() -> None:
    probs = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.3, 0.0])
    logp = probs.log().expand(20_000, -1)
    drawn = draw(logp, torch.Generator().manual_seed(0)).flatten()
    freq = torch.bincount(drawn, minlength=6).double() / len(drawn)
    assert freq[probs == 0].sum() == 0
    # binomial standard error at n = 20000 is at most 0.0036: 4 of them
    assert torch.allclose(freq, probs.double(), atol=0.015)
    # a row whose mass sits on its last token, after a flat stretch, still draws it
    assert draw(torch.tensor([[float("-inf")] * 5 + [0.0]]), torch.Generator().manual_seed(1)).item() == 5


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_tokens(tiny_model, tokenizer) -> None:
    ctx = [tokenizer.encode("hello"), tokenizer.encode("What is 2 + 2?")]
    greedy = _greedy(tiny_model, ctx)
    for shaping in (Shaping(top_k=1), Shaping(top_p=1e-6)):
        rows = sample(tiny_model, ctx, max_new_tokens=6, eos_ids=set(), pad_id=2, temperature=1.5,
                      generator=torch.Generator().manual_seed(0), shaping=shaping)  # fmt: skip
        assert [r.token_ids for r in rows] == [r.token_ids for r in greedy]
        # the log-probs are those of the distribution sampled from: one token left, probability 1
        assert all(lp == pytest.approx(0.0, abs=1e-6) for r in rows for lp in r.logprobs)


def test_truncate_keeps_top_k_then_the_top_p_nucleus_renormalised() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = truncate(logp, top_k=3).exp()
    assert kept[0, 3:].tolist() == [0.0, 0.0] and kept.sum().item() == pytest.approx(1.0)
    assert kept[0, 0].item() == pytest.approx(0.5 / 0.85)
    # 0.5 + 0.2 < 0.8, so the third token is needed to reach it
    assert (truncate(logp, top_p=0.8).exp()[0] > 0).tolist() == [True, True, True, False, False]
    assert (truncate(logp, top_p=0.7).exp()[0] > 0).tolist() == [True, True, False, False, False]
    assert (truncate(logp, top_p=0.0).exp()[0] > 0).tolist() == [True, False, False, False, False]


def test_penalties_follow_openai() -> None:
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    out = penalise(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [[0.0, -0.75, -1.25, 0.0]]  # -(0.25 * count + 0.5 * [count > 0])
    assert penalise(logits, counts, presence=-1.0, frequency=0.0).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_penalties_count_the_tokens_each_row_generated(tiny_model, tokenizer) -> None:
    ctx = [tokenizer.encode("hi"), tokenizer.encode("What is 2 + 2?")]
    assert any(len(set(r.token_ids)) < 8 for r in _greedy(tiny_model, ctx, n=8))  # greedy repeats itself
    rows = _greedy(tiny_model, ctx, n=8, shaping=Shaping(presence_penalty=100.0))
    assert all(len(set(r.token_ids)) == 8 for r in rows)  # a huge presence penalty never repeats


def test_on_token_sees_every_kept_token(tiny_model, tokenizer) -> None:
    seen: list[tuple[int, list[int]]] = []
    rows = _greedy(tiny_model, [tokenizer.encode("hi")] * 2, n=4, on_token=lambda r, ids: seen.append((r, list(ids))))
    for r, row in enumerate(rows):
        assert [ids for i, ids in seen if i == r] == [row.token_ids[: k + 1] for k in range(4)]


def _contrasted_reference(model, context, bare, weight, n):
    """Greedy context-aware decoding by full forwards, no cache: the law `Contrast` states."""
    tokens: list[int] = []
    logprobs: list[float] = []
    with torch.no_grad():
        for _ in range(n):
            full = model(input_ids=torch.tensor([context + tokens])).logits[0, -1].float()
            without = model(input_ids=torch.tensor([bare + tokens])).logits[0, -1].float()
            logp = torch.log_softmax((1 + weight) * full - weight * without, dim=-1)
            tokens.append(int(logp.argmax()))
            logprobs.append(float(logp.max()))
    return tokens, logprobs


def test_contrast_decodes_against_the_bare_context(tiny_model, tokenizer) -> None:
    notes = tokenizer.encode("Note: the capital of Zorbia is Vudrairk. ")
    question = tokenizer.encode("What is the capital of Zorbia?")
    other = tokenizer.encode("Say something short.")
    contrast = Contrast((tuple(question), None), weight=1.5)
    rows = _greedy(tiny_model, [notes + question, other], contrast=contrast)
    want, want_logprobs = _contrasted_reference(tiny_model, notes + question, question, 1.5, 6)
    assert rows[0].token_ids == want
    assert torch.allclose(torch.tensor(rows[0].logprobs), torch.tensor(want_logprobs), atol=1e-4)
    assert rows[1].token_ids == _greedy(tiny_model, [other])[0].token_ids  # no bare context: as it was
    plain = _greedy(tiny_model, [notes + question])[0]
    assert rows[0].logprobs != plain.logprobs  # the contrast changed something this test can see
    off = _greedy(tiny_model, [notes + question], contrast=Contrast((tuple(question),), weight=0.0))[0]
    assert (off.token_ids, off.logprobs) == (plain.token_ids, plain.logprobs)


def test_a_row_that_stops_takes_its_twin_along(tiny_model, tokenizer) -> None:
    a, b = tokenizer.encode("first question here"), tokenizer.encode("and a second one")
    contrast = Contrast((tuple(a[1:]), tuple(b[1:])), weight=1.0)

    def stop_row_0(row: int, ids: list[int]) -> str | None:
        return STOP if row == 0 and len(ids) == 2 else None

    rows = _greedy(tiny_model, [a, b], control=stop_row_0, contrast=contrast)
    assert len(rows[0].token_ids) == 2 and rows[0].ended == "stop"
    assert rows[1].token_ids == _contrasted_reference(tiny_model, b, b[1:], 1.0, 6)[0]


def test_contrast_checks_its_input(tiny_model, tokenizer) -> None:
    with pytest.raises(ValueError, match="bare contexts"):
        _greedy(tiny_model, [tokenizer.encode("hi")], contrast=Contrast((None, None), weight=1.0))
    with pytest.raises(ValueError, match=">= 0"):
        Contrast((None,), weight=-1.0)

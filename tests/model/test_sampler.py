from __future__ import annotations

import torch

from lifelong.model.sampler import STOP, Force, left_pad, positions, sample


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

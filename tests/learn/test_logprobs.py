from __future__ import annotations

from typing import Any

import pytest
import torch

from lifelong.learn.logprobs import (
    PretrainedLogSoftmax,
    completion_log_softmax,
    completion_logprobs,
    micro_batches,
    own_positions,
    pretrained_kl,
)
from lifelong.model.adapters import trainable
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Sample


def _samples(policy: Policy, questions: list[str]) -> list[Sample]:
    prompts = [policy.chat_start(q) for q in questions]
    replies = policy.respond(
        prompts, GenerationConfig(answer_tokens=4, protocol=False), torch.Generator().manual_seed(0)
    )
    return [
        Sample(tuple(p), c.token_ids, c.logprobs, tuple(1.0 for _ in c.token_ids), 0.0)
        for p, c in zip(prompts, replies, strict=True)
    ]


def _moved(policy: Policy) -> None:
    with torch.no_grad():
        for p in trainable(policy):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))


def _rows(prompts: list[tuple[int, ...]], completion: int = 1) -> list[Sample]:
    return [Sample(p, (0,) * completion, (0.0,) * completion, (1,) * completion, 0.0) for p in prompts]


def test_micro_batches_keep_a_shared_prompt_together_and_split_only_huge_groups() -> None:
    prompts = [(1,)] * 3 + [(2,)] * 3 + [(3,)] * 9
    assert micro_batches(_rows(prompts), 4) == [slice(0, 6), slice(6, 14), slice(14, 15)]
    assert micro_batches(_rows([(1,), (2,), (3,)]), 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert micro_batches([], 4) == []


def test_micro_batches_end_before_the_token_budget_even_inside_a_group() -> None:
    samples = _rows([(1, 1)] * 4 + [(2, 2)] * 4, completion=3)  # 5 tokens each
    assert micro_batches(samples, 8) == [slice(0, 8)]
    assert micro_batches(samples, 8, max_tokens=20) == [slice(0, 4), slice(4, 8)]
    assert micro_batches(samples, 8, max_tokens=12) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert micro_batches(samples, 8, max_tokens=3) == [slice(i, i + 1) for i in range(8)]  # one row always runs


def test_the_kept_reference_gives_the_anchor_gradient_of_a_fresh_one(tiny_policy: Policy, monkeypatch: Any) -> None:
    """The pretrained side is computed once per sample and reused: the same KL and the same
    gradient as recomputing it, with the adapters moved in between (only they learn)."""
    samples = _samples(tiny_policy, ["What is 2+2?", "Name a colour.", "Say hi."])
    _moved(tiny_policy)
    kept = PretrainedLogSoftmax()
    base_passes = []
    real = tiny_policy.pretrained
    monkeypatch.setattr(tiny_policy, "pretrained", lambda: base_passes.append(1) or real())

    def grads(pretrained: PretrainedLogSoftmax | None, rows: list[Sample]) -> tuple[float, list[torch.Tensor]]:
        for p in trainable(tiny_policy):
            p.grad = None
        kl = pretrained_kl(tiny_policy, rows, pretrained=pretrained)
        kl.backward()
        return float(kl.detach()), [p.grad.clone() for p in trainable(tiny_policy)]  # type: ignore[union-attr]

    fresh_kl, fresh = grads(None, samples)
    assert fresh_kl > 0 and len(base_passes) == 1
    grads(kept, samples[:2])  # two of them, then all three in another order
    again_kl, again = grads(kept, [samples[2], samples[0], samples[1]])
    assert len(base_passes) == 3  # the third sample alone was new to the kept reference
    grads(kept, samples)
    assert len(base_passes) == 3
    # float rounding only: a batch's shared prefix runs once, a lone sample's with its prompt
    assert again_kl == pytest.approx(fresh_kl, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(again, fresh, strict=True))


def test_the_kept_reference_is_bounded(tiny_policy: Policy) -> None:
    samples = _samples(tiny_policy, ["a?", "b?", "c?", "d?"])
    kept = PretrainedLogSoftmax(max_rows=len(samples[0].completion_ids) + len(samples[1].completion_ids))
    want, _, _ = completion_log_softmax(tiny_policy.model, samples, tiny_policy.pad_id)
    got = kept(tiny_policy, samples)  # (N, V): each completion token's row, sample after sample
    assert torch.allclose(got, want[own_positions(samples)], atol=1e-5)
    assert kept._rows <= kept.max_rows or len(kept._kept) == 1


def test_the_prefix_prompts_share_runs_once_and_gives_each_samples_gradient(
    tiny_policy: Policy, monkeypatch: Any
) -> None:
    """Distinct prompts share the chat template's system turn: it runs once, then each prompt's own
    tokens on top. Log-probs and gradients are those of running every sample whole, alone."""
    from lifelong.learn import logprobs

    monkeypatch.setattr(logprobs, "MIN_SAVED_TOKENS", 1)  # three prompts would not pay for it otherwise
    _moved(tiny_policy)
    questions = ["What is 2 + 2?", "Name a colour.", "Name a colour.", "Spell cat backwards, please."]
    samples = _samples(tiny_policy, questions)
    shapes: list[tuple[int, ...]] = []
    hook = tiny_policy.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        logp, _, mask = completion_log_softmax(tiny_policy.model, samples, tiny_policy.pad_id)
    finally:
        hook.remove()
    prompts = [s.prompt_ids for s in samples]
    shared = next(i for i in range(min(map(len, prompts))) if len({p[i] for p in prompts}) > 1)
    assert shared >= 8 and shapes[0] == (1, shared)  # the common prefix, once
    assert shapes[1][0] == 3  # then the three distinct prompts' own tokens
    tokens = torch.tensor([list(s.completion_ids) for s in samples]).unsqueeze(-1)
    (logp.gather(-1, tokens).squeeze(-1) * mask).sum().backward()
    together = [p.grad.clone() for p in trainable(tiny_policy)]

    tiny_policy.model.zero_grad(set_to_none=True)
    for s in samples:
        one, _, one_mask = completion_log_softmax(tiny_policy.model, [s], tiny_policy.pad_id)
        assert torch.allclose(one[0], logp[samples.index(s)], atol=1e-5)
        (one.gather(-1, torch.tensor([list(s.completion_ids)]).unsqueeze(-1)).squeeze(-1) * one_mask).sum().backward()
    for a, b in zip(together, [p.grad for p in trainable(tiny_policy)], strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)  # float rounding; a cut path would be O(1) off


def test_length_buckets_split_where_padding_costs_more_than_a_call(monkeypatch: Any) -> None:
    from lifelong.learn import logprobs

    monkeypatch.setattr(logprobs, "BUCKET_CALL_TOKENS", 16)
    assert logprobs.length_buckets([5] * 8) == [list(range(8))]  # nothing to save
    # two runaway replies among short ones: they run on their own instead of padding sixteen rows
    lengths = [5] * 16 + [14, 13]
    assert sorted(map(sorted, logprobs.length_buckets(lengths))) == [list(range(16)), [16, 17]]
    # one-token completions need no forward at all
    assert logprobs.length_buckets([1, 1, 6]) == [[0, 1], [2]]
    monkeypatch.setattr(logprobs, "BUCKET_CALL_TOKENS", 10**6)
    assert logprobs.length_buckets(lengths) == [sorted(range(18), key=lambda i: lengths[i])]


def test_completions_run_by_length_give_the_log_probs_and_gradient_of_one_padded_forward(
    tiny_policy: Policy, monkeypatch: Any
) -> None:
    """Rows split by completion length (each group its own forward on its rows of the prompts'
    cache) score and differentiate exactly as the whole batch padded to its longest row does."""
    from lifelong.learn import logprobs

    _moved(tiny_policy)
    samples = _samples(tiny_policy, ["What is 2 + 2?", "Name a colour.", "Say hi."])
    long = samples[0]
    samples.append(Sample(long.prompt_ids, long.completion_ids * 3, long.sampler_logprobs * 3, long.loss_mask * 3, 0.0))
    samples.append(Sample(samples[1].prompt_ids, long.completion_ids[:1], long.sampler_logprobs[:1], (1.0,), 0.0))

    def scored(call_tokens: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        monkeypatch.setattr(logprobs, "BUCKET_CALL_TOKENS", call_tokens)
        tiny_policy.model.zero_grad(set_to_none=True)
        calls: list[int] = []
        hook = tiny_policy.model.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            logp, ids, mask = completion_log_softmax(tiny_policy.model, samples, tiny_policy.pad_id)
        finally:
            hook.remove()
        (logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum().backward()
        return (logp * mask.unsqueeze(-1)).detach(), [p.grad.clone() for p in trainable(tiny_policy)], len(calls)  # type: ignore[union-attr]

    split, split_grads, split_calls = scored(0)
    whole, whole_grads, whole_calls = scored(10**6)
    assert split_calls > whole_calls == 2  # the prompts, then one padded block
    assert torch.allclose(split, whole, atol=1e-5)
    for a, b in zip(split_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_log_probs_of_the_own_positions_equal_the_whole_log_softmax_gathered(tiny_policy: Policy) -> None:
    """`completion_logprobs` normalises only each completion's own positions; its log-probs,
    entropy and gradient are those of the padded (B, C, V) log-softmax, at a temperature too."""
    _moved(tiny_policy)
    samples = _samples(tiny_policy, ["What is 2 + 2?", "Name a colour.", "Say hi."])
    long = samples[0]
    samples.append(Sample(long.prompt_ids, long.completion_ids * 3, long.sampler_logprobs * 3, long.loss_mask * 3, 0.0))

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in trainable(tiny_policy)]  # type: ignore[union-attr]
        tiny_policy.model.zero_grad(set_to_none=True)
        return out

    tiny_policy.model.zero_grad(set_to_none=True)
    logp, entropy, mask = completion_logprobs(tiny_policy.model, samples, tiny_policy.pad_id, temperature=0.7)
    (logp * mask).sum().backward()
    own = grads()
    whole, ids, _ = completion_log_softmax(tiny_policy.model, samples, tiny_policy.pad_id, temperature=0.7)
    gathered = whole.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (gathered * mask).sum().backward()
    assert torch.allclose(logp * mask, gathered * mask, atol=1e-5)
    assert torch.allclose(entropy * mask, -(whole.exp() * whole).sum(-1).detach() * mask, atol=1e-4)
    for a, b in zip(own, grads(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
    _, none, _ = completion_logprobs(tiny_policy.model, samples, tiny_policy.pad_id, with_entropy=False)
    assert not none.any()

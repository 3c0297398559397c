"""The sampler's copy of the weights: LoRA merged, in another dtype, following every change."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from tests.conftest import make_tiny_model

from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.adapters import AdapterSnapshot, adapter_state, load_adapter, trainable
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy, precision_dtype
from lifelong.model.sampler_copy import SamplerCopy
from lifelong.types import Sample

IDS = torch.tensor([[1, 520, 3301, 28, 905, 17, 4008]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _perturb(policy: Policy, seed: int) -> None:
    """Move every adapter weight (LoRA's B starts at zero, where merging changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable(policy):
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture
def policy(tokenizer) -> Policy:
    policy = Policy(make_tiny_model(tokenizer), tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))
    _perturb(policy, 0)
    return policy


def test_a_float32_copy_computes_what_the_live_model_does_with_lora_merged(policy: Policy) -> None:
    copy = SamplerCopy(torch.float32)(policy.model)
    layers = [m for m in copy.modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.merged for m in layers)  # one matmul per linear layer
    assert torch.allclose(_logits(copy), _logits(policy.model), atol=1e-4)


def test_a_bfloat16_copy_is_close_and_keeps_its_buffers_in_float32(policy: Policy) -> None:
    copy = SamplerCopy(torch.bfloat16)(policy.model)
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(b.dtype == torch.float32 for name, b in copy.named_buffers() if "inv_freq" in name)
    live = torch.log_softmax(_logits(policy.model), -1)
    fast = torch.log_softmax(_logits(copy), -1)
    top = live.argmax(-1, keepdim=True)
    assert (live.gather(-1, top) - fast.gather(-1, top)).abs().max() < 0.1


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to bf16 rounding; a stale copy is off by ~0.1 here after any of the changes below."""
    return bool((a - b).abs().max() < 0.02)


def test_the_copy_follows_an_optimizer_step_a_rollback_and_a_loaded_adapter(policy: Policy) -> None:
    fast = Policy(policy.model, policy.tokenizer, name="tiny", sampler_precision="bfloat16")
    stale = SamplerCopy(torch.bfloat16)(policy.model)  # a copy nobody refreshes, to show each change shows
    assert _close(_logits(fast.sampling_model()), _logits(policy.model))
    before = AdapterSnapshot(policy)
    saved = adapter_state(policy)

    optimizer = torch.optim.AdamW(trainable(policy), lr=0.05)
    policy.model(input_ids=IDS).logits.float().pow(2).mean().backward()
    optimizer.step()
    assert not _close(_logits(stale), _logits(policy.model))
    assert _close(_logits(fast.sampling_model()), _logits(policy.model))

    before.restore(fast)  # written through .data, reported by the snapshot
    assert _close(_logits(fast.sampling_model()), _logits(policy.model))
    assert _close(_logits(stale), _logits(policy.model))  # back where the stale copy was made

    _perturb(policy, 1)
    load_adapter(fast, saved)  # a tenant's adapter swapped in
    assert _close(_logits(fast.sampling_model()), _logits(policy.model))


def test_only_changed_tensors_are_copied_again(policy: Policy) -> None:
    sampler = SamplerCopy(torch.float32)
    sampler(policy.model)
    assert sampler.refreshed() == 0
    with torch.no_grad():
        next(iter(trainable(policy))).add_(1.0)  # one LoRA matrix: one merged weight
    assert sampler.refreshed() == 1
    assert torch.allclose(_logits(sampler(policy.model)), _logits(policy.model), atol=1e-4)


def test_a_memory_unit_copy_follows_its_values(tokenizer) -> None:
    from lifelong.model.memory_layer import MemorySettings

    small = MemorySettings(n_keys=16, heads=2, topk=4, key_dim=16, layers=(-1,), train_slots=64)
    policy = Policy(
        make_tiny_model(tokenizer), tokenizer, name="tiny", unit="memory", memory=small, sampler_precision="bfloat16"
    )
    before = _logits(policy.sampling_model())
    assert _close(before, _logits(policy.model))
    with torch.no_grad():
        policy.memories[0].values.weight.normal_(0, 0.05)
    assert not _close(before, _logits(policy.model))
    assert _close(_logits(policy.sampling_model()), _logits(policy.model))
    with policy.pretrained():  # its pretrained copy's memory reads nothing, as the live one's does here
        assert _close(_logits(policy.sampling_model()), _logits(policy.model))
        assert not _close(_logits(policy.sampling_model()), _logits(policy._sampler_copy(policy.model)))
    replies = policy.respond([policy.start("hi")] * 2, GenerationConfig("none", answer_tokens=4))
    assert all(len(r.token_ids) == 6 for r in replies)  # "Answer:" and 4 tokens, decoded in bf16


def test_a_bfloat16_policy_samples_from_the_copy_and_its_log_probs_stay_near_the_learners(policy: Policy) -> None:
    fast = Policy(policy.model, policy.tokenizer, name="tiny", sampler_precision="bfloat16")
    gen = GenerationConfig("none", answer_tokens=6, temperature=1.0)
    ctx = [fast.start("What is 1 + 1?")] * 4
    replies = fast.respond(ctx, gen, torch.Generator().manual_seed(0))
    samples = [Sample(tuple(c), r.token_ids, r.logprobs, r.loss_mask, 0.0) for c, r in zip(ctx, replies, strict=True)]
    with torch.no_grad():
        logp, _, mask = completion_logprobs(fast.model, samples, fast.pad_id)
    sampled = torch.zeros_like(logp)
    for i, r in enumerate(replies):
        sampled[i, : len(r.logprobs)] = torch.tensor(r.logprobs)
    mismatch = ((logp - sampled).abs() * mask).sum() / mask.sum()
    assert 0 < mismatch < 0.05  # bf16 rounding: not the fp32 sampler's exact agreement, but close

    # inside pretrained() a bf16 copy of the pretrained model samples, so that the guard compares
    # like with like (its answers against the adapted model's), and it stays pretrained
    for _ in range(2):
        with fast.pretrained():
            pretrained = fast.sampling_model()
            assert _close(_logits(pretrained), _logits(fast.model))  # LoRA off
            assert next(pretrained.parameters()).dtype == torch.bfloat16
        assert not _close(_logits(pretrained), _logits(fast.model))  # the adapted model differs
        assert fast.sampling_model() is not pretrained


def test_auto_precision_is_bfloat16_only_where_the_machine_has_bf16_units() -> None:
    fast = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert precision_dtype("auto") == (torch.bfloat16 if fast else torch.float32)
    assert precision_dtype("float32") == torch.float32 and precision_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(Exception, match="use one of auto, float32, bfloat16"):
        precision_dtype("fp8")

"""The units of learning (issue 21): LoRA, memory-layer values and every weight, behind one policy.

Every unit starts as the pretrained model, has a pretrained view (`Policy.pretrained`), learns
through the shared learners, and round-trips through `adapter_state` / `load_adapter` and the
checkpoint ring; a memory unit's update moves only the slots its batch chose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tests.conftest import make_learnable_model, make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.learn.grpo import GRPOConfig, GRPOLearner
from lifelong.learn.logprobs import pretrained_kl
from lifelong.learn.sft import SFTConfig, SFTLearner
from lifelong.loop.config import RunConfig
from lifelong.model.adapters import adapter_state, load_adapter, trainable
from lifelong.model.memory_layer import DEFAULT_LR_SCALE, MemoryOptimizer, MemorySettings
from lifelong.model.policy import GenerationConfig, Policy, Unit, require_lora
from lifelong.types import Batch, Sample

TINY_MEMORY = MemorySettings(n_keys=16, heads=2, topk=4, key_dim=8, layers=(-1,), train_slots=6, lr_scale=50.0)
IDS = torch.tensor([[5, 6, 7, 8, 9]])


def _policy(tokenizer: PreTrainedTokenizerBase, unit: str, learnable: bool = False) -> Policy:
    model = make_learnable_model(tokenizer) if learnable else make_tiny_model(tokenizer)
    return Policy(model, tokenizer, name="tiny", unit=unit, memory=TINY_MEMORY)


def _sft_batch(policy: Policy) -> Batch:
    prompt = tuple(policy.chat_start("Say the secret word."))
    answer = tuple(policy.tokenizer.encode("Kumquat", add_special_tokens=False))
    sample = Sample(prompt, answer, (0.0,) * len(answer), (1,) * len(answer), 1.0)
    return Batch((sample,), 1, 0, 1.0, 0.0, ())


@pytest.mark.parametrize("unit", ["lora", "memory", "full"])
def test_every_unit_starts_as_the_pretrained_model_and_keeps_a_pretrained_view(
    tokenizer: PreTrainedTokenizerBase, unit: str
) -> None:
    bare = make_tiny_model(tokenizer)(input_ids=IDS).logits
    policy = _policy(tokenizer, unit)
    assert torch.allclose(policy.model(input_ids=IDS).logits, bare, atol=1e-5)
    assert trainable(policy)
    with torch.no_grad():
        for p in trainable(policy):
            p.add_(0.3)
    assert not torch.allclose(policy.model(input_ids=IDS).logits, bare, atol=1e-3)
    with policy.pretrained():
        assert torch.allclose(policy.model(input_ids=IDS).logits, bare, atol=1e-5)
    assert not torch.allclose(policy.model(input_ids=IDS).logits, bare, atol=1e-3)  # the live model is back


def test_the_memory_unit_trains_only_its_values_and_is_healed_on_the_models_own_replies(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    policy = _policy(tokenizer, "memory")
    names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert names == ["model.layers.1.mlp.memory.values.weight"]
    (memory,) = policy.memories
    assert memory.background.sum() > 0  # healing read background text
    assert torch.allclose(memory.keys.norm(dim=-1), torch.ones_like(memory.keys[..., 0]))


@pytest.mark.parametrize("unit", ["lora", "memory", "full"])
def test_every_unit_learns_through_the_shared_learner_and_round_trips_as_a_value(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, unit: str
) -> None:
    policy = _policy(tokenizer, unit, learnable=True)
    learner = SFTLearner(policy, SFTConfig(learning_rate=1e-2))
    batch = _sft_batch(policy)
    first = pretrained_kl(policy, batch.samples).detach()
    for _ in range(3):
        assert learner.update(batch).applied
    learnt = adapter_state(policy)
    taught = torch.tensor([batch.samples[0].prompt_ids + batch.samples[0].completion_ids])
    logits = policy.model(input_ids=taught).logits.detach()
    assert float(pretrained_kl(policy, batch.samples).detach()) > float(first)  # it moved from pretrained
    ring = CheckpointRing(tmp_path / "ring")
    ring.save(policy, learner.optimizer, 3, {})

    fresh = _policy(tokenizer, unit, learnable=True)
    assert not torch.allclose(fresh.model(input_ids=taught).logits, logits, atol=1e-4)
    load_adapter(fresh, learnt)
    assert torch.allclose(fresh.model(input_ids=taught).logits, logits, atol=1e-5)
    other = _policy(tokenizer, unit, learnable=True)
    resumed = SFTLearner(other, SFTConfig(learning_rate=1e-2)).optimizer
    ring.restore(ring.latest(), other, resumed)  # type: ignore[arg-type]
    assert torch.allclose(other.model(input_ids=taught).logits, logits, atol=1e-5)
    pairs = zip(trainable(policy), trainable(other), strict=True)
    moments = [(learner.optimizer.state[a]["exp_avg"], resumed.state[b]["exp_avg"]) for a, b in pairs]
    assert moments and all(torch.equal(x, y) for x, y in moments)  # Adam's state too (sparse rows for memory)


def test_a_memory_units_state_is_a_sparse_delta_and_an_update_moves_at_most_train_slots(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    policy = _policy(tokenizer, "memory", learnable=True)
    assert adapter_state(policy)["memory.0.rows"].numel() == 0  # nothing learnt, nothing stored
    learner = GRPOLearner(policy, GRPOConfig(learning_rate=1e-2, anchor_coef=0.0, kl_coef=0.0))
    prompt = tuple(policy.chat_start("Pick one."))
    samples = tuple(
        Sample(prompt, (t,), (-1.0,), (1,), a) for t, a in ((3000, 1.0), (3001, -1.0), (3002, 1.0), (3003, -1.0))
    )
    values = policy.memories[0].values.weight
    for _ in range(2):
        before = values.detach().clone()
        assert learner.update(Batch(samples, 1, 0, 0.5, 0.5, ())).applied
        moved = torch.nonzero((values.detach() - before).abs().sum(-1)).flatten()
        assert 0 < moved.numel() <= TINY_MEMORY.train_slots
    state = adapter_state(policy)
    written = torch.nonzero(values.detach().abs().sum(-1)).flatten()
    assert torch.equal(state["memory.0.rows"], written) and written.numel() <= 2 * TINY_MEMORY.train_slots
    assert state["memory.0.values"].shape == (written.numel(), policy.model.config.hidden_size)


def test_the_memory_values_can_learn_by_sgd_at_its_own_scale_and_still_only_in_chosen_slots(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    settings = replace(TINY_MEMORY, optimizer=MemoryOptimizer.SGD, lr_scale=None)
    policy = Policy(make_learnable_model(tokenizer), tokenizer, name="tiny", unit="memory", memory=settings)
    learner = SFTLearner(policy, SFTConfig(learning_rate=1e-8, warmup_steps=0))
    assert isinstance(learner.optimizer, torch.optim.SGD)
    batch = _sft_batch(policy)
    values = policy.memories[0].values.weight
    before, loss = values.detach().clone(), None
    for _ in range(3):
        report = learner.update(batch)
        assert report.applied
        loss = loss or report.metrics["loss/nll"]
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-8 * DEFAULT_LR_SCALE[MemoryOptimizer.SGD])
    moved = torch.nonzero((values.detach() - before).abs().sum(-1)).flatten()
    assert 0 < moved.numel() <= 3 * settings.train_slots
    assert learner.update(batch).metrics["loss/nll"] < loss  # it learns


def test_a_state_of_another_unit_or_shape_is_refused(tokenizer: PreTrainedTokenizerBase) -> None:
    lora, memory = _policy(tokenizer, "lora"), _policy(tokenizer, "memory")
    with pytest.raises(ValueError, match="number of memory layers"):
        load_adapter(memory, adapter_state(lora))
    bigger = Policy(make_tiny_model(tokenizer), tokenizer, unit="memory", memory=MemorySettings(n_keys=32, key_dim=8))
    with pytest.raises(RuntimeError):
        load_adapter(bigger, adapter_state(memory))


def test_units_are_checked_and_ray_and_vllm_refuse_all_but_lora(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ConfigError, match="unknown unit 'adapter'"):
        RunConfig(stream={}, unit="adapter")  # type: ignore[arg-type]
    assert RunConfig.from_dict({**RunConfig(stream={}, unit=Unit.MEMORY).to_dict()}).unit is Unit.MEMORY
    with pytest.raises(ConfigError, match="not supported with Ray"):
        require_lora("memory", "Ray")
    require_lora("lora", "Ray")


def test_the_memory_unit_answers_like_the_pretrained_model_until_it_learns(tokenizer: PreTrainedTokenizerBase) -> None:
    bare = Policy(make_tiny_model(tokenizer), tokenizer)
    policy = _policy(tokenizer, "memory")
    contexts = [policy.chat_start(q) for q in ("Hello?", "What is 2+2?")]
    greedy = GenerationConfig(protocol=False, temperature=0.0, answer_tokens=8)
    assert [c.token_ids for c in policy.chat(contexts, greedy)] == [c.token_ids for c in bare.chat(contexts, greedy)]

"""The memory layer (issue 21): product-key lookup, insertion and healing that change nothing,
sparse updates that move only the chosen slots."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.conftest import make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.model.memory_layer import (
    MemoryLayer,
    MemoryOptimizer,
    MemorySettings,
    counting,
    heal_memory,
    insert_memory,
    memories_of,
    memories_off,
    only_chosen_slots,
    tfidf_slots,
)

SMALL = MemorySettings(n_keys=16, heads=2, topk=4, key_dim=8, layers=(-1,))


def test_a_lookup_reads_topk_distinct_slots_per_head_with_weights_that_sum_to_one() -> None:
    memory = MemoryLayer(32, SMALL, torch.Generator().manual_seed(0))
    slots, weights = memory.lookup(torch.randn(3, 5, 32))
    assert slots.shape == weights.shape == (3, 5, SMALL.heads * SMALL.topk)
    assert int(slots.min()) >= 0 and int(slots.max()) < SMALL.slots
    assert torch.allclose(weights.sum(-1), torch.ones(3, 5))
    per_head = slots.unflatten(-1, (SMALL.heads, SMALL.topk))
    assert all(len(set(row.tolist())) == SMALL.topk for row in per_head.reshape(-1, SMALL.topk))
    # the product keys find exactly the best topk of all n_keys ** 2 slots, per head
    hidden = torch.randn(32)
    with torch.no_grad():
        q = memory.query_norm(memory.query(hidden).unflatten(-1, (SMALL.heads, SMALL.key_dim)))
        q1, q2 = q.chunk(2, dim=-1)
        every = torch.einsum("hd,hkd->hk", q1, memory.keys[0]).unsqueeze(-1) + torch.einsum(
            "hd,hkd->hk", q2, memory.keys[1]
        ).unsqueeze(-2)  # (H, n, n): slot i * n + j scores half-key i plus half-key j
        best = every.flatten(-2).topk(SMALL.topk).indices
        found, _ = memory.lookup(hidden)
    for head in range(SMALL.heads):
        assert set(found.unflatten(-1, (SMALL.heads, SMALL.topk))[head].tolist()) == set(best[head].tolist())


def test_an_inserted_memory_changes_nothing_and_only_its_values_learn(tokenizer: PreTrainedTokenizerBase) -> None:
    model = make_tiny_model(tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = model(input_ids=ids).logits
    (memory,) = insert_memory(model, SMALL)
    assert torch.equal(model(input_ids=ids).logits, before)  # values start at zero
    learning = [n for n, p in model.named_parameters() if ".memory." in n and p.requires_grad]
    assert learning == ["model.layers.1.mlp.memory.values.weight"]  # keys and query stay as healed
    for p in model.parameters():
        p.requires_grad_(False)
    memory.values.weight.requires_grad_(True)
    model(input_ids=ids).logits.logsumexp(-1).sum().backward()
    grad = memory.values.weight.grad
    assert grad is not None
    read, _ = memory.lookup(torch.randn(1, 64))  # any hidden state reads heads * topk slots
    touched = int((grad.abs().sum(-1) > 0).sum())
    assert 0 < touched <= ids.numel() * read.shape[-1]  # only slots the tokens read
    assert memories_of(model) == [memory]


def test_tfidf_prefers_what_the_batch_reads_more_than_the_background() -> None:
    background = torch.tensor([10.0, 10.0, 1.0, 0.0, 5.0])  # of 10 background texts, how many read each
    batch = torch.tensor([10.0, 0.0, 5.0, 5.0, 0.0])
    assert set(tfidf_slots(batch, background, 10, 2).tolist()) == {2, 3}  # rare in the background
    assert tfidf_slots(batch, background, 10, 3)[-1] == 0  # read by every text: last, however often
    assert tfidf_slots(torch.zeros(5), background, 10, 2).numel() == 0


def test_healing_fits_keys_to_the_text_and_counts_its_reads_without_moving_an_output(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    model = make_tiny_model(tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = model(input_ids=ids).logits
    (memory,) = insert_memory(model, SMALL)
    random_keys = memory.keys.detach().clone()
    texts = [list(range(20 + 7 * i, 40 + 7 * i)) for i in range(6)]
    heal_memory(model, [memory], texts)
    assert not torch.equal(memory.keys, random_keys)
    assert torch.allclose(memory.keys.norm(dim=-1), torch.ones(2, SMALL.heads, SMALL.n_keys))
    assert memory.background_texts == len(texts) and memory.background.max() <= len(texts)
    assert memory.background.sum() >= SMALL.heads * SMALL.topk  # each text reads at least that many slots
    assert torch.equal(model(input_ids=ids).logits, before)  # the values are still zero
    with counting([memory]) as counts:
        model(input_ids=torch.tensor([texts[0]]))
    assert counts[0].sum() == len(texts[0]) * SMALL.heads * SMALL.topk


def test_reads_by_gradient_count_only_where_the_loss_reaches_weighed_by_its_gradient(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    model = make_tiny_model(tokenizer)
    (memory,) = insert_memory(model, dataclasses.replace(SMALL, reads_by_gradient=True))
    model.requires_grad_(False)
    memory.values.weight.requires_grad_(True)
    hidden: list[torch.Tensor] = []
    read_out_grad: list[torch.Tensor] = []

    def keep(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        hidden.append(args[0].detach())
        if out.requires_grad:
            out.register_hook(read_out_grad.append)

    memory.register_forward_hook(keep)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        model(input_ids=ids)  # sampling reads are not the batch's
    logits = model(input_ids=ids).logits
    assert memory.batch_reads.sum() == 0  # counted in the backward, where the gradient is known
    # In the last layer a token's read-out reaches only its own logits: a loss on the last
    # position reaches the last token's reads and no other's, each weighed by the gradient's norm.
    logits[0, -1].logsumexp(-1).backward()
    slots, _ = memory.lookup(hidden[-1][0, -1])
    weighed = torch.zeros_like(memory.batch_reads)
    weighed.index_add_(0, slots, read_out_grad[-1][0, -1].double().norm().expand(len(slots)))
    assert torch.allclose(memory.batch_reads, weighed)
    # Counted plainly, the same loss counts every token's reads.
    memory.settings = SMALL
    memory.batch_reads.zero_()
    model(input_ids=ids).logits[0, -1].logsumexp(-1).backward()
    assert memory.batch_reads.sum() == ids.numel() * SMALL.heads * SMALL.topk


def test_a_sparse_step_moves_only_the_chosen_slots_even_with_adams_momentum(tokenizer: PreTrainedTokenizerBase) -> None:
    model = make_tiny_model(tokenizer)
    settings = MemorySettings(n_keys=16, heads=2, topk=4, key_dim=8, layers=(-1,), train_slots=3)
    (memory,) = insert_memory(model, settings)
    model.requires_grad_(False)
    memory.values.weight.requires_grad_(True)
    heal_memory(model, [memory], [[11, 12, 13, 14, 15, 16]])
    optimizer = torch.optim.AdamW([memory.values.weight], lr=0.1, weight_decay=0.0)
    moved_by_step = []
    for ids in ([5, 6, 7, 8, 9], [30, 31, 32, 33]):
        optimizer.zero_grad()
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))  # sampling reads are not the batch's
        reads = memory.batch_reads.clone()
        model(input_ids=torch.tensor([ids])).logits.logsumexp(-1).sum().backward()
        assert torch.equal(reads, torch.zeros_like(reads))
        reads = memory.batch_reads * (memory.values.weight.grad.abs().sum(-1) > 0)  # type: ignore[union-attr]
        chosen = set(tfidf_slots(reads, memory.background, float(memory.background_texts), 3).tolist())
        before = memory.values.weight.detach().clone()
        with only_chosen_slots([memory]):
            optimizer.step()
        moved = set(torch.nonzero((memory.values.weight.detach() - before).abs().sum(-1)).flatten().tolist())
        assert moved and moved <= chosen  # the first step's slots keep momentum, yet stay put
        assert memory.batch_reads.sum() == 0  # reset for the next batch
        moved_by_step.append(moved)
    assert moved_by_step[0] != moved_by_step[1]


def test_memories_off_is_the_pretrained_model(tokenizer: PreTrainedTokenizerBase) -> None:
    model = make_tiny_model(tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = model(input_ids=ids).logits
    (memory,) = insert_memory(model, SMALL)
    with torch.no_grad():
        memory.values.weight.normal_()
    assert not torch.allclose(model(input_ids=ids).logits, before)
    with memories_off([memory]):
        assert torch.equal(model(input_ids=ids).logits, before)
    assert memory.enabled


def test_bad_settings_say_what_to_use() -> None:
    with pytest.raises(ConfigError, match="even key_dim"):
        MemorySettings(key_dim=7)
    with pytest.raises(ConfigError, match="layers"):
        MemorySettings(layers=())
    with pytest.raises(ConfigError, match="adamw, sgd"):
        MemorySettings(optimizer="lion")  # type: ignore[arg-type]
    assert MemorySettings.from_dict({"optimizer": "sgd"}).optimizer is MemoryOptimizer.SGD

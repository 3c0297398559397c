"""The memory layer (issue 21): product-key lookup, insertion that changes nothing, sparse updates."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.model.memory_layer import (
    MemoryLayer,
    MemorySettings,
    SparseValueUpdate,
    count_background,
    counting,
    insert_memory,
    memories_of,
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
    background = torch.tensor([100.0, 100.0, 1.0, 0.0, 50.0])
    batch = torch.tensor([10.0, 0.0, 5.0, 5.0, 0.0])
    assert set(tfidf_slots(batch, background, 2).tolist()) == {2, 3}  # rare in the background
    assert tfidf_slots(torch.zeros(5), background, 2).numel() == 0


def test_a_sparse_update_moves_only_the_chosen_slots(tokenizer: PreTrainedTokenizerBase) -> None:
    model = make_tiny_model(tokenizer)
    (memory,) = insert_memory(model, SMALL)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    count_background(model, [torch.tensor([[11, 12, 13, 14]])])
    background = memory.counts.clone()
    assert background.sum() == 4 * SMALL.heads * SMALL.topk
    with counting([memory]) as counts:
        loss = model(input_ids=ids).logits.logsumexp(-1).sum()
    chosen = tfidf_slots(counts[0], background, 3)
    sparse = SparseValueUpdate(memory)
    sparse.choose(chosen)
    loss.backward()
    grad = memory.values.weight.grad
    assert grad is not None
    moved = set(torch.nonzero(grad.abs().sum(-1)).flatten().tolist())
    assert moved and moved <= set(chosen.tolist())
    sparse.remove()


def test_bad_settings_say_what_to_use() -> None:
    with pytest.raises(ConfigError, match="even key_dim"):
        MemorySettings(key_dim=7)
    with pytest.raises(ConfigError, match="layers"):
        MemorySettings(layers=())

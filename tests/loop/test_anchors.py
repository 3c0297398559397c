from __future__ import annotations

import pytest

from lifelong.errors import ConfigError
from lifelong.loop.anchors import AnchorPool, conversation
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import ProbeSet, Task


def test_plain_chat_anchors_ask_every_other_item_after_answered_example_turns(tiny_policy: Policy) -> None:
    facts = Task.of("facts")
    plain = GenerationConfig(protocol=False, answer_tokens=3)
    pool = AnchorPool(tiny_policy, [ProbeSet(facts, 4)], items=6, per_step=2, seed=0, generation=plain, shots=2)
    prompts = [tiny_policy.tokenizer.decode(a.prompt_ids) for a in pool.pool()]
    turns = [p.count("<|im_start|>assistant") for p in prompts]  # the last one is where the reply starts
    assert turns[0::2] == [1] * len(turns[0::2]) and turns[1::2] == [3] * len(turns[1::2])
    env = facts.make()
    messages = conversation(env, 1, [2, 3])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == env.reset(seed=2)[1]["answer"] and messages[-1]["content"] == env.reset(seed=1)[0]
    with pytest.raises(ConfigError, match="plain chat"):
        AnchorPool(tiny_policy, [ProbeSet(facts, 4)], 6, 2, 0, GenerationConfig(), shots=2)

"""The server answers plain chat as the bare model does: at reasoning effort none a reply is what
`model.generate` gives with the model's own chat template (greedy, the model's default), token for
token, so serving never costs answer quality. The slow test checks it on the real embedded model;
benchmarks/chat_parity.py measures it on 40 questions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lifelong.memory.store import ExperienceStore
from lifelong.serve import LearnerConfig, ServeConfig
from tests.benchmarks.conftest import load_benchmark
from tests.serve.conftest import client

QUESTIONS = ["What is the capital of France? Answer in one word.", "Name a color.", "Say hi to Bob."]


bare_reply = load_benchmark("chat_parity").bare_reply


def served_replies(url: str, model_id: str, config: ServeConfig, max_tokens: int, **kw: Any) -> list[list[int]]:
    replies = []
    for q in QUESTIONS:
        r = client(url).chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": q}], max_tokens=max_tokens, **kw
        )
        with ExperienceStore(config.database_location) as s:
            served = s.request(r.id)
        assert served is not None and served.choices[0].answer == r.choices[0].message.content
        replies.append(list(served.choices[0].token_ids))
    return replies


def test_plain_chat_is_token_for_token_the_bare_model(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str, serve_model_dir: Path
) -> None:
    from lifelong.model.loading import load_model

    model, tokenizer, _ = load_model(str(serve_model_dir))
    bare = [bare_reply(model, tokenizer, [{"role": "user", "content": q}], 12) for q in QUESTIONS]
    url = start_server(serve_config)
    assert served_replies(url, model_id, serve_config, 12) == bare  # no sampling parameters: the model's greedy
    assert served_replies(url, model_id, serve_config, 12, temperature=0) == bare


@pytest.mark.slow
def test_the_real_model_answers_through_the_server_as_it_does_alone(
    tmp_path: Path, start_server: Callable[..., str]
) -> None:
    from lifelong.model.loading import load_model

    torch.set_num_threads(2)
    model, tokenizer, name = load_model(None)
    bare = [bare_reply(model, tokenizer, [{"role": "user", "content": q}], 16) for q in QUESTIONS]
    assert "Paris" in tokenizer.decode(bare[0], skip_special_tokens=True)
    config = ServeConfig(
        store=tmp_path / "serve", keys=(("alice", "sk-alice"),), threads=2, learner=LearnerConfig(enabled=False)
    )
    url = start_server(config)
    assert served_replies(url, name, config, 16, temperature=0) == bare

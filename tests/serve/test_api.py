"""The HTTP surface over loopback with the official openai client: chat, streaming, models,
feedback, privacy of the chain of thought, and bad input (status, error body, nothing stored)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from lifelong.serve import BackgroundServer, ServeConfig, Server, ServeStore
from lifelong.serve.monitor import Observation
from tests.serve.conftest import Reply, client, http


def _store(config: ServeConfig) -> ServeStore:
    return ServeStore(config.store / "serve.sqlite")


def test_chat_answers_and_stores_before_replying(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    r = client(url).chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Name a color."}], temperature=0, max_tokens=5
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == model_id and r.system_fingerprint == "adapter-v0"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    with _store(serve_config) as store:
        served = store.request(r.id)
    assert served is not None and served.status == "completed" and served.tenant == "alice"
    assert served.choices[0].answer == choice.message.content
    assert served.body["messages"] == [{"role": "user", "content": "Name a color."}]
    # the stored completion reads back through the API as it was answered
    back = client(url).chat.completions.retrieve(r.id)
    assert back.choices[0].message.content == choice.message.content


def test_streaming_sends_openai_chunks_that_add_up_to_the_answer(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    c = client(url)
    messages: Any = [{"role": "user", "content": "Say something."}]
    whole = c.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=8)
    chunks = list(
        c.chat.completions.create(
            model=model_id,
            messages=messages,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # on the wire: server-sent events ending with [DONE]
    body = {"model": model_id, "messages": messages, "stream": True, "max_tokens": 2}
    raw = http("POST", f"{url}/chat/completions", body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_models_report_the_callers_live_adapter_version(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    models = client(url, "bob").models.list().data
    assert [m.id for m in models] == [model_id]
    extra = models[0].model_extra or {}
    assert extra["tenant"] == "bob" and extra["adapter_version"] == 0
    assert client(url).models.retrieve(model_id).id == model_id


def test_reasoning_is_private_unless_the_operator_exposes_it(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    c = client(url)
    kw: Any = {"model": model_id, "messages": [{"role": "user", "content": "Think, then name a color."}]}
    r = c.chat.completions.create(reasoning_effort="low", seed=1, **kw)
    with _store(serve_config) as store:
        chain = store.request(r.id).choices[0].reasoning  # type: ignore[union-attr]
    assert len(chain) > 40  # the tiny model babbles for its whole budget
    dumped = json.dumps(r.model_dump())
    assert chain not in dumped and "reasoning_content" not in dumped and "reasoning_summary" not in dumped
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    # a summary when asked: how long it thought and a trimmed conclusion, never the whole chain
    s = c.chat.completions.create(reasoning_effort="low", seed=1, extra_body={"reasoning": {"summary": "auto"}}, **kw)
    summary = (s.choices[0].message.model_extra or {})["reasoning_summary"]
    assert summary.startswith("Reasoned for") and chain not in summary and len(summary) < 260


def test_expose_reasoning_puts_the_chain_in_responses(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config, expose_reasoning=True)
    r = client(url).chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Think."}], reasoning_effort="low", seed=2
    )
    with _store(serve_config) as store:
        chain = store.request(r.id).choices[0].reasoning  # type: ignore[union-attr]
    assert (r.choices[0].message.model_extra or {})["reasoning_content"] == chain


def _feedback(url: str, body: dict[str, Any], tenant: str = "alice") -> Reply:
    return http("POST", f"{url}/feedback", body, tenant)


def test_feedback_of_every_kind_is_stored_and_acknowledged(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    c = client(url)
    r = c.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=3, seed=3
    )
    sent = [
        {"completion_id": r.id, "rating": "up"},
        {"completion_id": r.id, "choice": 1, "rating": "down"},
        {"completion_id": r.id, "score": 0.25},
        {"completion_id": r.id, "correction": "Hello!"},
    ]
    acks = [_feedback(url, b) for b in sent]
    assert [a.status for a in acks] == [200] * 4
    assert [a.json()["kind"] for a in acks] == ["thumbs", "thumbs", "score", "correction"]
    # the official client reaches custom routes too
    ack = c.post("/feedback", body={"completion_id": r.id, "rating": "up"}, cast_to=object)
    assert ack["stored"] is True  # type: ignore[index]
    with _store(serve_config) as store:
        stored = store.feedback("alice")
    assert [(f.kind, f.index, f.reward, f.correction) for f in stored] == [
        ("thumbs", 0, 1.0, None),
        ("thumbs", 1, 0.0, None),
        ("score", 0, 0.25, None),
        ("correction", 0, None, "Hello!"),
        ("thumbs", 0, 1.0, None),
    ]


def _error(resp: Reply) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return dict(body["error"])


def test_bad_input_gets_the_right_status_and_stores_nothing(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config, max_prompt_tokens=64, max_body_bytes=4096)
    ok = client(url).chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    chat = f"{url}/chat/completions"
    good: dict[str, Any] = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}]}
    with _store(serve_config) as store:
        before = {t: store.count(t) for t in ("requests", "choices", "feedback", "flags")}

    def post(body: Any, tenant: str | None = "alice", raw: bytes | None = None) -> Reply:
        return http("POST", chat, body, tenant, raw)

    long_prompt = [{"role": "user", "content": "word " * 200}]
    cases: list[tuple[str, Reply, int, str | None]] = [
        ("malformed JSON", post(None, raw=b'{"model": '), 400, "invalid_json"),
        ("not an object", post([1, 2]), 400, "invalid_json"),
        ("no messages", post({"model": model_id}), 400, "invalid_value"),
        ("bad effort", post({**good, "reasoning_effort": "extreme"}), 400, "invalid_value"),
        ("last message not the user's", post({**good, "messages": [{"role": "assistant", "content": "x"}]}), 400, None),
        ("too many choices", post({**good, "n": 50}), 400, None),
        ("unknown model", post({**good, "model": "gpt-9"}), 404, "model_not_found"),
        ("oversized prompt", post({**good, "messages": long_prompt}), 400, "context_length_exceeded"),
        ("oversized body", post({**good, "messages": [{"role": "user", "content": "x" * 10_000}]}), 413, None),
        ("missing key", post(good, tenant=None), 401, "missing_api_key"),
        ("wrong key", http("GET", f"{url}/models", tenant="nobody"), 401, "invalid_api_key"),
        ("unknown id", _feedback(url, {"completion_id": "chatcmpl-nope", "rating": "up"}), 404, "completion_not_found"),
        ("other tenant's id", _feedback(url, {"completion_id": ok.id, "rating": "up"}, "bob"), 404, None),
        ("two kinds", _feedback(url, {"completion_id": ok.id, "rating": "up", "score": 1.0}), 400, None),
        ("score out of range", _feedback(url, {"completion_id": ok.id, "score": 7}), 400, None),
        ("choice out of range", _feedback(url, {"completion_id": ok.id, "choice": 3, "rating": "up"}), 400, None),
        ("malformed feedback", http("POST", f"{url}/feedback", raw=b"{"), 400, "invalid_json"),
        ("flags need an operator", http("GET", f"{url}/monitor/flags"), 403, "not_operator"),
        ("unknown route", http("GET", f"{url}/nothing"), 404, "not_found"),
    ]
    for name, resp, status, code in cases:
        assert resp.status == status, (name, resp.status, resp.text)
        err = _error(resp)
        if code is not None:
            assert err["code"] == code, (name, err)
    with _store(serve_config) as store:
        assert {t: store.count(t) for t in before} == before

    # the official client raises its typed errors for these statuses
    c = client(url)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-nope", base_url=url, max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "word " * 200}])


def test_monitor_flags_reach_the_operator(serve_config: ServeConfig, model_id: str) -> None:
    class FlagEverything:
        def check(self, reasoning: str, answer: str) -> list[Observation]:
            return [Observation("reward_gaming", f"answer {answer!r}")]

    server = Server(serve_config)
    server.service.monitor = FlagEverything()
    try:
        with BackgroundServer(server) as url:
            r = client(url).chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
            flags = http("GET", f"{url}/monitor/flags", tenant="ops").json()["data"]
            assert [(f["request_id"], f["tenant"], f["kind"]) for f in flags] == [(r.id, "alice", "reward_gaming")]
            assert http("GET", f"{url}/monitor/flags?after={flags[0]['id']}", tenant="ops").json()["data"] == []
    finally:
        server.close()
    logged = [json.loads(line) for line in (serve_config.store / "flags.jsonl").read_text().splitlines()]
    assert [f["request_id"] for f in logged] == [r.id]

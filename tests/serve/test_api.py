"""The HTTP surface over loopback with the official openai client: chat, streaming, models,
feedback, privacy of the chain of thought, and bad input (status, error body, nothing stored); plain
chat at effort none (the model's own chat template) and OpenAI's sampling parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lifelong.guard.monitor import Observation
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import ANSWER_MARKER, SYSTEM_PROMPT
from lifelong.serve import BackgroundServer, ServeConfig, Server
from lifelong.serve.protocol import ChatRequest, StreamHead
from lifelong.serve.service import SamplingDefaults, sampling_defaults
from tests.serve.conftest import Reply, client, http


def _store(config: ServeConfig) -> ExperienceStore:
    return ExperienceStore(config.database_location)


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
        before = {t: store.rows(t) for t in ("requests", "choices", "feedback", "flags")}

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
        assert {t: store.rows(t) for t in before} == before

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
    assert [f["source"] for f in logged] == [r.id]  # flags.jsonl names the request as its source


# ---- plain chat and OpenAI's sampling parameters ------------------------------------------------------
def _template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(ids if isinstance(ids, list) else ids["input_ids"])  # type: ignore[arg-type,index]


def test_effort_none_is_the_models_own_chat_template(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str, tokenizer: PreTrainedTokenizerBase
) -> None:
    url = start_server(serve_config)
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use plain words."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color."},
    ]
    r = client(url).chat.completions.create(model=model_id, messages=messages, max_tokens=6)
    with _store(serve_config) as store:
        served = store.request(r.id)
    assert served is not None
    as_template = [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages
    ]
    assert list(served.prompt_ids) == _template(tokenizer, as_template)  # no protocol prompt
    c = served.choices[0]
    assert ANSWER_MARKER not in tokenizer.decode(list(c.token_ids)) and c.reasoning == ""
    assert c.loss_mask == (1,) * len(c.token_ids) and c.answer == r.choices[0].message.content
    assert served.generation["protocol"] is False
    # effort low keeps the reasoning protocol: its system prompt first, the marker in the reply
    low = client(url).chat.completions.create(model=model_id, messages=messages, max_tokens=3, reasoning_effort="low")
    with _store(serve_config) as store:
        served = store.request(low.id)
    assert served is not None and served.generation["protocol"] is True
    assert SYSTEM_PROMPT in tokenizer.decode(list(served.prompt_ids))
    assert ANSWER_MARKER in tokenizer.decode(list(served.choices[0].token_ids))
    # minimal is that protocol with no time to think: the reply opens with the marker
    r = client(url).chat.completions.create(model=model_id, messages=messages, max_tokens=3, reasoning_effort="minimal")
    with _store(serve_config) as store:
        served = store.request(r.id)
    assert served is not None and served.generation["protocol"] is True and served.generation["think_budget"] == 0
    assert tokenizer.decode(list(served.choices[0].token_ids)).startswith(ANSWER_MARKER)


def test_sampling_defaults_come_from_the_models_generation_config(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    assert sampling_defaults(GenerationConfig()) == SamplingDefaults()  # sets nothing: greedy
    assert sampling_defaults(GenerationConfig(temperature=0.7)) == SamplingDefaults()  # do_sample unset: greedy
    assert sampling_defaults(GenerationConfig(do_sample=True, temperature=0.7, top_k=20)) == SamplingDefaults(
        0.7, 1.0, 20
    )
    url = start_server(serve_config)
    c = client(url)
    ask: Any = {"model": model_id, "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8}
    plain = c.chat.completions.create(n=2, **ask)  # the tiny model's generation_config sets nothing
    greedy = c.chat.completions.create(temperature=0, **ask)
    assert [ch.message.content for ch in plain.choices] == [greedy.choices[0].message.content] * 2
    with _store(serve_config) as store:
        served = store.request(plain.id)
    assert served is not None and served.generation["temperature"] == 0.0


def test_each_sampling_parameter_is_honoured(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    c = client(url)
    ask: Any = {"model": model_id, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8}

    def text(**kw: Any) -> str:
        return c.chat.completions.create(**ask, **kw).choices[0].message.content or ""

    greedy = text(temperature=0)
    assert text(temperature=1.5, extra_body={"top_k": 1}, seed=3) == greedy  # top_k: vLLM's extension
    assert text(temperature=1.5, top_p=0.0, seed=3) == greedy
    assert text(temperature=1.0, seed=11) == text(temperature=1.0, seed=11)
    assert len({text(temperature=1.0, seed=s) for s in range(4)}) > 1
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    cut = c.chat.completions.create(**ask, temperature=0, stop=["never", stop])
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(**ask, temperature=1.0, presence_penalty=1.5, frequency_penalty=-0.5, seed=1)
    with _store(serve_config) as store:
        served = store.request(r.id)
    assert served is not None
    assert (served.generation["presence_penalty"], served.generation["frequency_penalty"]) == (1.5, -0.5)


def test_out_of_range_sampling_values_get_a_400_naming_the_param(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    good: dict[str, Any] = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}]}
    bad = [
        ("temperature", 2.5),
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("top_k", -2),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.1),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("stop", 5),
        ("seed", "x"),
    ]
    for param, value in bad:
        for stream in (False, True):  # a stream that cannot start is an ordinary error reply
            resp = http("POST", f"{url}/chat/completions", {**good, param: value, "stream": stream})
            assert resp.status == 400, (param, value, resp.text)
            err = _error(resp)
            assert err["param"] == param and param in err["message"], (param, err)
    with _store(serve_config) as store:
        assert store.rows("requests") == 0
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client(url).chat.completions.create(**good, top_p=7)


def test_streaming_sends_tokens_as_they_are_generated(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    c = client(url)
    ask: Any = {"model": model_id, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 12}
    pieces, finished_at = [], None
    for chunk in c.chat.completions.create(**ask, temperature=1.0, seed=5, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            # the finish chunk comes only once the choices are stored: the completion reads back
            finished_at = c.chat.completions.retrieve(chunk.id).choices[0].message.content
    with _store(serve_config) as store:
        served = store.request(chunk.id)
    assert served is not None
    assert len(pieces) > 1 and "".join(pieces) == served.choices[0].answer == finished_at
    # a stop string is never streamed, even in part
    stop = served.choices[0].answer[4:7]
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(**ask, temperature=1.0, seed=5, stream=True, stop=stop)
        if ch.choices
    )
    assert streamed == served.choices[0].answer[: served.choices[0].answer.index(stop)]


def test_streamed_pieces_leave_before_the_choices_are_stored(serve_config: ServeConfig, model_id: str) -> None:
    """Token by token for real: each piece reaches the client while the request is still only received."""
    server = Server(serve_config)
    try:
        seen: list[tuple[str, str]] = []
        heads: list[StreamHead] = []

        def on_text(i: int, piece: str) -> None:
            served = server.store.request(heads[0].id)
            seen.append((piece, served.status if served else "missing"))

        req = ChatRequest.model_validate(
            {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10, "temperature": 1.0}
        )
        result = server.service.chat("alice", req, {}, on_start=heads.append, on_text=on_text)
        assert heads[0].id == result.id and heads[0].adapter_version == result.adapter_version
        assert len(seen) > 1 and {status for _, status in seen} == {"received"}
        assert "".join(p for p, _ in seen) == result.choices[0].completion.answer
        served = server.store.request(result.id)
        assert served is not None and served.status == "completed"
    finally:
        server.close()


def test_reasoning_effort_streams_the_answer_only(
    serve_config: ServeConfig, start_server: Callable[..., str], model_id: str
) -> None:
    url = start_server(serve_config)
    body = {"model": model_id, "messages": [{"role": "user", "content": "Think."}], "stream": True}
    raw = http("POST", f"{url}/chat/completions", {**body, "reasoning_effort": "low", "seed": 4})
    events = [json.loads(e.removeprefix("data: ")) for e in raw.text.split("\n\n") if e and e != "data: [DONE]"]
    with _store(serve_config) as store:
        served = store.request(events[0]["id"])
    assert served is not None and len(served.choices[0].reasoning) > 40
    assert served.choices[0].reasoning not in raw.text and "reasoning_content" not in raw.text
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == served.choices[0].answer

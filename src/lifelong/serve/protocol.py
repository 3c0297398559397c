"""The OpenAI wire format: request models, error bodies and response/chunk builders.

Requests are validated with pydantic; unknown fields are accepted and ignored, as OpenAI clients
send many optional ones. Sampling parameters are checked against OpenAI's ranges (temperature 0..2,
top_p 0..1, penalties -2..2, up to 4 stop strings; `top_k`, vLLM's extension, -1 or 0 = off).
Every error is `{"error": {"message", "type", "param", "code"}}` with the HTTP status OpenAI would
use: 400 bad request, 401 bad key, 403 not allowed, 404 unknown model or id, 413 body too large,
415 a document of a type that cannot be read, 500 our fault.

Extensions, all optional: `memory: false` in a request leaves the tenant's memory (corrections and
documents, recalled into the prompt) out of it; `memory_contrast` (0..10) sets how far its reply
leans on what was recalled (context-aware decoding; the server's `memory.contrast` by default).
`reasoning: {"summary": "auto"}` in a request asks for a short summary of the private reasoning
(`message.reasoning_summary`); with `--expose-reasoning` the raw chain is in
`message.reasoning_content` (the field vLLM and DeepSeek use). Responses carry the tenant's adapter
version in `adapter_version` and `system_fingerprint` ("adapter-v3").

Streaming is built from three pieces the app sends as they happen: `stream_start` (a role chunk
per choice), `stream_piece` (content deltas while generating) and `stream_end` (what was not yet
streamed, the finish chunks, usage, then [DONE]; sent once the choices are stored).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lifelong.types import Completion, DocumentRecord, FeedbackKind, MemoryItem, MemoryKind, StopReason

# none = plain chat; minimal = the answer-line protocol with no thinking budget (OpenAI's "almost none")
EFFORTS = ("none", "minimal", "low", "medium", "high")


class ApiError(Exception):
    """An error for the client, rendered as an OpenAI error body with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid request")
    return ApiError(400, f"{param}: {msg}" if param else str(msg), param=param, code="invalid_value")


def parse_json(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {max_bytes}", code="request_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return data


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str
    text: str | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type != "text" or p.text is None:
                raise ApiError(400, f"content part of type {p.type!r} is not supported; send text", param="messages")
            parts.append(p.text)
        return "".join(parts)


class StreamOptions(_Open):
    include_usage: bool = False


class ReasoningOptions(_Open):
    summary: str | None = None  # "auto" | "concise" | "detailed" ask for a summary


class ChatRequest(_Open):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    reasoning_effort: str | None = None
    reasoning: ReasoningOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    memory: bool | None = None  # extension: false = no recalled memory in this request's prompt
    # extension: how far the reply leans on recalled memory (the server's memory.contrast otherwise)
    memory_contrast: float | None = Field(default=None, ge=0.0, le=10.0)

    @field_validator("reasoning_effort")
    @classmethod
    def _effort(cls, v: str | None) -> str | None:
        if v is not None and v not in EFFORTS:
            raise ValueError(f"must be one of {', '.join(EFFORTS)}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of up to 4 strings")
        if len(v) > 4:
            raise ValueError(f"at most 4 stop strings are allowed, got {len(v)}")
        if any(s == "" for s in v):
            raise ValueError("stop strings must not be empty")
        return v or None

    @model_validator(mode="after")
    def _last_is_user(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be from the user")
        return self

    @property
    def wants_summary(self) -> bool:
        return self.reasoning is not None and self.reasoning.summary not in (None, "none")


class FeedbackRequest(_Open):
    """Feedback on one choice of a completion: exactly one of rating, score or correction."""

    completion_id: str = Field(min_length=1, max_length=200)
    choice: int = Field(default=0, ge=0)
    rating: Literal["up", "down"] | None = None
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    correction: str | None = Field(default=None, min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackRequest:
        given = [k for k in ("rating", "score", "correction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rating ('up'/'down'), score (0..1) or correction (text)")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError("score must be finite")
        return self

    @property
    def kind(self) -> FeedbackKind:
        if self.rating:
            return FeedbackKind.THUMBS
        return FeedbackKind.SCORE if self.score is not None else FeedbackKind.CORRECTION

    @property
    def reward(self) -> float | None:
        if self.rating is not None:
            return 1.0 if self.rating == "up" else 0.0
        return self.score


class DocumentRequest(_Open):
    """POST /v1/documents as JSON: a document's name (its suffix says Markdown or text) and its text."""

    name: str = Field(min_length=1, max_length=256)
    text: str


# ---- responses -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """One answered choice as the client may see it."""

    completion: Completion
    reasoning_tokens: int
    summary: str | None  # when the client asked for one
    reasoning: str | None  # raw chain, only with --expose-reasoning


@dataclass(frozen=True)
class StreamHead:
    """What every chunk of one streamed completion repeats; known once generation starts."""

    id: str
    created: int
    model: str
    adapter_version: int


@dataclass(frozen=True)
class ChatResult:
    id: str
    created: int
    model: str
    adapter_version: int
    prompt_tokens: int
    choices: tuple[Choice, ...]

    @property
    def head(self) -> StreamHead:
        return StreamHead(self.id, self.created, self.model, self.adapter_version)


def finish_reason(c: Completion) -> str:
    """OpenAI's finish reason: "length" when the reply hit its token limit (a protocol answer's
    budget or a plain reply's max_tokens, both ANSWER_BUDGET), else "stop" (end of turn, answer
    line or stop string)."""
    return "length" if c.stop == StopReason.ANSWER_BUDGET else "stop"


def _usage(r: ChatResult) -> dict[str, Any]:
    completion = sum(len(ch.completion.token_ids) for ch in r.choices)
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": r.prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": sum(ch.reasoning_tokens for ch in r.choices)},
    }


def _message_extras(ch: Choice) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if ch.summary is not None:
        extra["reasoning_summary"] = ch.summary
    if ch.reasoning is not None:
        extra["reasoning_content"] = ch.reasoning
    return extra


def completion_body(r: ChatResult) -> dict[str, Any]:
    return {
        "id": r.id,
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "system_fingerprint": f"adapter-v{r.adapter_version}",
        "adapter_version": r.adapter_version,
        "choices": [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": ch.completion.answer,
                    "refusal": None,
                    **_message_extras(ch),
                },
                "logprobs": None,
                "finish_reason": finish_reason(ch.completion),
            }
            for i, ch in enumerate(r.choices)
        ],
        "usage": _usage(r),
    }


def _chunk(head: StreamHead, choices: list[dict[str, Any]], include_usage: bool, **extra: Any) -> str:
    chunk = {
        "id": head.id,
        "object": "chat.completion.chunk",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": f"adapter-v{head.adapter_version}",
        "adapter_version": head.adapter_version,
        "choices": choices,
        **({"usage": None} if include_usage else {}),
        **extra,
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _delta(head: StreamHead, i: int, d: dict[str, Any], include_usage: bool, finish: str | None = None) -> str:
    return _chunk(head, [{"index": i, "delta": d, "logprobs": None, "finish_reason": finish}], include_usage)


def stream_start(head: StreamHead, n: int, include_usage: bool) -> Iterator[str]:
    """The first chunk of each choice: its role, no content yet."""
    for i in range(n):
        yield _delta(head, i, {"role": "assistant", "content": ""}, include_usage)


def stream_piece(head: StreamHead, i: int, text: str, include_usage: bool) -> str:
    """A content delta of choice i, sent while it is being generated."""
    return _delta(head, i, {"content": text}, include_usage)


def stream_end(r: ChatResult, include_usage: bool, sent: Sequence[str]) -> Iterator[str]:
    """After the choices are stored: for each choice the part of its answer not yet sent (`sent[i]`
    is what was; all of it for replies that do not stream) with the reasoning extras, its finish
    chunk; then the usage chunk if asked for, and [DONE]."""
    head = r.head
    for i, ch in enumerate(r.choices):
        answer = ch.completion.answer
        rest = answer[len(sent[i]) :] if answer.startswith(sent[i]) else ""
        extras = _message_extras(ch)
        if rest or extras:
            yield _delta(head, i, {"content": rest, **extras}, include_usage)
        yield _delta(head, i, {}, include_usage, finish_reason(ch.completion))
    if include_usage:
        yield _chunk(head, [], False, usage=_usage(r))
    yield "data: [DONE]\n\n"


def stream_error(err: ApiError) -> str:
    """An error after streaming began (the status line is sent already): OpenAI's error body as an
    event; no [DONE] follows."""
    return f"data: {json.dumps(err.body())}\n\n"


def model_body(model: str, tenant: str, version: int, created: int, updated: float | None) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "lifelong",
        "tenant": tenant,
        "adapter_version": version,
        "adapter_updated": updated,
    }


def now() -> int:
    return int(time.time())


# ---- memory and documents (lifelong's own endpoints) ------------------------------------------------
def memory_source(item: MemoryItem) -> dict[str, Any]:
    """Where an item came from: a document and offset, a request and its feedback, or episodes."""
    if item.kind == MemoryKind.DOCUMENT:
        return {"document_id": item.provenance[0] if item.provenance else None, "offset": item.offset}
    if item.kind in (MemoryKind.CORRECTION, MemoryKind.RATED_ANSWER) and len(item.provenance) == 2:
        return {"completion_id": item.provenance[0], "feedback_id": item.provenance[1]}
    return {"episodes": list(item.provenance)}


def memory_body(item: MemoryItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "memory_item",
        "kind": str(item.kind),
        "text": item.text,
        "source": memory_source(item),
        "created": item.created,
        "superseded_by": item.superseded_by,
        "consolidated": item.consolidated_version is not None,
        "consolidated_version": item.consolidated_version,
        "deleted": item.deleted,
        # Deleted after it was consolidated: the version whose consolidation trained its absence.
        "forgotten_version": item.forgotten_version,
    }


def document_body(doc: DocumentRecord, superseded: Sequence[str] = ()) -> dict[str, Any]:
    body = {
        "id": doc.id,
        "object": "document",
        "name": doc.name,
        "media_type": doc.media_type,
        "chars": doc.chars,
        "chunks": doc.chunks,
        "created": doc.created,
    }
    if superseded:
        body["superseded"] = list(superseded)
    return body


def deleted_body(id: str, object: str, consolidated_version: int | None) -> dict[str, Any]:
    """A deletion's answer: whether it was already consolidated into the weights, and into which
    adapter version (a document: its newest chunk's). A later consolidation then trains its absence;
    `GET /v1/memory?include_deleted=true` shows the version that did as `forgotten_version`."""
    return {
        "id": id,
        "object": object,
        "deleted": True,
        "consolidated": consolidated_version is not None,
        "consolidated_version": consolidated_version,
    }


def parse_form(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body: field name -> (file name or None, bytes), with the standard
    library's MIME parser (no extra dependency)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise ApiError(400, "the multipart body could not be parsed (no parts found)", code="invalid_form")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields

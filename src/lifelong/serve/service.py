"""What the endpoints do, without HTTP: answer a chat request, take feedback, list models and flags.

Order of a chat request, which is what makes "stored before acknowledged" hold:
  validate -> tokenise (reject oversized prompts) -> store the request -> generate with the tenant's
  adapter -> monitor the reasoning -> store choices + flags (one transaction) -> reply.
A client gets a finished completion only after its choices are durable, so any id it can send
feedback for survives a kill -9 (a stream shows the id early, but feedback on it is refused until
its choices are stored, and the stream ends only after that). Feedback is stored before it is
acknowledged.

Memory (memory/recall.py): the tenant's items that match the last user message are recalled into the
prompt as taught exchanges or quoted context (none recalled: the prompt is exactly the one
without memory), and the stored request's `generation` names them. A correction, or an answer rated at least
`memory.remember_ratings_from`, becomes a memory item in the transaction that stores the feedback,
so the next request can use it. Documents (POST /v1/documents) are chunked and indexed the same way.

Two ways to answer. At reasoning effort none (the default) the request is plain chat: the client's
messages through the model's own chat template, the reply as the model writes it (streamable token
by token). At minimal/low/medium/high the reasoning protocol applies (policy.py): its system prompt
first, private reasoning (none at minimal), then the forced "Answer:" line. Sampling parameters a
request leaves out come from the model's generation_config: greedy unless it says to sample.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lifelong.guard.monitor import Monitor, TextMonitor, append_flags
from lifelong.memory.documents import DocumentError, ingest, media_type_of, read_document
from lifelong.memory.recall import normalise_question, recall, with_notes
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import GenerationConfig, Policy, TextFn
from lifelong.serve.adapters import AdapterBank
from lifelong.serve.answering import FLAG_FILE, AnsweringFlag
from lifelong.serve.config import ServeConfig
from lifelong.serve.engine import Engine
from lifelong.serve.monitor import summarize_reasoning
from lifelong.serve.protocol import ApiError, ChatRequest, ChatResult, Choice, FeedbackRequest, StreamHead
from lifelong.types import (
    Completion,
    DocumentRecord,
    Feedback,
    FeedbackKind,
    Flag,
    MemoryItem,
    MemoryKind,
    RequestStatus,
    ServedRequest,
    StopReason,
)

# DocumentError.reason -> HTTP status
_DOCUMENT_STATUS = {"unsupported": 415, "too_large": 413}


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that names no temperature, top_p or top_k samples with (0 = greedy)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0


def sampling_defaults(generation_config: Any) -> SamplingDefaults:
    """The model's own sampling settings, as `model.generate` reads them: greedy unless do_sample is
    set; then its temperature, top_p and top_k, each off (1.0, 1.0, 0) where it sets none."""
    gc = generation_config
    if gc is None or not getattr(gc, "do_sample", False):
        return SamplingDefaults()
    temperature, top_p, top_k = (getattr(gc, k, None) for k in ("temperature", "top_p", "top_k"))
    return SamplingDefaults(
        float(temperature) if temperature is not None else 1.0,
        float(top_p) if top_p is not None else 1.0,
        max(int(top_k), 0) if top_k is not None else 0,
    )


class ChatService:
    def __init__(
        self,
        config: ServeConfig,
        policy: Policy,
        store: ExperienceStore,
        bank: AdapterBank,
        model_id: str,
        monitor: Monitor | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        self.bank = bank
        pausing = config.learner.enabled and config.learner.pause_while_answering
        answering = AnsweringFlag(config.store / FLAG_FILE, writer=True) if pausing else None
        self.engine = Engine(policy, bank, answering)
        self.model_id = model_id
        self.monitor = monitor or TextMonitor()
        self.defaults = sampling_defaults(getattr(policy.model, "generation_config", None))
        self.created = int(time.time())
        self.flag_log = config.store / "flags.jsonl"
        self._flag_log_lock = threading.Lock()

    # ---- chat -----------------------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model != self.model_id:
            raise ApiError(
                404,
                f"The model {model!r} does not exist; this server serves {self.model_id!r} (see /v1/models)",
                code="model_not_found",
                param="model",
            )

    def prepare(self, tenant: str, req: ChatRequest) -> tuple[list[int], GenerationConfig, list[MemoryItem]]:
        """Everything that can reject a request, before anything is stored; and the recalled memory."""
        self.check_model(req.model)
        if req.n > self.config.max_n:
            raise ApiError(400, f"n={req.n} is more than this server's limit of {self.config.max_n}", param="n")
        max_tokens = req.max_completion_tokens or req.max_tokens or self.config.answer_tokens
        effort = req.reasoning_effort or self.config.reasoning_effort
        d = self.defaults
        if req.temperature is not None:
            temperature = req.temperature
        elif req.top_p is not None or req.top_k is not None:  # asks to sample, from the model's default
            temperature = d.temperature or 1.0
        else:
            temperature = d.temperature
        gen = GenerationConfig(
            reasoning_effort="none" if effort == "minimal" else effort,
            answer_tokens=min(max_tokens, self.config.max_answer_tokens),
            temperature=temperature,
            protocol=effort != "none",  # "minimal": the answer-line protocol with no time to think
            top_p=d.top_p if req.top_p is None else req.top_p,
            top_k=d.top_k if req.top_k is None else max(req.top_k, 0),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=tuple(req.stop or ()),
        )
        recalled = self.recall(tenant, req)
        prompt_ids = self.encode(req, gen.protocol, recalled)
        if len(prompt_ids) > self.config.max_prompt_tokens and recalled:
            recalled = []  # memory must not make a request that fits fail: answer without it
            prompt_ids = self.encode(req, gen.protocol)
        if recalled:  # only a prompt that holds recalled items is decoded against its bare twin
            contrast = req.memory_contrast if req.memory_contrast is not None else self.config.memory.contrast
            gen = replace(gen, memory_contrast=contrast)
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this server accepts at most {self.config.max_prompt_tokens}",
                code="context_length_exceeded",
                param="messages",
            )
        return prompt_ids, gen, recalled

    def recall(self, tenant: str, req: ChatRequest) -> list[MemoryItem]:
        """The tenant's memory items for this request's last user message (none if memory is off)."""
        if not self.config.memory.enabled or req.memory is False:
            return []
        return recall(self.store, tenant, req.messages[-1].text(), self.config.memory)

    def encode(self, req: ChatRequest, protocol: bool = True, memory: Sequence[MemoryItem] = ()) -> list[int]:
        """The prompt's token ids (`Policy.chat_ids`): plain chat, or the reasoning protocol, with
        recalled memory put in by `with_notes` (taught exchanges before the question, anything else
        as quoted context in it)."""
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return self.policy.chat_ids(with_notes(messages, memory), protocol)

    def chat(
        self,
        tenant: str,
        req: ChatRequest,
        body: dict[str, Any],
        on_start: Callable[[StreamHead], None] | None = None,
        on_text: TextFn | None = None,
    ) -> ChatResult:
        """Answer and store. For streaming: `on_start(head)` once the request is stored and its
        adapter version known; `on_text(choice, piece)` as plain replies grow. Both are called
        before the choices are stored; the returned result means they are."""
        prompt_ids, gen, recalled = self.prepare(tenant, req)
        rid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        generation = {**asdict(gen), "think_budget": gen.think_budget, "seed": req.seed, "n": req.n}
        if recalled:
            generation["memory"] = [item.id for item in recalled]  # provenance: what was in context
        self.store.add_request(rid, tenant, self.model_id, body, prompt_ids, generation)

        def started(version: int) -> None:
            if on_start is not None:
                on_start(StreamHead(rid, created, self.model_id, version))

        # the prompt without its recalled items, which the reply leans away from (`memory_contrast`)
        bare_ids = self.encode(req, gen.protocol) if recalled and gen.memory_contrast > 0 else None
        try:
            completions, version = self.engine.generate(
                tenant, prompt_ids, gen, req.n, req.seed, started, on_text, bare_ids
            )
            flags = self._monitor(rid, tenant, completions)
            self.store.complete_request(rid, completions, version, flags)
        except BaseException:
            self.store.fail_request(rid)
            raise
        self._log_flags(flags)
        choices = tuple(self._choice(c, gen, req.wants_summary) for c in completions)
        return ChatResult(rid, created, self.model_id, version, len(prompt_ids), choices)

    def _reasoning_tokens(self, c: Completion) -> int:
        text = c.reasoning.strip()
        return len(self.policy.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    def _choice(self, c: Completion, gen: GenerationConfig, summary: bool) -> Choice:
        n = self._reasoning_tokens(c)
        return Choice(
            completion=c,
            reasoning_tokens=n,
            summary=summarize_reasoning(c.reasoning, n, gen.think_budget, c.stop == StopReason.THINK_BUDGET)
            if summary
            else None,
            reasoning=c.reasoning if self.config.expose_reasoning else None,
        )

    def _monitor(self, rid: str, tenant: str, completions: list[Completion]) -> list[Flag]:
        now = time.time()
        return [
            Flag(rid, i, tenant, o.kind, o.detail, now)
            for i, c in enumerate(completions)
            for o in self.monitor.check(c.reasoning, c.answer)
        ]

    def _log_flags(self, flags: list[Flag]) -> None:
        with self._flag_log_lock:
            append_flags(self.flag_log, flags)

    # ---- feedback -------------------------------------------------------------------------------
    def feedback(self, tenant: str, req: FeedbackRequest) -> Feedback:
        served = self.store.request(req.completion_id)
        # Another tenant's completion is reported as unknown: ids must not leak across tenants.
        if served is None or served.tenant != tenant or served.status != RequestStatus.COMPLETED:
            raise ApiError(
                404, f"No completion with id {req.completion_id!r}", code="completion_not_found", param="completion_id"
            )
        if req.choice >= len(served.choices):
            raise ApiError(
                400,
                f"choice {req.choice} is out of range: completion {req.completion_id} has {len(served.choices)}",
                param="choice",
            )
        return self.store.add_feedback(
            req.completion_id,
            req.choice,
            tenant,
            req.kind,
            reward=req.reward,
            correction=req.correction,
            holdout_every=self.config.learner.holdout_every,
            memory=self._memory_of(served, req),
        )

    def _memory_of(self, served: ServedRequest, req: FeedbackRequest) -> MemoryItem | None:
        """The memory item a feedback makes: a correction, or a well-rated answer, of the request's
        last user message (its normalised text is the key a newer item of the same question supersedes)."""
        try:
            question = ChatRequest.model_validate(served.body).messages[-1].text().strip()
        except (ValueError, ApiError):  # stored bodies were validated once; an old store may differ
            return None
        if req.kind == FeedbackKind.CORRECTION and req.correction:
            kind, answer = MemoryKind.CORRECTION, req.correction.strip()
        elif req.reward is not None and req.reward >= self.config.memory.remember_ratings_from:
            kind, answer = MemoryKind.RATED_ANSWER, served.choices[req.choice].answer.strip()
        else:
            return None
        if not question or not answer:
            return None
        text = f"Q: {question}\nA: {answer}"
        # provenance is set by the store to (request id, feedback id) once the feedback has its id
        return MemoryItem(
            uuid.uuid4().hex, kind, "chat", normalise_question(question), text, (), time.time(), tenant=served.tenant
        )

    # ---- memory and documents -----------------------------------------------------------------
    def add_document(
        self, tenant: str, name: str, data: bytes | None = None, text: str | None = None
    ) -> tuple[DocumentRecord, list[str]]:
        """Read (a file's `data`, by its name's suffix) or take (`text`), chunk and store one document
        in one transaction; a bad document gets a 4xx and nothing is stored."""
        limit = self.config.max_document_bytes
        try:
            size = len(data) if data is not None else len((text or "").encode())
            if size > limit:
                raise DocumentError(
                    f"the document is {size} bytes; the limit is {limit}", "split it into parts", "too_large"
                )
            if not name.strip():
                raise DocumentError("the document has no name", "give it a name such as notes.md", "bad_name")
            if data is not None:
                media_type, text = media_type_of(name), read_document(name, data)
            else:
                markdown = name.lower().endswith((".md", ".markdown"))
                media_type = "text/markdown" if markdown else "text/plain"
            return ingest(self.store, tenant, name, text or "", media_type)
        except DocumentError as exc:
            code = {"unsupported": "unsupported_media_type", "too_large": "document_too_large"}.get(
                exc.reason, f"{exc.reason}_document"
            )
            raise ApiError(_DOCUMENT_STATUS.get(exc.reason, 400), f"{exc.problem}; {exc.fix}", code=code) from exc

    def document(self, tenant: str, document_id: str) -> tuple[DocumentRecord, list[MemoryItem]]:
        doc = self.store.document(tenant, document_id)
        if doc is None:  # another tenant's id is reported as unknown: ids must not leak
            raise ApiError(404, f"No document with id {document_id!r}", code="document_not_found")
        return doc, self.store.document_chunks(doc.id)

    def delete_document(self, tenant: str, document_id: str) -> tuple[DocumentRecord, list[MemoryItem]]:
        found = self.store.delete_document(tenant, document_id)
        if found is None:
            raise ApiError(404, f"No document with id {document_id!r}", code="document_not_found")
        return found

    def delete_memory(self, tenant: str, item_id: str) -> MemoryItem:
        item = self.store.delete_memory(tenant, item_id)
        if item is None:
            raise ApiError(404, f"No memory item with id {item_id!r}", code="memory_item_not_found")
        return item

    # ---- models and operator views ------------------------------------------------------------------
    def adapter_of(self, tenant: str) -> tuple[int, float | None]:
        live = self.bank.get(tenant)
        return live.version, (live.loaded if live.version else None)

    def flags(self, after: int, limit: int, tenant: str | None) -> list[dict[str, Any]]:
        # `request_id` on the wire: a served flag's source is the request it was raised on
        return [
            {"id": i, "request_id": f.source, "index": f.index, "tenant": f.tenant, "kind": f.kind,
             "detail": f.detail, "created": f.created}
            for i, f in self.store.flags(tenant=tenant, after=after, limit=limit)
        ]  # fmt: skip

    def retrieve(self, tenant: str, completion_id: str) -> ChatResult:
        """A stored completion, as it was answered (GET /v1/chat/completions/{id})."""
        served = self.store.request(completion_id)
        if served is None or served.tenant != tenant or served.status != RequestStatus.COMPLETED:
            raise ApiError(404, f"No completion with id {completion_id!r}", code="completion_not_found")
        gen = GenerationConfig(
            thinking_tokens=int(served.generation.get("think_budget", 0)),
            answer_tokens=int(served.generation.get("answer_tokens", 1)),
        )
        choices = tuple(self._choice(c, gen, summary=False) for c in served.choices)
        version = int(served.adapter_version or 0)
        return ChatResult(served.id, int(served.received), served.model, version, len(served.prompt_ids), choices)


def model_id_for(name: str) -> str:
    """The id clients pass as `model`: the default model's name, or a model folder's name."""
    return Path(name).name if "/" in name else name

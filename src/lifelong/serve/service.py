"""What the endpoints do, without HTTP: answer a chat request, take feedback, list models and flags.

Order of a chat request, which is what makes "stored before acknowledged" hold:
  validate -> tokenise (reject oversized prompts) -> store the request -> generate with the tenant's
  adapter -> monitor the reasoning -> store choices + flags (one transaction) -> reply.
A client gets a finished completion only after its choices are durable, so any id it can send
feedback for survives a kill -9 (a stream shows the id early, but feedback on it is refused until
its choices are stored, and the stream ends only after that). Feedback is stored before it is
acknowledged.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifelong.guard.monitor import Monitor, TextMonitor, append_flags
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import GenerationConfig, Policy, TextFn
from lifelong.serve.adapters import AdapterBank
from lifelong.serve.config import ServeConfig
from lifelong.serve.engine import Engine
from lifelong.serve.monitor import summarize_reasoning
from lifelong.serve.protocol import ApiError, ChatRequest, ChatResult, Choice, FeedbackRequest, StreamHead
from lifelong.types import Completion, Feedback, Flag, RequestStatus, StopReason


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
        self.engine = Engine(policy, bank)
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

    def prepare(self, tenant: str, req: ChatRequest) -> tuple[list[int], GenerationConfig]:
        """Everything that can reject a request, before anything is stored."""
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
        prompt_ids = self.encode(req, gen.protocol)
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this server accepts at most {self.config.max_prompt_tokens}",
                code="context_length_exceeded",
                param="messages",
            )
        return prompt_ids, gen

    def encode(self, req: ChatRequest, protocol: bool = True) -> list[int]:
        """The prompt's token ids (`Policy.chat_ids`): plain chat, or the reasoning protocol."""
        return self.policy.chat_ids([{"role": m.role, "content": m.text()} for m in req.messages], protocol)

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
        prompt_ids, gen = self.prepare(tenant, req)
        rid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        generation = {**asdict(gen), "think_budget": gen.think_budget, "seed": req.seed, "n": req.n}
        self.store.add_request(rid, tenant, self.model_id, body, prompt_ids, generation)

        def started(version: int) -> None:
            if on_start is not None:
                on_start(StreamHead(rid, created, self.model_id, version))

        try:
            completions, version = self.engine.generate(tenant, prompt_ids, gen, req.n, req.seed, started, on_text)
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
        )

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

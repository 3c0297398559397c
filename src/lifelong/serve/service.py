"""What the endpoints do, without HTTP: answer a chat request, take feedback, list models and flags.

Order of a chat request, which is what makes "stored before acknowledged" hold:
  validate -> tokenise (reject oversized prompts) -> store the request -> generate with the tenant's
  adapter -> monitor the reasoning -> store choices + flags (one transaction) -> reply.
A client sees a completion id only after its choices are durable, so any id it can send feedback
for survives a kill -9. Feedback is stored (one transaction) before it is acknowledged.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifelong.model.policy import GenerationConfig, Policy
from lifelong.serve.adapters import AdapterBank
from lifelong.serve.config import ServeConfig
from lifelong.serve.engine import Engine
from lifelong.serve.monitor import Monitor, TextMonitor, summarize_reasoning
from lifelong.serve.protocol import ApiError, ChatRequest, ChatResult, Choice, FeedbackRequest
from lifelong.serve.store import Feedback, Flag, ServeStore
from lifelong.types import Completion, StopReason


class ChatService:
    def __init__(
        self,
        config: ServeConfig,
        policy: Policy,
        store: ServeStore,
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
        gen = GenerationConfig(
            reasoning_effort="none" if effort == "minimal" else effort,
            answer_tokens=min(max_tokens, self.config.max_answer_tokens),
            temperature=1.0 if req.temperature is None else req.temperature,
        )
        prompt_ids = self.encode(req)
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this server accepts at most {self.config.max_prompt_tokens}",
                code="context_length_exceeded",
                param="messages",
            )
        return prompt_ids, gen

    def encode(self, req: ChatRequest) -> list[int]:
        """The chat template with the reasoning protocol's system prompt first; a client's system or
        developer message is appended to it, so the answer-marker protocol always holds."""
        system = [m.text() for m in req.messages if m.role in ("system", "developer")]
        messages = [{"role": "system", "content": "\n".join([self.policy.system_prompt, *system])}]
        messages += [{"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")]
        ids = self.policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]  # type: ignore[index]
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def chat(self, tenant: str, req: ChatRequest, body: dict[str, Any]) -> ChatResult:
        prompt_ids, gen = self.prepare(tenant, req)
        rid = "chatcmpl-" + uuid.uuid4().hex
        generation = {**asdict(gen), "think_budget": gen.think_budget, "seed": req.seed, "n": req.n}
        self.store.add_request(rid, tenant, self.model_id, body, prompt_ids, generation)
        try:
            completions, version = self.engine.generate(tenant, prompt_ids, gen, req.n, req.seed)
            flags = self._monitor(rid, tenant, completions)
            self.store.complete_request(rid, completions, version, flags)
        except BaseException:
            self.store.fail_request(rid)
            raise
        self._log_flags(flags)
        choices = tuple(self._choice(c, gen, req.wants_summary) for c in completions)
        return ChatResult(rid, int(time.time()), self.model_id, version, len(prompt_ids), choices)

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
        if not flags:
            return
        with self._flag_log_lock, open(self.flag_log, "a") as f:
            for flag in flags:
                f.write(json.dumps(asdict(flag)) + "\n")

    @staticmethod
    def pieces(answer: str) -> list[str]:
        """The answer cut into word-sized deltas for streaming (they concatenate back to it)."""
        return re.findall(r"\s*\S+\s*", answer) or ([answer] if answer else [])

    # ---- feedback -------------------------------------------------------------------------------
    def feedback(self, tenant: str, req: FeedbackRequest) -> Feedback:
        served = self.store.request(req.completion_id)
        # Another tenant's completion is reported as unknown: ids must not leak across tenants.
        if served is None or served.tenant != tenant or served.status != "completed":
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
        return [{"id": i, **asdict(f)} for i, f in self.store.flags(tenant=tenant, after=after, limit=limit)]

    def retrieve(self, tenant: str, completion_id: str) -> ChatResult:
        """A stored completion, as it was answered (GET /v1/chat/completions/{id})."""
        served = self.store.request(completion_id)
        if served is None or served.tenant != tenant or served.status != "completed":
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

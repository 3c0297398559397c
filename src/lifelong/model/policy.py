"""The policy: a pretrained causal LM with LoRA adapters, answering with a reasoning budget.

Reasoning protocol. The system prompt asks the model to think briefly and end with a line
`Answer: <answer>`. `reasoning_effort` sets how many tokens it may think. If it runs out of budget,
or ends its turn without an answer line, the runtime appends the marker "Answer:" itself and samples
only the answer (budget forcing, as in s1). Inserted tokens carry loss mask 0: they are never a
training target. The environment only ever sees the answer, never the chain of thought, so no reward
can read the reasoning.

Context is kept as token ids from the first turn to the last, so the learner scores exactly the
tokens the sampler saw (no re-templating that could drop earlier reasoning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.model.sampler import STOP, Force, sample
from lifelong.types import Completion, StopReason

ANSWER_MARKER = "Answer:"
EFFORT_BUDGETS = {"none": 0, "low": 32, "medium": 128, "high": 512}
SYSTEM_PROMPT = "Think briefly, then end with the line 'Answer: <answer>'."


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample. `thinking_tokens`, when set, overrides the budget of `reasoning_effort`."""

    reasoning_effort: str = "low"
    thinking_tokens: int | None = None
    answer_tokens: int = 16
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.thinking_tokens is None and self.reasoning_effort not in EFFORT_BUDGETS:
            raise ConfigError(
                f"unknown reasoning_effort {self.reasoning_effort!r}",
                f"use one of {', '.join(EFFORT_BUDGETS)} or set thinking_tokens",
            )
        if self.thinking_tokens is not None and self.thinking_tokens < 0:
            raise ConfigError("thinking_tokens must be >= 0", "use 0 to answer without reasoning")
        if self.answer_tokens < 1:
            raise ConfigError("answer_tokens must be >= 1", "answers need at least one token")
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0", "use 0 for greedy decoding")

    @property
    def think_budget(self) -> int:
        return self.thinking_tokens if self.thinking_tokens is not None else EFFORT_BUDGETS[self.reasoning_effort]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on every linear layer (the unit of learning). Defaults suit a 135M model."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0


class Policy:
    """Model + tokenizer + adapters. The sampler and the learner share this one module, so the
    sampler always acts with the latest adapters (no weight sync to go stale)."""

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "model",
        lora: LoraSettings = LoraSettings(),
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.system_prompt = system_prompt
        if not isinstance(model, PeftModel):
            config = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, config)
        self.model: PeftModel = model
        self.version = 0  # bumped by the learner after every kept update
        eos = {tokenizer.eos_token_id}
        if getattr(model.generation_config, "eos_token_id", None) is not None:
            gen_eos = model.generation_config.eos_token_id
            eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        self.eos_ids: set[int] = {int(e) for e in eos if e is not None}
        self.pad_id: int = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._marker_ids = self._encode("\n" + ANSWER_MARKER)
        self._bare_marker_ids = self._encode(ANSWER_MARKER)

    # ---- prompts -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def start(self, observation: str, system: str | None = None) -> list[int]:
        """Token ids of a new conversation, ending where the assistant starts to speak."""
        messages = [
            {"role": "system", "content": system or self.system_prompt},
            {"role": "user", "content": observation},
        ]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]  # type: ignore[index]
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def extend(self, context: Sequence[int], completion: Completion, observation: str) -> list[int]:
        """Context for the next turn: previous context + the reply as sampled + the new user message."""
        marker = "\x00REPLY\x00"
        messages = [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": marker},
            {"role": "user", "content": observation},
        ]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        suffix = str(text).split(marker, 1)[1]
        ids = list(context) + list(completion.token_ids)
        if completion.token_ids and completion.token_ids[-1] in self.eos_ids:
            eos_text = str(self.tokenizer.decode([completion.token_ids[-1]]))
            if suffix.startswith(eos_text):
                suffix = suffix[len(eos_text) :]
        return ids + self._encode(suffix)

    def answer_start(self, completion: Completion) -> int:
        """Index of the first token after the answer marker (len(tokens) if there is none)."""
        ids = completion.token_ids
        low, high = 0, len(ids)
        if ANSWER_MARKER not in self._text(ids):
            return len(ids)
        while low < high:  # smallest prefix whose text contains the marker
            mid = (low + high) // 2
            if ANSWER_MARKER in self._text(ids[:mid]):
                high = mid
            else:
                low = mid + 1
        return low

    def answer_mask(self, completion: Completion) -> tuple[int, ...]:
        """The completion's loss mask with everything before the answer zeroed: the chain of
        thought is never a target of distillation or anchoring."""
        start = self.answer_start(completion)
        return tuple(m if i >= start else 0 for i, m in enumerate(completion.loss_mask))

    # ---- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def respond(
        self,
        contexts: Sequence[Sequence[int]],
        gen: GenerationConfig = GenerationConfig(),
        generator: torch.Generator | None = None,
    ) -> list[Completion]:
        """Reason within budget, then answer. One Completion per context, in order."""
        budget = gen.think_budget
        text = self._text
        answer_from: dict[int, int] = {}  # row -> token count when its answer started
        reason: dict[int, StopReason] = {}  # why the reasoning ended, when it was cut short

        def control(row: int, ids: list[int]) -> Force | str | None:
            if row not in answer_from:
                if ids[-1] in self.eos_ids:  # ended its turn without an answer: drop EOS, force one
                    reason[row] = StopReason.ENDED_WITHOUT_ANSWER
                    marker = self._marker_ids if len(ids) > 1 else self._bare_marker_ids
                    answer_from[row] = len(ids) - 1 + len(marker)
                    return Force(tuple(marker), replace_last=True)
                if ANSWER_MARKER in text(ids):
                    answer_from[row] = len(ids)
                elif len(ids) >= budget:
                    reason[row] = StopReason.THINK_BUDGET
                    answer_from[row] = len(ids) + len(self._marker_ids)
                    return Force(tuple(self._marker_ids))
                return None
            rest = text(ids).split(ANSWER_MARKER, 1)[-1]
            if "\n" in rest.lstrip() or len(ids) - answer_from[row] >= gen.answer_tokens:
                return STOP
            return None

        prefix: list[int] = []
        if budget == 0:  # no reasoning at all: the answer marker opens the reply
            prefix = list(self._bare_marker_ids)
            contexts = [list(c) + prefix for c in contexts]
            answer_from.update({i: 0 for i in range(len(contexts))})
            reason.update({i: StopReason.THINK_BUDGET for i in range(len(contexts))})
        was_training = self.model.training
        self.model.eval()
        try:
            rows = sample(
                self.model,
                contexts,
                max_new_tokens=budget + len(self._marker_ids) + gen.answer_tokens,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                temperature=gen.temperature,
                generator=generator,
                control=control,
            )
        finally:
            self.model.train(was_training)
        completions = []
        for i, row in enumerate(rows):
            ids = prefix + row.token_ids
            decoded = text(ids)
            at = decoded.find(ANSWER_MARKER)
            reasoning, rest = (decoded[:at], decoded[at + len(ANSWER_MARKER) :]) if at >= 0 else (decoded, "")
            answer = rest.lstrip().split("\n", 1)[0].strip()
            finished = row.ended == "eos" or "\n" in rest.lstrip()
            stop = reason.get(i, StopReason.ANSWERED) if finished else StopReason.ANSWER_BUDGET
            completions.append(
                Completion(
                    token_ids=tuple(ids),
                    logprobs=tuple([0.0] * len(prefix) + row.logprobs),
                    loss_mask=tuple([0] * len(prefix) + [0 if f else 1 for f in row.forced]),
                    reasoning=reasoning.strip(),
                    answer=answer,
                    stop=stop,
                )
            )
        return completions

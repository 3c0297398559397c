"""The policy: a pretrained causal LM with LoRA adapters, answering with a reasoning budget.

Reasoning protocol. The system prompt asks the model to think briefly and end with a line
`Answer: <answer>`. `reasoning_effort` sets how many tokens it may think. If it runs out of budget,
or ends its turn without an answer line, the runtime appends the marker "Answer:" itself and samples
only the answer (budget forcing, as in s1). Inserted tokens carry loss mask 0: they are never a
training target. The environment only ever sees the answer, never the chain of thought, so no reward
can read the reasoning.

Plain chat (`GenerationConfig(protocol=False)`, `Policy.chat`) is the model as its own chat template
has it: no protocol prompt, no marker, every sampled token a target; `lifelong serve` answers this
way at reasoning effort none. Stop strings and OpenAI's sampling options apply in both modes; a stop
string cuts the answer only (the private reasoning is never cut or streamed).

Context is kept as token ids from the first turn to the last, so the learner scores exactly the
tokens the sampler saw (no re-templating that could drop earlier reasoning).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.model.memory_layer import MemoryLayer, MemorySettings, heal_memory, insert_memory, memories_off
from lifelong.model.sampler import STOP, Contrast, ControlFn, Force, SampledRow, Shaping, TokenFn, sample
from lifelong.model.sampler_copy import SamplerCopy
from lifelong.timing import part
from lifelong.types import Completion, StopReason

ANSWER_MARKER = "Answer:"
EFFORT_BUDGETS = {"none": 0, "low": 32, "medium": 128, "high": 512}
SYSTEM_PROMPT = "Think briefly, then end with the line 'Answer: <answer>'."
# Diverse requests whose replies are the memory unit's background text (no task's items).
HEALING_PROMPTS = (
    "Tell me about the history of Rome.",
    "How do plants make food from sunlight?",
    "Write a short poem about the sea.",
    "What should I pack for a camping trip?",
    "Explain how a bicycle works.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Describe your favourite city.",
    "How do I write a good cover letter?",
    "What is a prime number?",
    "Summarise the plot of a famous novel.",
    "How does the heart pump blood?",
    "Tell me a story about a dragon.",
    "What are the rules of chess?",
    "How can I save money each month?",
    "Explain what a computer program is.",
    "What causes earthquakes?",
    "Describe a day at the beach.",
    "How do vaccines work?",
    "What is the difference between weather and climate?",
    "Give advice to a new student.",
    "How do airplanes stay in the air?",
    "Write a letter to a friend.",
    "What is democracy?",
    "Explain how to make a cup of tea.",
    "What animals live in the ocean?",
    "How do I learn a new language?",
    "Describe the water cycle.",
    "What is the capital of Japan and what is it known for?",
    "Why do we need sleep?",
    "Explain fractions to a child.",
    "What makes music sound happy or sad?",
)
# Called with (row, text) as a plain reply grows; the pieces of a row add up to its answer.
TextFn = Callable[[int, str], None]


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample. `thinking_tokens`, when set, overrides the budget of `reasoning_effort`.

    `protocol=False` is plain chat: the reasoning settings are unused and `answer_tokens` bounds the
    whole reply. `top_k` 0 and `top_p` 1.0 are off; penalties and ranges are OpenAI's."""

    reasoning_effort: str = "low"
    thinking_tokens: int | None = None
    answer_tokens: int = 16
    temperature: float = 1.0
    protocol: bool = True
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()  # the answer ends before the first of these
    # How far a reply leans on what recall put into its context, against the same prompt without it
    # (context-aware decoding, model/sampler.Contrast); only rows given a bare prompt. 0 is off.
    memory_contrast: float = 0.0

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
        if not 0.0 <= self.top_p <= 1.0 or self.top_k < 0:
            raise ConfigError("top_p must be in [0, 1] and top_k >= 0", "top_p=1 and top_k=0 turn them off")
        if not (-2.0 <= self.presence_penalty <= 2.0 and -2.0 <= self.frequency_penalty <= 2.0):
            raise ConfigError("presence_penalty and frequency_penalty must be in [-2, 2]", "0 turns them off")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty", "leave stop out to stop only at the end of turn")
        if self.memory_contrast < 0:
            raise ConfigError("memory_contrast must be >= 0", "0 turns it off")

    @property
    def think_budget(self) -> int:
        return self.thinking_tokens if self.thinking_tokens is not None else EFFORT_BUDGETS[self.reasoning_effort]

    @property
    def shaping(self) -> Shaping:
        return Shaping(self.top_k, self.top_p, self.presence_penalty, self.frequency_penalty)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def _streamable(visible: str, sent: int, stop: Sequence[str]) -> str:
    """The part of a growing reply that can be sent now: not a half-decoded character (U+FFFD
    until its bytes arrive) and not a tail that may yet become a stop string."""
    bad = visible.find("\ufffd", sent)
    safe = visible[:bad] if bad >= 0 else visible
    for s in stop:
        for k in range(min(len(s) - 1, len(safe)), 0, -1):
            if safe.endswith(s[:k]):
                safe = safe[: len(safe) - k]
                break
    return safe


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on every linear layer (the unit of learning). Defaults suit a 135M model."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0


class Unit(enum.StrEnum):
    """What learns: which weights a learner's optimizer moves (`--unit`)."""

    LORA = "lora"  # low-rank adapters on every linear layer; the base model never changes
    MEMORY = "memory"  # product-key memory values beside a few feed-forward blocks (issue 21)
    FULL = "full"  # every weight of the model; a frozen copy is the pretrained reference


UNITS = tuple(Unit)


def check_unit(unit: str) -> Unit:
    """`unit` as a `Unit`, or a ConfigError that names the choices."""
    if unit not in UNITS:
        raise ConfigError(f"unknown unit {unit!r}", f"use one of {', '.join(UNITS)}")
    return Unit(unit)


class Precision(enum.StrEnum):
    """The dtype the sampler decodes in (`--sampler-precision`, model/sampler_copy.py) or the
    learners compute in (`--learner-precision`, bf16 autocast over fp32 weights)."""

    AUTO = "auto"  # bfloat16 where the machine has bf16 units, else the model's dtype
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


PRECISIONS = tuple(Precision)


def check_precision(precision: str) -> Precision:
    """`precision` as a `Precision`, or a ConfigError that names the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    return Precision(precision)


def precision_dtype(precision: Precision | str, model_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype `precision` means on this machine: `auto` is bfloat16 on a GPU or a CPU with bf16
    instructions (AVX512-BF16, AMX), where a matmul runs about twice as fast; otherwise the model's."""
    precision = check_precision(precision)
    if precision is Precision.AUTO:
        fast = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if fast else model_dtype
    return torch.bfloat16 if precision is Precision.BFLOAT16 else torch.float32


class UnitChoice(Protocol):
    """A config that says what learns and how the sampler decodes (RunConfig, ServeConfig)."""

    @property
    def lora(self) -> LoraSettings: ...
    @property
    def unit(self) -> Unit: ...
    @property
    def memory_unit(self) -> MemorySettings: ...
    @property
    def sampler_precision(self) -> Precision: ...
    @property
    def learner_precision(self) -> Precision: ...


def require_lora(unit: Unit | str, where: str) -> None:
    """A ConfigError unless `unit` is LoRA: `where` (Ray, vLLM) exchanges LoRA weights only."""
    if check_unit(unit) is not Unit.LORA:
        raise ConfigError(
            f"--unit {unit} is not supported with {where} yet: it exchanges LoRA adapters only",
            f"run without {where}, or with --unit lora",
        )


class Policy:
    """Model + tokenizer + the unit that learns. The sampler and the learner share this one module,
    so the sampler always acts with the latest weights (no weight sync to go stale)."""

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "model",
        lora: LoraSettings = LoraSettings(),
        system_prompt: str = SYSTEM_PROMPT,
        unit: Unit | str = Unit.LORA,
        memory: MemorySettings = MemorySettings(),
        sampler_precision: Precision | str = Precision.FLOAT32,
        learner_precision: Precision | str = Precision.FLOAT32,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.system_prompt = system_prompt
        self.unit = check_unit(unit)
        self.memories: list[MemoryLayer] = []
        self._reference: Any = None  # the full unit's frozen pretrained copy
        if self.unit is Unit.LORA and not isinstance(model, PeftModel):
            config = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, config)
        elif self.unit is Unit.MEMORY:
            model.requires_grad_(False)
            self.memories = insert_memory(model, memory)
        elif self.unit is Unit.FULL:
            self._reference = copy.deepcopy(model).eval().requires_grad_(False)
            model.requires_grad_(True)
        # Typed as Any: a PeftModel for LoRA, the Hugging Face model itself for the other units.
        self.model: Any = model
        dtype = precision_dtype(sampler_precision, model.dtype)
        # Decoding runs on a faster copy of the live weights when the precision differs, and inside
        # `pretrained()` on a copy of the pretrained model in the same dtype: the guard compares
        # the two models' answers, and bf16 against fp32 decoding alone flipped a few of them.
        self._sampler_copy = SamplerCopy(dtype) if dtype != model.dtype else None
        self._pretrained_copy = SamplerCopy(dtype) if dtype != model.dtype else None
        self._pretrained_depth = 0
        self._learner_dtype = precision_dtype(learner_precision, model.dtype)
        self.version = 0  # bumped by the learner after every kept update
        eos = {tokenizer.eos_token_id}
        if getattr(model.generation_config, "eos_token_id", None) is not None:
            gen_eos = model.generation_config.eos_token_id
            eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        self.eos_ids: set[int] = {int(e) for e in eos if e is not None}
        self.pad_id: int = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._marker_ids = self._encode("\n" + ANSWER_MARKER)
        self._bare_marker_ids = self._encode(ANSWER_MARKER)
        if self.memories:
            # Keys fitted to the model's own text and its background reads counted, before any value
            # moves: the inserted memory reads 0 until learning writes its values.
            heal_memory(self.model, self.memories, self._healing_text())

    def learning(self) -> AbstractContextManager[Any]:
        """Where a learner's forwards and backwards run: under bf16 autocast when the learner
        precision asks for it (weights, gradients and the optimizer stay fp32), else as they are."""
        if self._learner_dtype == self.model.dtype:
            return nullcontext()
        return torch.autocast(self.model.device.type, dtype=self._learner_dtype)

    def weights_written(self, params: Sequence[torch.Tensor]) -> None:
        """`params` were written in a way autograd does not see (through `.data`): the sampler's
        copies must take them again."""
        for faster in (self._sampler_copy, self._pretrained_copy):
            if faster is not None:
                faster.invalidate(params)

    @classmethod
    def for_config(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, config: UnitChoice
    ) -> Policy:
        """The policy with the learning unit `config` chose."""
        return cls(
            model,
            tokenizer,
            name=name,
            lora=config.lora,
            unit=config.unit,
            memory=config.memory_unit,
            sampler_precision=config.sampler_precision,
            learner_precision=config.learner_precision,
        )

    @contextmanager
    def pretrained(self) -> Iterator[None]:
        """Inside the block `self.model` is the pretrained model: LoRA switched off, the memories
        read nothing, or (full unit) the frozen copy in its place. Fetch `policy.model` inside the
        block; a reference taken before it is still the live model under the full unit."""
        self._pretrained_depth += 1
        try:
            with self._pretrained_model():
                yield
        finally:
            self._pretrained_depth -= 1

    @contextmanager
    def _pretrained_model(self) -> Iterator[None]:
        if self.unit is Unit.LORA:
            with self.model.disable_adapter():
                yield
        elif self.unit is Unit.MEMORY:
            with memories_off(self.memories):
                yield
        else:
            live, self.model = self.model, self._reference
            try:
                yield
            finally:
                self.model = live

    def _healing_text(self) -> list[list[int]]:
        """Token ids of the pretrained model's own replies to diverse questions, question included:
        background text like the model's own, for the memory's keys and background counts."""
        contexts = [self.chat_start(q) for q in HEALING_PROMPTS]
        replies = self.chat(contexts, GenerationConfig(protocol=False, temperature=0.0, answer_tokens=48))
        return [list(c) + list(r.token_ids) for c, r in zip(contexts, replies, strict=True)]

    # ---- prompts -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def start(self, observation: str) -> list[int]:
        """Token ids of a new conversation under the reasoning protocol, ending where the assistant
        starts to speak (the run path's task prompts)."""
        return self.chat_ids([{"role": "user", "content": observation}])

    def chat_start(self, observation: str) -> list[int]:
        """A new plain chat conversation (the model's own template, no protocol prompt)."""
        return self.chat_ids([{"role": "user", "content": observation}], protocol=False)

    def chat_ids(self, messages: Sequence[dict[str, str]], protocol: bool = True) -> list[int]:
        """A conversation's token ids through the model's chat template, ending where the assistant
        speaks. Plain: the messages as they are (a developer message is a system message to it).
        Protocol: its system prompt first, the conversation's system or developer messages appended
        to it, so the answer marker holds."""
        if protocol:
            system = [m["content"] for m in messages if m["role"] in ("system", "developer") and m["content"]]
            turns = [{"role": "system", "content": "\n".join([self.system_prompt, *system])}]
            turns += [dict(m) for m in messages if m["role"] in ("user", "assistant")]
        else:
            turns = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        ids = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
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
        """Index of the first token after the answer marker. A reply without one is a plain chat
        reply (the protocol always has one): all of it is the answer, so 0. A plain reply that
        itself writes "Answer:" reads as a protocol reply (only what follows counts)."""
        ids = completion.token_ids
        low, high = 0, len(ids)
        if ANSWER_MARKER not in self._text(ids):
            return 0
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
    def sampling_model(self) -> Any:
        """The module the sampler decodes with now: the live model, or its faster copy brought up
        to date (model/sampler_copy.py); inside `pretrained()`, the pretrained model's."""
        faster = self._pretrained_copy if self._pretrained_depth > 0 else self._sampler_copy
        return self.model if faster is None else faster(self.model)

    @torch.no_grad()
    def _sample(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: int,
        gen: GenerationConfig,
        generator: torch.Generator | None,
        control: ControlFn | None,
        on_token: TokenFn | None = None,
        bare: Sequence[Sequence[int] | None] | None = None,
    ) -> list[SampledRow]:
        """The sampler in eval mode (the model's mode is put back after); `bare[i]`, when given, is
        context i without its recalled memory (`gen.memory_contrast`)."""
        contrast = None
        if bare is not None and gen.memory_contrast > 0:
            contrast = Contrast(tuple(None if b is None else tuple(b) for b in bare), gen.memory_contrast)
        was_training = self.model.training
        self.model.eval()
        try:
            with part("sample"):
                return sample(
                    self.sampling_model(),
                    contexts,
                    max_new_tokens=max_new_tokens,
                    eos_ids=self.eos_ids,
                    pad_id=self.pad_id,
                    temperature=gen.temperature,
                    generator=generator,
                    control=control,
                    shaping=gen.shaping,
                    on_token=on_token,
                    contrast=contrast,
                )
        finally:
            self.model.train(was_training)

    def respond(
        self,
        contexts: Sequence[Sequence[int]],
        gen: GenerationConfig = GenerationConfig(),
        generator: torch.Generator | None = None,
        bare: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Completion]:
        """Reason within budget, then answer. One Completion per context, in order. With
        `gen.protocol` False this is `chat`: no reasoning, no marker. `bare` as in `chat`."""
        if not gen.protocol:
            return self.chat(contexts, gen, generator, bare=bare)
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
            if gen.stop and cut_at_stop(rest.lstrip(), gen.stop)[1]:
                return STOP
            return None

        prefix: list[int] = []
        if budget == 0:  # no reasoning at all: the answer marker opens the reply
            prefix = list(self._bare_marker_ids)
            contexts = [list(c) + prefix for c in contexts]
            bare = None if bare is None else [None if b is None else list(b) + prefix for b in bare]
            answer_from.update({i: 0 for i in range(len(contexts))})
            reason.update({i: StopReason.THINK_BUDGET for i in range(len(contexts))})
        rows = self._sample(
            contexts, budget + len(self._marker_ids) + gen.answer_tokens, gen, generator, control, bare=bare
        )
        completions = []
        for i, row in enumerate(rows):
            ids = prefix + row.token_ids
            decoded = text(ids)
            at = decoded.find(ANSWER_MARKER)
            reasoning, rest = (decoded[:at], decoded[at + len(ANSWER_MARKER) :]) if at >= 0 else (decoded, "")
            line, stopped = cut_at_stop(rest.lstrip().split("\n", 1)[0], gen.stop)
            answer = line.strip()
            finished = row.ended == "eos" or "\n" in rest.lstrip() or stopped
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

    @torch.no_grad()
    def chat(
        self,
        contexts: Sequence[Sequence[int]],
        gen: GenerationConfig = GenerationConfig(protocol=False),
        generator: torch.Generator | None = None,
        on_text: TextFn | None = None,
        bare: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Completion]:
        """Plain chat: each context ends where the assistant speaks (the model's own chat template);
        reply until the end of the turn, a stop string or `gen.answer_tokens`. No marker, no reasoning,
        every token sampled (loss mask 1). `on_text(row, piece)` streams each reply as it grows;
        the pieces add up to the Completion's answer. Token ids keep the whole sampled reply, a
        stop string's tokens included (they were sampled); the answer ends before it. `bare[i]`,
        when given, is context i without what recall put into it: the reply leans away from it by
        `gen.memory_contrast`."""
        text = self._text
        sent = [""] * len(contexts)

        def control(row: int, ids: list[int]) -> str | None:
            return STOP if cut_at_stop(text(ids), gen.stop)[1] else None

        def on_token(row: int, ids: list[int]) -> None:
            if on_text is None:
                return
            piece = _streamable(cut_at_stop(text(ids), gen.stop)[0], len(sent[row]), gen.stop)[len(sent[row]) :]
            if piece:
                sent[row] += piece
                on_text(row, piece)

        rows = self._sample(
            contexts, gen.answer_tokens, gen, generator, control if gen.stop else None,
            on_token if on_text is not None else None, bare,
        )  # fmt: skip
        completions = []
        for i, row in enumerate(rows):
            answer, stopped = cut_at_stop(text(row.token_ids), gen.stop)
            if on_text is not None and answer.startswith(sent[i]) and len(answer) > len(sent[i]):
                on_text(i, answer[len(sent[i]) :])  # what was held back until the reply ended
            ended = row.ended == "eos" or stopped
            completions.append(
                Completion(
                    token_ids=tuple(row.token_ids),
                    logprobs=tuple(row.logprobs),
                    loss_mask=(1,) * len(row.token_ids),
                    reasoning="",
                    answer=answer,
                    stop=StopReason.ANSWERED if ended else StopReason.ANSWER_BUDGET,
                )
            )
        return completions

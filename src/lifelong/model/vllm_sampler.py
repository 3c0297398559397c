"""Sampling with vLLM on a GPU: the same reasoning protocol and Completion objects as `Policy`.

`VLLMPolicy` is a `Policy` whose `respond` runs on a vLLM engine instead of the KV-cache sampler,
so the episode loop (`loop.actor.play`), the store and the learner do not know which one sampled.
Prompts, multi-turn context and the "Answer:" budget forcing are `Policy`'s own code; only
generation differs, in two vLLM calls per turn: think (until "Answer:", the end of the turn or
the budget), then answer (until a newline or `answer_tokens`). A forced marker is fed as prompt,
marked loss 0, exactly as the torch sampler marks it. One difference: an answer that starts with a
newline ends there (vLLM's stop strings cannot skip leading whitespace as the torch sampler does).

Adapters are hot-loaded by version: the learner's LoRA state dict is written as a peft adapter
folder `v<version>/` and every request names it with a `LoRARequest` whose id is unique per
version, so the engine can never answer with an older adapter under a newer name.

Log-probs are vLLM's own (`logprobs_mode="processed_logprobs"`: after temperature, the
distribution the token was drawn from), so the learner's importance ratio compares the trainer
against what really sampled; the gap (bf16 kernels vs fp32 training) is measured per call as
`sampler/logprob_mismatch` and corrected by the ratio, never assumed away.

vLLM is imported lazily: this module imports on machines without it, and fails with a fix when used.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.model.policy import ANSWER_MARKER, SYSTEM_PROMPT, GenerationConfig, LoraSettings, Policy
from lifelong.types import Completion, StopReason


def require_vllm() -> Any:
    """The vllm module, or a ConfigError that says what to do (no vllm, or no CUDA device)."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(
            "the vllm sampler needs vLLM, which is not installed",
            "on a machine with an NVIDIA GPU: pip install 'lifelong[gpu]'; on CPU leave --sampler at torch",
        ) from exc
    if not torch.cuda.is_available():
        raise ConfigError(
            "the vllm sampler needs an NVIDIA GPU with CUDA, and none is visible",
            "run it on a GPU machine, or use the default torch sampler (--sampler torch)",
        )
    return vllm


def save_adapter(state: dict[str, torch.Tensor], lora: LoraSettings, folder: Path, base_model: str = "") -> Path:
    """Write a peft state dict as a peft adapter folder (what vLLM and `PeftModel` load)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    # "all-linear" is resolved by peft against a live model; the folder needs the module names,
    # which the state dict's keys carry (`...layers.0.self_attn.q_proj.lora_A.weight`).
    targets = sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in state if ".lora_" in key})
    if not targets:
        raise ValueError("the adapter state holds no LoRA weights")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model or None,
    )
    config.save_pretrained(str(tmp))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # a reader never sees a half-written adapter
    return folder


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter on disk, named for the engine: one name and id per learner version."""

    name: str
    id: int
    path: str


class Engine(Protocol):
    """What VLLMPolicy needs from an engine: sample continuations with an adapter, with log-probs."""

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_tokens: int,
        stop: list[str],
        temperature: float,
        seeds: list[int],
        adapter: Adapter,
    ) -> list[tuple[list[int], list[float]]]: ...


class VLLMEngine:
    """The vLLM engine (`vllm.LLM`) with LoRA enabled; one per GPU process."""

    def __init__(
        self, folder: Path, lora: LoraSettings, gpu_memory_utilization: float = 0.3, dtype: str = "auto", seed: int = 0
    ) -> None:
        vllm = require_vllm()
        self.llm = vllm.LLM(
            model=str(folder),
            enable_lora=True,
            max_lora_rank=max(lora.rank, 8),
            max_loras=1,
            max_cpu_loras=2,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            # Log-probs of the distribution the token was drawn from (after temperature): the
            # quantity the torch sampler records and the learner's ratio divides by.
            logprobs_mode="processed_logprobs",
        )

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_tokens: int,
        stop: list[str],
        temperature: float,
        seeds: list[int],
        adapter: Adapter,
    ) -> list[tuple[list[int], list[float]]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = [
            SamplingParams(
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
                include_stop_str_in_output=True,
                logprobs=0,  # only the sampled token's log-prob
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(c)} for c in contexts]
        request = LoRARequest(adapter.name, adapter.id, adapter.path)
        outputs = self.llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        result = []
        for out in outputs:
            sample = out.outputs[0]
            tokens = [int(t) for t in sample.token_ids]
            lps = [float(step[t].logprob) for step, t in zip(sample.logprobs or [], tokens, strict=True)]
            result.append((tokens, lps))
        return result


class VLLMPolicy(Policy):
    """A Policy that samples on an engine (vLLM by default); holds no torch model of its own."""

    def __init__(
        self,
        folder: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        adapter_dir: str | Path,
        name: str = "model",
        lora: LoraSettings = LoraSettings(),
        system_prompt: str = SYSTEM_PROMPT,
        engine: Engine | None = None,
        **engine_options: Any,
    ) -> None:
        # No Policy.__init__: it wraps a torch model with LoRA, and the weights live in the engine
        # here. What start()/extend() need is set the same way.
        self.tokenizer = tokenizer
        self.name = name
        self.system_prompt = system_prompt
        self.lora = lora
        self.folder = Path(folder)
        self.adapter_dir = Path(adapter_dir)
        self.version = -1  # no adapter loaded yet
        self.eos_ids = _eos_ids(self.folder, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._marker_ids = self._encode("\n" + ANSWER_MARKER)
        self._bare_marker_ids = self._encode(ANSWER_MARKER)
        self.adapter: Adapter | None = None
        self.engine: Engine = engine if engine is not None else VLLMEngine(self.folder, lora, **engine_options)

    @classmethod
    def from_model(cls, model: str | None, lora: LoraSettings, adapter_dir: str | Path, **options: Any) -> VLLMPolicy:
        """For a `--model` value (None = the embedded default), as `load_model` names it."""
        from transformers import AutoTokenizer

        from lifelong.model.loading import DEFAULT_MODEL, resolve_model_folder

        folder = resolve_model_folder(model)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        name = DEFAULT_MODEL if model in (None, DEFAULT_MODEL) else str(folder)
        return cls(folder, tokenizer, adapter_dir, name=name, lora=lora, **options)

    # ---- adapters ----------------------------------------------------------------------------
    def load_adapter_state(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Hot-load the learner's adapters as `version`: written to disk, then named per request."""
        folder = save_adapter(state, self.lora, self.adapter_dir / f"v{version}", str(self.folder))
        # A fresh integer id per version (ids must be > 0; versions start at 0): engines cache
        # adapters by id, so reusing one could serve old weights under the new version.
        self.adapter = Adapter(f"v{version}", version + 1, str(folder))
        self.version = version
        for old in self.adapter_dir.glob("v*"):  # the engine has read older ones already
            if old.is_dir() and old.name not in (f"v{version}", f"v{version - 1}"):
                shutil.rmtree(old, ignore_errors=True)

    # ---- acting ------------------------------------------------------------------------------
    def respond(
        self,
        contexts: Sequence[Sequence[int]],
        gen: GenerationConfig = GenerationConfig(),
        generator: torch.Generator | None = None,
        bare: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Completion]:
        """Reason within budget, then answer, on the engine. One Completion per context, in order."""
        if bare is not None and gen.memory_contrast > 0:
            raise ConfigError(
                "memory_contrast is not supported on the vLLM sampler yet",
                "set memory_contrast to 0, or sample with torch",
            )
        if self.adapter is None:
            raise RuntimeError("no adapter loaded: call load_adapter_state(state, version) first")
        n = len(contexts)
        ids: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        forced: list[list[bool]] = [[] for _ in range(n)]
        reason: dict[int, StopReason] = {}

        def force(i: int, tokens: Sequence[int]) -> None:
            ids[i] += tokens
            logps[i] += [0.0] * len(tokens)
            forced[i] += [True] * len(tokens)

        budget = gen.think_budget
        if budget == 0:  # no reasoning: the answer marker opens the reply
            for i in range(n):
                force(i, self._bare_marker_ids)
                reason[i] = StopReason.THINK_BUDGET
        else:
            thoughts = self._generate(contexts, budget, [ANSWER_MARKER], gen.temperature, generator)
            for i, (tokens, lps) in enumerate(thoughts):
                ids[i] += tokens
                logps[i] += lps
                forced[i] += [False] * len(tokens)
                if ANSWER_MARKER in self._text(ids[i]):
                    continue
                if ids[i] and ids[i][-1] in self.eos_ids:  # ended its turn without an answer: drop EOS
                    del ids[i][-1], logps[i][-1], forced[i][-1]
                    reason[i] = StopReason.ENDED_WITHOUT_ANSWER
                    force(i, self._marker_ids if ids[i] else self._bare_marker_ids)
                else:  # thinking budget spent
                    reason[i] = StopReason.THINK_BUDGET
                    force(i, self._marker_ids)
        answers = self._generate(
            [list(c) + ids[i] for i, c in enumerate(contexts)], gen.answer_tokens, ["\n"], gen.temperature, generator
        )
        completions = []
        for i, (tokens, lps) in enumerate(answers):
            ids[i] += tokens
            logps[i] += lps
            forced[i] += [False] * len(tokens)
            decoded = self._text(ids[i])
            at = decoded.find(ANSWER_MARKER)
            reasoning, rest = (decoded[:at], decoded[at + len(ANSWER_MARKER) :]) if at >= 0 else (decoded, "")
            finished = bool(tokens and tokens[-1] in self.eos_ids) or "\n" in rest
            stop = reason.get(i, StopReason.ANSWERED) if finished else StopReason.ANSWER_BUDGET
            completions.append(
                Completion(
                    token_ids=tuple(ids[i]),
                    logprobs=tuple(logps[i]),
                    loss_mask=tuple(0 if f else 1 for f in forced[i]),
                    reasoning=reasoning.strip(),
                    answer=rest.lstrip().split("\n", 1)[0].strip(),
                    stop=stop,
                )
            )
        return completions

    def _generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_tokens: int,
        stop: list[str],
        temperature: float,
        generator: torch.Generator | None,
    ) -> list[tuple[list[int], list[float]]]:
        assert self.adapter is not None
        # Per-request seeds from the run's generator: a run is reproducible under its seed.
        seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (len(contexts),), generator=generator, device="cpu")]
        return self.engine.generate(contexts, max_tokens, stop, temperature, seeds, self.adapter)


def _eos_ids(folder: Path, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-turn ids as `Policy` computes them: the tokenizer's plus the generation config's."""
    from transformers import GenerationConfig as HFGenerationConfig

    eos = {tokenizer.eos_token_id}
    try:
        gen_eos = HFGenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation_config.json
        gen_eos = None
    if gen_eos is not None:
        eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
    return {int(e) for e in eos if e is not None}

"""The external peer of `lifelong eval`: TRL's GRPOTrainer on the same model, items, reward and budget.

`trl_runner(model, note)` returns a runner `(RunConfig, run_dir) -> None` that trains the stream's
steps in order with one `trl.GRPOTrainer` and leaves a run folder in lifelong's own format, so the
harness reads it like any other method: `config.json` (method "trl"), `metrics.jsonl` with eval
records from lifelong's own probes (`Runtime.evaluate`, at step 0, every `eval_every` steps and at
every stage end) and one update record per step (episodes, `time/act_s`, `time/learn_s`), and
`experience.sqlite` with every training completion as an episode (answer, reward, success).
`trl.json` beside them records the TRL version and every setting it was given.

How each setting is matched (TRL 1.16):
  model       our `load_model`, wrapped by our `Policy` after `torch.manual_seed(seed)` as the harness
              does for its own methods: the same LoRA (rank 16, alpha 32, all linear layers) with the
              same initial adapter weights.
  prompts     our chat prompt (`Policy.start`: same system prompt and template) as text; with
              reasoning effort "none" it ends in "Answer:", the prefix our policy feeds before it
              samples, so both sample only the answer. Every prompt is checked to tokenize to exactly
              our ids; a model whose tokenizer does not round-trip is reported.
  items       `Runtime.jobs_for` of every step, in order (`shuffle_dataset=False`): the same seeds.
  reward      the task's own scorer on the answer line, as our actor: `env.reset(seed)` then
              `env.step(answer)`, the answer parsed as `Policy.respond` parses it.
  budget      one optimizer step per step of our schedule: prompts_per_step prompts x group_size
              samples (`num_generations`), micro-batches of 16 samples (gradient accumulation; TRL
              has no token-bounded micro-batches, and 16 is what it always ran with here, our
              learner's old default), `max_completion_length = answer_tokens`, temperature 1, no
              top-k/top-p.
  update      AdamW (`adamw_torch`) at our learning rate with a constant schedule, one optimizer for
              the whole stream as ours; clip epsilon 0.2 / epsilon_high 0.28; beta = kl_coef with the
              k3 estimator; loss_type "dapo" (token mean over the whole step, as ours); advantages
              scaled by the group std; max_grad_norm 1.0; weight decay 0; num_iterations = epochs.
  reference   TRL copies the adapter as it is when the trainer starts (a "ref" adapter); that is
              our zero-initialised adapter, so the reference is exactly the pretrained model, as
              ours (adapters disabled).
  timing      `time/act_s` = TRL's generation + the reward function; `time/learn_s` = the rest of
              the optimizer step (TRL's reference log-probs, loss, backward, optimizer), so
              episodes per minute compare like with like. Evaluation is not counted, as for ours.

What cannot be matched, and what the runner does instead:
  - Multi-turn environments: GRPOTrainer samples one completion per prompt. Steps whose items
    include a multi-turn game are not trained; their stage still gets its evaluations (copied from
    the last evaluation, as the weights did not change) and the skip is noted and written to
    `metrics.jsonl` as a record of type "skipped".
  - Stopping: our sampler stops at the end of the answer line; TRL samples until EOS or
    `max_completion_length`, so it may sample (and train on) tokens after the answer line. Both
    score the answer line only.
  - Zero-variance groups: ours drops them, so they count neither in the loss nor in its token
    normaliser; TRL keeps them with advantage 0, so their tokens enter the "dapo" normaliser and
    the KL term. The group std is TRL's (unbiased, + 1e-4) rather than ours (population, + 1e-6).
  - Importance ratio: TRL on transformers generation uses its own log-probs at update time (ratio
    1 on-policy); ours uses the sampler's log-probs. Equal up to numerics for one epoch.
  - Budget forcing: with a thinking budget (effort other than "none") our runtime inserts
    "Answer:" when the budget runs out; TRL cannot, so a completion without "Answer:" scores as an
    empty answer.
  - Guard, rehearsal, memory and consolidation (the `lifelong` method's extras) do not exist in
    TRL; the harness compares TRL with the plain `grpo` settings, which have none of them.
  - Device: the trainer runs on the CPU (`use_cpu`), where our runtime runs.
  - Resumption: a finished run folder is reused; an unfinished one is started again.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from lifelong.envs.base import Env
from lifelong.errors import ConfigError
from lifelong.evaluate.harness import stage_end_steps
from lifelong.evaluate.report import read_metrics
from lifelong.loop.runtime import Method, RunConfig, Runtime
from lifelong.model.loading import load_model
from lifelong.model.policy import ANSWER_MARKER, GenerationConfig, Policy
from lifelong.types import Completion, Episode, StopReason, Turn

TRL_VERSION = "1.16.0"  # the release pyproject's [compare] extra pins; the settings below are mapped onto it
METHOD = Method.TRL
# Our sampler's budget when it thinks: think_budget + the forced "\nAnswer:" (3 tokens with SmolLM2's
# tokenizer) + answer_tokens. TRL gets the same room, for the model to write the marker itself.
_MARKER_TOKENS = 3

Note = Callable[[str], None]


def require_trl() -> None:
    """Fail with the fix when TRL (the `[compare]` extra) is not installed."""
    if importlib.util.find_spec("trl") is None:
        raise ConfigError(
            "method trl needs TRL, which is not installed", f"pip install -e '.[compare]' (trl=={TRL_VERSION})"
        )


# ---- prompts and reward: the parts that must equal ours ------------------------------------------
def prefilled(gen: GenerationConfig) -> bool:
    """Without a thinking budget our policy feeds "Answer:" itself before it samples."""
    return gen.think_budget == 0


def trl_prompt(policy: Policy, observation: str, gen: GenerationConfig) -> str:
    """The text TRL tokenizes for an item: our chat prompt, plus "Answer:" when our policy prefills it."""
    messages = [
        {"role": "system", "content": policy.system_prompt},
        {"role": "user", "content": observation},
    ]
    text = str(policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return text + ANSWER_MARKER if prefilled(gen) else text


def our_prompt_ids(policy: Policy, observation: str, gen: GenerationConfig) -> list[int]:
    """The ids our policy conditions its first sampled token on (`Policy.start` + the prefilled prefix)."""
    prefix = policy.tokenizer.encode(ANSWER_MARKER, add_special_tokens=False) if prefilled(gen) else []
    return policy.start(observation) + [int(i) for i in prefix]


def answer_of(completion: str, gen: GenerationConfig) -> str:
    """The answer line of a completion, parsed as `Policy.respond` parses its own replies."""
    if prefilled(gen):
        rest = completion  # the completion follows the prefilled marker
    else:
        at = completion.find(ANSWER_MARKER)
        rest = completion[at + len(ANSWER_MARKER) :] if at >= 0 else ""  # ours would force the marker
    return rest.lstrip().split("\n", 1)[0].strip()


class TRLReward:
    """TRL's reward function: each completion's answer scored by the task's own environment, exactly
    as our actor scores it (`env.reset(seed)`, then `env.step(answer)`; an environment that raises
    gives reward 0). It also turns every completion into an Episode for the experience store."""

    __name__ = "env_reward"  # TRL names the reward's metrics after it

    def __init__(self, policy: Policy, make_env: Callable[[str], Env], gen: GenerationConfig) -> None:
        self.policy = policy
        self.make_env = make_env
        self.gen = gen
        self.episodes: list[Episode] = []  # since the last `take()`
        self.seconds = 0.0  # time spent scoring, since the last `take()`
        self._marker = [int(i) for i in policy.tokenizer.encode(ANSWER_MARKER, add_special_tokens=False)]

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        task: Sequence[str],
        seed: Sequence[int],
        group: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float]:
        t0 = time.perf_counter()
        rewards = []
        groups = group if group is not None else [""] * len(completions)
        for text, ids, label, s, g in zip(completions, completion_ids, task, seed, groups, strict=True):
            episode = self.score(label, int(s), text, [int(i) for i in ids], g)
            self.episodes.append(episode)
            rewards.append(episode.reward)
        self.seconds += time.perf_counter() - t0
        return rewards

    def score(self, label: str, seed: int, text: str, ids: list[int], group: str = "") -> Episode:
        env = self.make_env(label)
        info: dict[str, Any] = {}
        answer = answer_of(text, self.gen)
        try:
            observation, reset_info = env.reset(seed=seed)
            info.update(reset_info)
        except Exception as exc:  # a broken environment fails its episode, as in our actor
            observation, info["error"] = "", f"reset: {type(exc).__name__}: {exc}"
        reward = 0.0
        if "error" not in info:
            try:
                result = env.step(answer)
                reward = float(result.reward)
                info.update(result.info)
            except Exception as exc:
                info["error"] = f"step: {type(exc).__name__}: {exc}"
        prefix = self._marker if prefilled(self.gen) else []
        finished = (bool(ids) and ids[-1] in self.policy.eos_ids) or "\n" in text.lstrip()
        stop = (StopReason.THINK_BUDGET if prefix else StopReason.ANSWERED) if finished else StopReason.ANSWER_BUDGET
        completion = Completion(
            token_ids=tuple(prefix + ids),
            logprobs=tuple([0.0] * (len(prefix) + len(ids))),  # TRL's transformers sampler keeps none
            loss_mask=tuple([0] * len(prefix) + [1] * len(ids)),
            reasoning="" if prefix else text.split(ANSWER_MARKER, 1)[0].strip(),
            answer=answer,
            stop=stop,
        )
        prompt_ids = tuple(self.policy.start(observation)) if observation else ()
        return Episode(
            id=uuid.uuid4().hex,
            env=label,
            seed=seed,
            turns=(Turn(prompt_ids, completion, observation, reward),),
            reward=reward,
            success="error" not in info and reward >= env.success_threshold,
            info=info,
            adapter_version=self.policy.version,
            group=group,
            split="train",
            created=time.time(),
        )

    def take(self) -> tuple[list[Episode], float]:
        """The episodes scored and the seconds spent since the last call."""
        episodes, seconds = self.episodes, self.seconds
        self.episodes, self.seconds = [], 0.0
        return episodes, seconds


# ---- TRL's configuration -------------------------------------------------------------------------
TRL_MICRO_BATCH = 16


def micro_batch(config: RunConfig) -> int:
    """TRL's micro-batch (`TRL_MICRO_BATCH`, at most our learner's), shrunk to a divisor of the step
    so TRL's accumulation is exact."""
    per_step = config.episodes_per_step
    largest = min(TRL_MICRO_BATCH, config.grpo.micro_batch, per_step)
    return max(d for d in range(1, largest + 1) if per_step % d == 0)


def trl_settings(config: RunConfig, output_dir: Path, max_steps: int) -> dict[str, Any]:
    """`trl.GRPOConfig` keyword arguments that mirror our RunConfig (see the module docstring)."""
    g, gen = config.grpo, config.generation(config.grpo.temperature)
    micro = micro_batch(config)
    marker = 0 if prefilled(gen) else _MARKER_TOKENS
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": config.episodes_per_step // micro,
        "num_generations": g.group_size,
        "max_completion_length": gen.think_budget + marker + gen.answer_tokens,
        "max_steps": max_steps,
        "learning_rate": g.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "weight_decay": g.weight_decay,
        "max_grad_norm": g.max_grad_norm,
        "beta": g.kl_coef,
        "epsilon": g.clip_low,
        "epsilon_high": g.clip_high,
        "loss_type": "dapo",
        "scale_rewards": "group" if g.scale_rewards else "none",
        "num_iterations": g.epochs,
        "temperature": g.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "shuffle_dataset": False,
        "remove_unused_columns": False,
        "seed": config.seed,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "dataloader_num_workers": 0,
    }


def _timed_trainer(base: type) -> type:
    """GRPOTrainer that adds up the seconds it spends sampling (`_generate`), for `time/act_s`."""

    class TimedGRPOTrainer(base):  # type: ignore[misc, valid-type]
        sample_seconds = 0.0

        def _generate(self, prompts: list[Any]) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self.sample_seconds += time.perf_counter() - t0

    return TimedGRPOTrainer


# ---- the run -------------------------------------------------------------------------------------
def _finished(run_dir: Path, config: RunConfig) -> bool:
    if not (run_dir / "config.json").is_file() or not (run_dir / "metrics.jsonl").is_file():
        return False
    steps = {r["step"] for r in read_metrics(run_dir) if r.get("type") == "eval"}
    return all(s in steps for s in [0, *stage_end_steps(config)])


def _clear(run_dir: Path) -> None:
    """Remove what an unfinished TRL run left (only the files this runner writes)."""
    for name in ("config.json", "trl.json", "metrics.jsonl", "experience.sqlite"):
        for path in run_dir.glob(name + "*"):
            path.unlink()
    shutil.rmtree(run_dir / "trl", ignore_errors=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


class _TRLRun(TrainerCallback):  # type: ignore[misc]
    """One TRL run over a stream: builds the dataset from our schedule, and as a trainer callback
    writes an update record after every step and evaluates with our probes where ours would."""

    def __init__(self, config: RunConfig, run_dir: Path, model: str | None, note: Note) -> None:
        self.config = replace(config, method=METHOD)
        self.run_dir = run_dir
        self.note = note
        lm, tokenizer, name = load_model(model)
        torch.manual_seed(config.seed)  # the same adapter initialisation as the harness gives ours
        # TRL trains LoRA; our probes read its adapter with the sampler ours uses.
        self.policy = Policy(lm, tokenizer, name=name, lora=config.lora, sampler_precision=config.sampler_precision)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        self.runtime = Runtime(self.config, self.policy, run_dir)
        self.gen = self.config.generation(self.config.grpo.temperature)
        self.reward = TRLReward(self.policy, self.runtime.make_env, self.gen)
        schedule = self.runtime.schedule
        self.last_of_stage = {s.step for s in schedule if s.step == len(schedule) or schedule[s.step].stage != s.stage}
        self.rows: list[dict[str, Any]] = []
        self.trainable = []  # the schedule's slots TRL trains, in order; TRL's step k is trainable[k-1]
        self.skipped: dict[str, int] = {}  # stage label -> steps not trained (multi-turn items)
        mismatched = 0
        for slot in schedule:
            jobs = self.runtime.jobs_for(slot)
            if any(self.runtime.make_env(j.env).max_turns > 1 for j in jobs):
                label = self.runtime.stream.stages[slot.stage].task.label
                self.skipped[label] = self.skipped.get(label, 0) + 1
                continue
            self.trainable.append(slot)
            for job in jobs[:: self.config.grpo.group_size]:  # one row per item; TRL repeats it G times
                observation, _ = self.runtime.make_env(job.env).reset(seed=job.seed)
                prompt = trl_prompt(self.policy, observation, self.gen)
                mismatched += tokenizer(text=prompt)["input_ids"] != our_prompt_ids(self.policy, observation, self.gen)
                self.rows.append(
                    {"prompt": prompt, "task": job.env, "seed": job.seed, "group": job.group, "step": slot.step}
                )
        self.mismatched = mismatched
        self.last_eval: dict[str, Any] | None = None
        self.pending: dict[str, Any] | None = None
        self.trainer: Any = None
        self._t0 = 0.0

    # ---- records ---------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.runtime.core.log(record)  # the run's metrics.jsonl, as our runtime writes it

    def _due(self, step: int) -> bool:
        every = self.config.eval_every
        return step in self.last_of_stage or bool(every and step % every == 0)

    def _evaluate(self, step: int) -> None:
        self.note(f"trl step {step}: evaluating probes")
        self.runtime.evaluate(step)
        self.last_eval = self.runtime.state.evals[-1]

    def _evaluate_through(self, done: int) -> None:
        """Evaluate after step `done` where ours would, then through the untrained steps after it
        (their weights are those of step `done`, so their evaluations are copies)."""
        if done == 0 or self._due(done):
            self._evaluate(done)
        after = [s.step for s in self.trainable if s.step > done]
        for step in range(done + 1, after[0] if after else len(self.runtime.schedule) + 1):
            if self._due(step) and self.last_eval is not None:
                self.runtime.record_eval({**self.last_eval, "step": step})

    # ---- trainer callbacks -----------------------------------------------------------------------
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        self.trainer.sample_seconds = 0.0
        self.reward.take()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seconds = time.perf_counter() - self._t0
        slot = self.trainable[state.global_step - 1]
        episodes, reward_s = self.reward.take()
        self.runtime.store.add(episodes, run_id=self.runtime.run_id, step=slot.step, model=self.policy.name)
        total = self.runtime.record_episodes(len(episodes))
        version = self.runtime.core.note_external_update()  # the adapters changed: later episodes carry it
        act = self.trainer.sample_seconds + reward_s
        rewards = [e.reward for e in episodes]
        self.pending = {
            "type": "update",
            "step": slot.step,
            "stage": self.runtime.stream.stages[slot.stage].task.label,
            "episodes": total,
            "applied": True,
            "reason": "",
            "adapter_version": version,
            "time/act_s": act,
            "time/learn_s": seconds - act,
            "success/train": sum(e.success for e in episodes) / max(len(episodes), 1),
            "reward/mean": sum(rewards) / max(len(rewards), 1),
            "batch/sampled_tokens": float(sum(e.num_sampled_tokens for e in episodes)),
        }

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.pending is None:  # TRL's closing summary (train_runtime ...) comes after the last step
            return
        logs = logs or {}
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        ours = {"kl": "kl/ref", "entropy": "policy/entropy", "grad_norm": "grad/norm", "learning_rate": "optim/lr"}
        ours |= {"frac_reward_zero_std": "batch/zero_variance_frac", "clip_ratio/region_mean": "policy/clip_frac"}
        self._write(
            {**{ours[k]: v for k, v in numeric.items() if k in ours}, **{f"trl/{k}": v for k, v in numeric.items()}}
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pending is not None:
            self._write({})

    def _write(self, extra: dict[str, float]) -> None:
        assert self.pending is not None
        record, self.pending = {**self.pending, **extra}, None
        self._log(record)
        self._evaluate_through(int(record["step"]))

    # ---- run -------------------------------------------------------------------------------------
    def run(self) -> None:
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback
        from trl import GRPOConfig, GRPOTrainer

        if self.mismatched:
            self.note(f"trl: {self.mismatched} prompt(s) tokenize differently from ours with this tokenizer")
        for label, steps in self.skipped.items():
            self.note(f"trl: stage {label} skipped ({steps} steps): GRPOTrainer has no multi-turn episodes")
            self._log({"type": "skipped", "stage": label, "steps": steps, "reason": "multi-turn environment"})
        settings = trl_settings(self.config, self.run_dir / "trl", len(self.trainable))
        trl_version = importlib.import_module("trl").__version__
        if trl_version != TRL_VERSION:
            self.note(f"trl {trl_version} is not the pinned {TRL_VERSION}; its settings may mean other things")
        (self.run_dir / "trl.json").write_text(
            json.dumps({"trl_version": trl_version, "settings": settings, "skipped": self.skipped}, indent=1)
        )
        self.note(f"trl {trl_version}: evaluating the untrained model on held-out probes")
        self._evaluate_through(0)
        if not self.trainable:
            return
        args = GRPOConfig(**settings)
        self.trainer = _timed_trainer(GRPOTrainer)(
            model=self.policy.model,
            reward_funcs=self.reward,
            args=args,
            train_dataset=Dataset.from_list(self.rows),
            processing_class=self.policy.tokenizer,
            callbacks=[self],
        )
        for printer in (PrinterCallback, ProgressCallback):  # progress is ours to show
            self.trainer.remove_callback(printer)
        self.trainer.train()
        self.policy.model.eval()


def run_trl(config: RunConfig, run_dir: Path, model: str | None = None, note: Note = lambda _: None) -> None:
    """Train the stream with TRL's GRPOTrainer and leave a lifelong run folder in `run_dir`."""
    require_trl()
    if _finished(run_dir, replace(config, method=METHOD)):
        note(f"trl: {run_dir} already holds a finished run; reusing it")
        return
    if run_dir.exists():
        _clear(run_dir)
    _TRLRun(config, run_dir, model, note).run()


def trl_runner(model: str | None, note: Note) -> Callable[[RunConfig, Path], None]:
    """The runner `lifelong eval --methods ...,trl` calls for the stream's config and run folder."""
    require_trl()

    def runner(config: RunConfig, run_dir: Path) -> None:
        run_trl(replace(config, model=model), run_dir, model, note)

    return runner


__all__ = ["TRLReward", "answer_of", "require_trl", "run_trl", "trl_prompt", "trl_runner", "trl_settings"]

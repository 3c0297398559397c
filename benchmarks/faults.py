"""Fault injection on the real default model: does the guard notice, undo and recover?

The model first learns addition for a few steps (the "warm" adapters: a skill it now has). Then,
for each fault and with the guard on and off, a short run continues from the warm adapters:
the fault is active in steps 1..3, steps 4..8 are normal, and probes are evaluated at steps
0 (before the fault), 4 and 8 (the gate runs at those evaluations).

Faults:
  nan_grad          gradients poisoned with NaN
  lr_spike          learning rate x100
  flipped_reward    reward r -> 1 - r (the advantage flips sign; 1 - r keeps the declared range so a
                    range check cannot catch it trivially)
  always_one        every answer rewarded 1.0 (a hacked reward)
  garbage_feedback  random 0/1 rewards
  kill9             the process is killed with SIGKILL in the middle of an update, then resumed

A control run with no fault (guard on and off) comes first: it shows what the same eight steps
of normal learning do to the probes, and whether the guard raises false alarms.

Per fault: detected (a guard finding, or for kill9 the resume noticing the interrupted step),
recovered (every probe within 2 points of its value before the fault, or better), probe_delta
(worst probe change, after - before), episodes_lost (stored episodes missing afterwards), and
control_delta (the no-fault run's probe_delta with the same guard setting) and
recovered_vs_control (within 2 points of before or of the no-fault run's end, whichever is lower:
normal learning moves a probe by an item or two too, and that is not the fault's damage).

Targets (--target): `run` (the default) is the runtime's loop, `Runtime.run`. Its faults go in
through the parts a user can swap: rewards through an environment wrapper the actor plays with,
the learning rate and the gradients through a wrapper around the learner the learning core calls,
kill9 through the process. A target is a function of the arguments that returns the single run of
one (fault, guard setting) pair (`TARGETS`); the control run, the comparison and the table are shared.

`serve` is `lifelong serve`: a real server on loopback per run (its worker off) and, in this
process, the tenants' learner on the same store, whose rounds run through `learn_once`, the
worker's own function. Requests and feedback go over HTTP with the official `openai` client. Two
tenants. Every run starts from a copy of one start state, made once: `bystander` has learned one
round from good feedback (its own live adapter), the victim's first gate (the pretrained reference)
has passed, and the measures before the fault are taken. Then the `victim` learns three rounds,
the fault active in rounds 1-2:
  flipped_ratings      the victim rates right answers down and wrong ones up (FACTS items that are
                       not the gate's probes, two sampled answers each)
  garbage_corrections  corrections made of random words
  nan_grad             NaN gradients on a few adapter tensors in the victim's rounds
  lr_spike             x100 learning rates for the victim's rounds (a replaced TenantLearningConfig)
  kill9                `lifelong serve` in a subprocess with its worker on: SIGKILL to the server
                       and the worker inside round 2 while the victim chats and rates from a
                       thread, then a restart (detected: it serves the last live version and the
                       interrupted feedback is learned after the restart)
Normal rounds (and the control) are honest ratings of two sampled answers plus a right correction.
Probe scores are the victim's greedy answers to the general-ability probes (`facts`, `instruct`,
the items the gate holds out), asked through the server before round 1 and after round 3;
detected is a guard finding in the victim's guard_events.jsonl during the fault rounds or a fault
round refused; episodes_lost counts acknowledged completions and feedback missing from the store
and consumed feedback without its episode; bystander_identical says whether the bystander's greedy
and seeded sampled answers were the same tokens after the victim's rounds as before.
Measured (2026-11-30) on the embedded model, --threads 1, 2 cores shared with other real-model
benchmarks: a round takes 2-3.5 minutes, a (fault, guard) run 6-14 minutes after the start state,
so the full serve target (12 runs) takes about 2 hours on one process; --faults splits it (the
control always runs) and two processes with their own --workdir halve the wall time.

    python benchmarks/faults.py [--target run|serve] [--faults a,b] [--model FOLDER] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import openai
import torch

from lifelong.cli import _quiet_libraries
from lifelong.envs.base import Env, StepResult
from lifelong.envs.probes import FACTS, matches
from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.learn.learner import Learner
from lifelong.loop.actor import Job, LocalActor
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.loop.tenants import GENERAL_TASKS, TenantLearner, TenantLearningConfig, ensure_initial_adapter, run_id
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.serve import BackgroundServer, LearnerConfig, ServeConfig, Server
from lifelong.serve.config import adapters_folder
from lifelong.serve.worker import build_learner, learn_once
from lifelong.streams.stream import ProbeSet, Stage, Stream, Task
from lifelong.types import AdapterStatus, Batch, Episode, Sample, UpdateReport

CONTROL = "none"  # the no-fault run
FAULTS = ("nan_grad", "lr_spike", "flipped_reward", "always_one", "garbage_feedback", "kill9")
REWARD_FAULTS = ("flipped_reward", "always_one", "garbage_feedback")
FAULT_STEPS = range(1, 4)
RECOVERY_TOLERANCE = 0.02  # probe points (as a fraction) a recovered run may end below its baseline
TOTAL_STEPS = 8
TRAINED = Task.of("add", max_value=20)
GENERAL = Task.of("letter", position="first")
POISONED_TENSORS = 4  # adapter tensors whose gradients nan_grad replaces


@dataclass
class FaultResult:
    fault: str
    guard: bool
    detected: bool
    recovered: bool
    probe_delta: float
    episodes_lost: int
    before: dict[str, float]
    after: dict[str, float]
    rollbacks: int
    findings: list[str]
    control_delta: float | None = None
    recovered_vs_control: bool | None = None
    bystander_identical: bool | None = None  # serve: the other tenant's answers, bit for bit


# (fault or CONTROL, guard on) -> the result of one short run with it
RunOne = Callable[[str, bool], FaultResult]


# ---- the faults, through interfaces a user can swap ---------------------------------------------
class FaultyReward(Env):
    """Wraps an environment and rewrites its rewards (the actor only makes it during a reward fault)."""

    def __init__(self, env: Env, fault: str, rng: random.Random) -> None:
        self.env, self.fault, self.rng = env, fault, rng
        self.max_turns, self.success_threshold = env.max_turns, env.success_threshold

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return self.env.reset(seed=seed)

    def step(self, action: str) -> StepResult:
        result = self.env.step(action)
        reward = {
            "flipped_reward": 1.0 - result.reward,
            "always_one": 1.0,
            "garbage_feedback": float(self.rng.random() < 0.5),
        }[self.fault]
        return result._replace(reward=reward)


@contextmanager
def gradient_hook(
    params: Sequence[torch.Tensor], hook: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """`hook` sees (and may replace) every gradient computed for `params` inside the block."""
    handles = [p.register_hook(hook) for p in params]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FaultyLearner:
    """The learner the learning core calls, passing through to `inner`; while `active()` its update
    has the fault: lr_spike learns at 100x the guard's learning-rate scale, nan_grad gets NaN
    gradients on a few adapter tensors (replaced as they are computed, so the learner's own
    non-finite check sees them as it would a real NaN), kill9 touches `marker` once gradients flow
    and waits there for the SIGKILL. Reward faults pass through: the environment has them."""

    def __init__(self, inner: Learner, fault: str, active: Callable[[], bool], marker: Path | None = None) -> None:
        self.inner = inner
        self.fault = fault
        self.active = active
        self.marker = marker

    @property
    def step(self) -> int:
        return self.inner.step

    @step.setter
    def step(self, value: int) -> None:  # a resume restores the learner's step
        self.inner.step = value

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.inner.optimizer

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        return self.inner.batch(episodes, anchors)

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        if not self.active() or self.optimizer is None:
            return self.inner.update(batch, lr_scale)
        if self.fault == "lr_spike":
            return self.inner.update(batch, 100 * lr_scale)
        # (hook, how many adapter tensors it watches) per fault that acts on the gradients
        hooks = {"nan_grad": (self._poison, POISONED_TENSORS), "kill9": (self._wait_for_kill, 1)}
        if self.fault not in hooks:
            return self.inner.update(batch, lr_scale)
        hook, tensors = hooks[self.fault]
        with gradient_hook(self.optimizer.param_groups[0]["params"][:tensors], hook):
            return self.inner.update(batch, lr_scale)

    @staticmethod
    def _poison(grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))

    def _wait_for_kill(self, grad: torch.Tensor) -> None:
        if self.marker is not None:
            self.marker.touch()
        time.sleep(0.5)  # still inside the update when the parent's SIGKILL lands


class FaultyActor(LocalActor):
    """The runtime's local actor, and the fault's clock: it counts the steps by their training
    calls (`Runtime.run` plays each step's episodes in one call), and while a reward fault is
    active it plays step and retry episodes (never probes) in environments that rewrite rewards."""

    def __init__(self, runtime: Runtime, fault: str) -> None:
        super().__init__(runtime.policy, self._make_env, runtime.generator)
        self.task_env = runtime.make_env
        self.fault = fault
        self.step = 0  # the step being played and learned from; 0 before the first
        self.rewriting = False
        self.rng = random.Random(0)

    def active(self) -> bool:
        return self.step in FAULT_STEPS

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        if any(job.split == "train" for job in jobs):
            self.step += 1
        probes = any(job.split == "probe" for job in jobs)
        self.rewriting = self.active() and self.fault in REWARD_FAULTS and not probes
        try:
            return super().play(jobs, gen)
        finally:
            self.rewriting = False

    def _make_env(self, label: str) -> Env:
        env = self.task_env(label)
        return FaultyReward(env, self.fault, self.rng) if self.rewriting else env


# ---- target "run": the runtime's loop -----------------------------------------------------------
def config(guard: bool, steps: int, probe_size: int) -> RunConfig:
    stream = Stream("faults", (Stage(TRAINED, steps * 32),), probe_size=probe_size, general=(GENERAL,))
    return RunConfig(stream=stream.to_dict(), eval_every=4, guard=GuardConfig(enabled=guard), grpo=GRPOConfig())


def findings(run_dir: Path) -> list[str]:
    path = run_dir / "guard_events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["detector"] for line in path.read_text().splitlines()]


def scores(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    evals: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "eval":
            evals[r["step"]] = r["scores"]
    return evals[min(evals)], evals[max(evals)]


def warm_up(policy: Policy, work: Path, steps: int, probe_size: int) -> Path:
    """Learn the trained task for a few steps; returns the checkpoint every fault run starts from."""
    run = Runtime(config(True, steps, probe_size), policy, work / "warm")
    run.run()
    return run.ring.paths()[-1]


def reset_to(runtime: Runtime, warm: Path) -> None:
    """Put the warm adapters back into the runtime's policy: a change made outside its learning
    core, so they take a new version (versions never repeat)."""
    ring = CheckpointRing(warm.parent)
    ring.restore(ring.load(warm), runtime.policy.model, None)
    runtime.core.note_external_update()


def result(fault: str, guard: bool, run_dir: Path, lost: int, detected: bool | None = None) -> FaultResult:
    before, after = scores(run_dir)
    delta = min(after[t] - before[t] for t in before)
    found = findings(run_dir)
    rollbacks = sum(1 for f in found if f == "rollback")
    hit = detected if detected is not None else any(f != "rollback" for f in found)
    recovered = delta >= -RECOVERY_TOLERANCE
    return FaultResult(fault, guard, hit, recovered, round(delta, 4), lost, before, after, rollbacks, found)


def run_fault(policy: Policy, fault: str, guard: bool, warm: Path, work: Path, probe_size: int) -> FaultResult:
    """One run from the warm adapters with `fault` (or CONTROL) active in FAULT_STEPS."""
    run_dir = work / f"{fault}-{'on' if guard else 'off'}"
    runtime = Runtime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir)
    reset_to(runtime, warm)
    actor = FaultyActor(runtime, fault)
    runtime.actor = actor
    runtime.core.learner = FaultyLearner(runtime.learner, fault, actor.active)
    runtime.run()
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        lost = TOTAL_STEPS * runtime.config.episodes_per_step - store.count(split="train")
    return result(fault, guard, run_dir, lost)


def run_kill9(fault: str, guard: bool, warm: Path, work: Path, probe_size: int, policy: Policy) -> FaultResult:
    """A child process runs the fault-free loop; it is SIGKILLed inside the update of step 2."""
    run_dir = work / f"{fault}-{'on' if guard else 'off'}"
    marker = run_dir.parent / f"{run_dir.name}.in-update"
    cmd = [sys.executable, __file__, "--child", str(run_dir), "--warm", str(warm), "--probe-size", str(probe_size)]
    cmd += ["--threads", str(torch.get_num_threads())]
    child = subprocess.Popen([*cmd, "--guard" if guard else "--no-guard", "--marker", str(marker)])
    while not marker.exists():
        if child.poll() is not None:
            raise RuntimeError("the child run ended before the kill")
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        before_ids = store.ids()
    runtime = Runtime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir)
    reset_to(runtime, warm)  # the resume then loads the newest checkpoint over it
    runtime.run(resume=True)
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        lost = len(before_ids - store.ids())
    resumed = any(json.loads(line)["type"] == "resume" for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return result(fault, guard, run_dir, lost, detected=resumed)


def child(args: argparse.Namespace) -> None:
    """The victim of the kill9 fault: a normal run that marks the moment it is mid-update."""
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    runtime = Runtime(config(args.guard, TOTAL_STEPS, args.probe_size), policy, Path(args.child))
    reset_to(runtime, Path(args.warm))
    learner = runtime.learner
    # learner.step counts applied updates: 1 inside the update of step 2
    runtime.core.learner = FaultyLearner(learner, "kill9", lambda: learner.step == 1, Path(args.marker))
    runtime.run()


def run_target(args: argparse.Namespace) -> RunOne:
    """The runtime's loop: warm up on the trained task, then one short run per (fault, guard)."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lifelong-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    print(f"warm-up: {args.warm_steps} steps of {TRAINED.label} (work folder {work})", file=sys.stderr)
    warm = warm_up(policy, work, args.warm_steps, args.probe_size)

    def run_one(fault: str, guard: bool) -> FaultResult:
        if fault == "kill9":
            return run_kill9(fault, guard, warm, work, args.probe_size, policy)
        return run_fault(policy, fault, guard, warm, work, args.probe_size)

    return run_one


# ---- target "serve": the serving process --------------------------------------------------------
SERVE_FAULTS = ("flipped_ratings", "garbage_corrections", "nan_grad", "lr_spike", "kill9")
SERVE_PROBE_ITEMS = 16  # general-ability probes per task at every gate (and in the measure)
SERVE_ROUNDS = 3  # the victim's learning rounds...
SERVE_FAULT_ROUNDS = range(1, 3)  # ...with the fault active in these
VICTIM, BYSTANDER = "victim", "bystander"
SERVE_KEYS = {VICTIM: "sk-victim", BYSTANDER: "sk-bystander"}
GARBAGE_WORDS = ("purple", "seventeen", "banana", "never", "window", "quickly", "zebra", "cloud", "paper", "ninety")


@dataclass(frozen=True)
class ServeSetup:
    """What a serve run is made of: the model, its adapters and learning settings, the traffic size."""

    model: str | None  # None = the embedded model
    work: Path
    learning: TenantLearningConfig
    lora: LoraSettings = field(default_factory=LoraSettings)
    questions: int = 4  # feedback questions per round (each asked with n=2 at temperature 1)
    answer_tokens: int = 16
    watched: int = 8  # the bystander's fixed questions, answered greedily and sampled


@dataclass(frozen=True)
class StartState:
    """The folder every serve run copies, and what was measured there before any fault."""

    folder: Path
    before: dict[str, float]  # the victim's probe scores
    bystander_answers: list[str]  # its watched answers, greedy and sampled
    watched: list[str]
    chats: list[tuple[str, list[str]]]  # what the server acknowledged to the bystander there
    acked: list[int]


class ServeClient:
    """A tenant's official `openai` client on the live server, as a user sends requests and feedback."""

    def __init__(self, url: str, tenant: str, model_id: str, answer_tokens: int) -> None:
        self.client = openai.OpenAI(api_key=SERVE_KEYS[tenant], base_url=url, max_retries=0, timeout=600)
        self.model_id = model_id
        self.answer_tokens = answer_tokens
        self.acked: list[int] = []  # feedback ids the server acknowledged
        self.chats: list[tuple[str, list[str]]] = []  # acknowledged completions: (id, the answers)

    def ask(
        self, question: str, n: int = 1, temperature: float = 0.0, seed: int | None = None
    ) -> tuple[str, list[str]]:
        r = self.client.chat.completions.create(
            model=self.model_id, messages=[{"role": "user", "content": question}], n=n,
            temperature=temperature, seed=seed, max_tokens=self.answer_tokens,
        )  # fmt: skip
        self.chats.append((r.id, [c.message.content or "" for c in r.choices]))
        return self.chats[-1]

    def feedback(self, completion_id: str, choice: int = 0, **what: Any) -> None:
        ack = self.client.post(
            "/feedback", body={"completion_id": completion_id, "choice": choice, **what}, cast_to=object
        )
        self.acked.append(int(ack["id"].removeprefix("fb-")))  # type: ignore[index]

    def version(self) -> int:
        return int((self.client.models.list().data[0].model_extra or {})["adapter_version"])

    def wait_for(self, version: int, timeout: float = 60.0) -> None:
        """Until the server's watcher has hot-loaded this adapter version."""
        deadline = time.time() + timeout
        while self.version() < version:
            if time.time() > deadline:
                raise RuntimeError(f"the server did not load adapter version {version}")
            time.sleep(0.1)

    def rate(self, question: str, accepted: tuple[str, ...], flip: bool) -> None:
        """Two sampled answers, rated by whether they are right (`flip`: the other way round). When
        both are alike only the first is rated: a lone rating, held to the tenant's baseline."""
        rid, answers = self.ask(question, n=2, temperature=1.0)
        right = [matches(a, accepted) != flip for a in answers]
        for i, up in enumerate(right if len(set(right)) > 1 else right[:1]):
            self.feedback(rid, i, rating="up" if up else "down")

    def correct(self, question: str, correction: str) -> None:
        rid, _ = self.ask(question)
        self.feedback(rid, correction=correction)


def feedback_items(probe_items: int) -> list[tuple[str, tuple[str, ...]]]:
    """The FACTS items that are not the gate's probes, in order: the traffic users rate and correct."""
    probes = {s % len(FACTS) for s in ProbeSet(Task.of("facts"), probe_items).seeds}
    return [FACTS[i] for i in range(len(FACTS)) if i not in probes]


def send_feedback(c: ServeClient, items: Sequence[tuple[str, tuple[str, ...]]], fault: str, rng: random.Random) -> None:
    """A round's feedback: honest ratings and right corrections, or the feedback fault's version of them."""
    for question, accepted in items:
        if fault == "garbage_corrections":
            c.correct(question, " ".join(rng.sample(GARBAGE_WORDS, 3)))
            continue
        c.rate(question, accepted, flip=fault == "flipped_ratings")
        if fault != "flipped_ratings":
            c.correct(question, accepted[0])


def general_scores(c: ServeClient, probe_items: int) -> dict[str, float]:
    """The tenant's greedy success on the general-ability probes, asked through the server in plain chat."""
    scores = {}
    for task in GENERAL_TASKS:
        env = task.make()
        solved = []
        for seed in ProbeSet(task, probe_items).seeds:
            _, (answer,) = c.ask(env.reset(seed=seed)[0])
            env.reset(seed=seed)
            solved.append(float(env.step(answer).reward >= env.success_threshold))
        scores[task.label] = sum(solved) / len(solved)
    return scores


def watch(c: ServeClient, questions: Sequence[str]) -> list[str]:
    """Greedy and sampled (temperature 1, fixed seed) answers: any change of the weights shows."""
    greedy = [c.ask(q)[1][0] for q in questions]
    return greedy + [c.ask(q, temperature=1.0, seed=7)[1][0] for q in questions]


@contextmanager
def learner_fault(learner: TenantLearner, fault: str, active: bool) -> Iterator[None]:
    """The victim's learner with the fault, for one round: nan_grad poisons the gradients of a few
    adapter tensors as they are computed (the learners' own non-finite check sees them as a real
    NaN), lr_spike learns at 100x the configured rates. Feedback faults need nothing here."""
    config = learner.config
    if active and fault == "lr_spike":
        learner.config = replace(
            config,
            grpo=replace(config.grpo, learning_rate=100 * config.grpo.learning_rate),
            distill=replace(config.distill, learning_rate=100 * config.distill.learning_rate),
        )
    params = [p for p in learner.policy.model.parameters() if p.requires_grad][:POISONED_TENSORS]
    poison = active and fault == "nan_grad"
    try:
        with gradient_hook(params if poison else [], FaultyLearner._poison):
            yield
    finally:
        learner.config = config


class ServeBench:
    """The serve target's runs: a live server per run, and in this process the tenants' learner (the
    one `lifelong serve`'s worker runs), its rounds run with `learn_once` where the benchmark says."""

    def __init__(self, setup: ServeSetup) -> None:
        self.setup = setup
        self.learner: TenantLearner | None = None
        self.start: StartState | None = None
        self.items = feedback_items(setup.learning.probe_items)
        need = (SERVE_ROUNDS + 1) * setup.questions
        if len(self.items) < need:
            raise ConfigError(f"{need} feedback questions needed, {len(self.items)} left", "use fewer --questions")

    def config(self, run_dir: Path, guard: bool) -> ServeConfig:
        learning = self.setup.learning
        return ServeConfig(
            store=run_dir,
            model=self.setup.model,
            keys=tuple((t, k) for t, k in SERVE_KEYS.items()),
            threads=torch.get_num_threads(),
            answer_tokens=self.setup.answer_tokens,
            lora=self.setup.lora,
            learner=LearnerConfig(enabled=False, min_feedback=1, max_wait_s=0.0, poll_s=0.2, max_items_per_round=64),
            learning=replace(learning, guard=replace(learning.guard, enabled=guard)),
        )

    def tenant_learner(self, config: ServeConfig, store: ExperienceStore) -> TenantLearner:
        """The learner on this run's store and adapters, from the initial adapter the server saved.
        The model and the anchor pool (the pretrained model's answers) are built once."""
        folder = adapters_folder(config)
        if self.learner is None:
            self.learner = build_learner(config, store)
        else:
            self.learner.store, self.learner.folder = store, folder
            self.learner.initial = ensure_initial_adapter(self.learner.policy, folder)
        self.learner.config = config.learning
        return self.learner

    def start_state(self) -> StartState:
        """What every run starts from, made once: the bystander's first round learned and live,
        the victim's first gate (the pretrained reference) passed, and the measures before the
        fault (the victim's probe scores, the bystander's watched answers). Each run copies the
        folder: the runs differ only after this point, and each saves these rounds."""
        if self.start is not None:
            return self.start
        folder = self.setup.work / "serve-start"
        shutil.rmtree(folder, ignore_errors=True)
        config = self.config(folder, guard=True)
        with self.live(config) as (victim, bystander, store, learner):
            q = self.setup.questions
            send_feedback(bystander, self.items[SERVE_ROUNDS * q :][:q], CONTROL, random.Random(1))
            learn_once(learner, config)
            live = store.live_versions()[BYSTANDER][0].version
            bystander.wait_for(live)
            learner.bootstrap(VICTIM)
            watched = self.watched_questions()
            self.start = StartState(
                folder, general_scores(victim, self.setup.learning.probe_items), watch(bystander, watched), watched,
                bystander.chats, bystander.acked,
            )  # fmt: skip
        return self.start

    @contextmanager
    def live(self, config: ServeConfig) -> Iterator[tuple[ServeClient, ServeClient, ExperienceStore, TenantLearner]]:
        """A live server on `config`'s store: the two tenants' clients, the store, and the learner on it."""
        with ExitStack() as stack:
            server = Server(config)
            stack.callback(server.close)
            url = stack.enter_context(BackgroundServer(server))
            model_id, tokens = server.service.model_id, self.setup.answer_tokens
            victim, bystander = (ServeClient(url, t, model_id, tokens) for t in (VICTIM, BYSTANDER))
            store = stack.enter_context(ExperienceStore(config.database_location))
            yield victim, bystander, store, self.tenant_learner(config, store)

    def begin(self, run_dir: Path) -> StartState:
        """A run's folder as a copy of the start state's."""
        start = self.start_state()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(start.folder, run_dir)
        return start

    def watched_questions(self) -> list[str]:
        """The bystander's fixed questions: the first general-ability probes of each task."""
        out = []
        for task in GENERAL_TASKS:
            env = task.make()
            seeds = ProbeSet(task, self.setup.learning.probe_items).seeds[: self.setup.watched // len(GENERAL_TASKS)]
            out += [env.reset(seed=s)[0] for s in seeds]
        return out

    def run_kill9(self, guard: bool) -> FaultResult:
        """`lifelong serve` in a subprocess with its worker on: round 1 normal, then the victim keeps
        chatting and rating from a thread while the worker's round 2 runs, and the server and worker
        are killed with SIGKILL inside it (once the round has stored its episodes); a restart must
        serve the last live version, redo the round (detected: the interrupted feedback is consumed
        after the restart) and learn round 3."""
        run_dir = self.setup.work / f"serve-kill9-{'on' if guard else 'off'}"
        start = self.begin(run_dir)
        q = self.setup.questions
        config = self.config(run_dir, guard)
        config = replace(
            config, learner=replace(config.learner, enabled=True, min_feedback=2 * q, max_wait_s=5.0, nice=0)
        )
        rng = random.Random(0)
        proc = ServeProcess(config, run_dir.parent / f"{run_dir.name}.log")
        with ExitStack() as stack:
            stack.callback(proc.stop)
            proc.start()
            model_id, tokens = served_model(proc.url), self.setup.answer_tokens
            victim, bystander = (ServeClient(proc.url, t, model_id, tokens) for t in (VICTIM, BYSTANDER))
            bystander.chats, bystander.acked = list(start.chats), list(start.acked)
            store = stack.enter_context(ExperienceStore(config.database_location))

            def learned(tenant: str, rounds: int) -> Callable[[], bool]:
                return lambda: len(store.adapters(tenant)) >= rounds and tenant not in store.pending_summary()

            def hot_loaded(c: ServeClient, tenant: str) -> None:
                live = store.live_versions().get(tenant)
                if live:
                    c.wait_for(live[0].version, timeout=120)

            hot_loaded(bystander, BYSTANDER)
            send_feedback(victim, self.items[:q], CONTROL, rng)
            wait_until(learned(VICTIM, 1), "the victim's round 1")
            hot_loaded(victim, VICTIM)
            live_before_kill = victim.version()

            # round 2: traffic from a thread; SIGKILL once the worker's round has stored its episodes
            episodes = len(store.episodes(run_id=run_id(VICTIM)))
            stop = threading.Event()
            items = self.items[q : 2 * q]

            def traffic() -> None:
                for i in itertools.count():
                    if stop.is_set():
                        return
                    try:
                        victim.rate(*items[i % len(items)], flip=False)
                    except (openai.APIConnectionError, openai.APITimeoutError):
                        return

            thread = threading.Thread(target=traffic, daemon=True)
            thread.start()
            wait_until(lambda: len(store.episodes(run_id=run_id(VICTIM))) > episodes, "the worker's round 2")
            proc.kill9()
            stop.set()
            thread.join(timeout=120)
            records_at_kill = len(store.adapters(VICTIM))
            proc.start()
            resumed_live = victim.version() == live_before_kill
            wait_until(learned(VICTIM, records_at_kill + 1), "the restarted worker's round")
            resumed = resumed_live and not store.pending_feedback(VICTIM)
            records = len(store.adapters(VICTIM))
            send_feedback(victim, self.items[2 * q : 3 * q], CONTROL, rng)
            wait_until(learned(VICTIM, records + 1), "the victim's round 3")
            hot_loaded(victim, VICTIM)
            after = general_scores(victim, self.setup.learning.probe_items)
            identical = watch(bystander, start.watched) == start.bystander_answers
            lost = sum(items_lost(store, c, t) for c, t in ((victim, VICTIM), (bystander, BYSTANDER)))
            rounds = [
                {"version": r.version, "status": r.status.value, "reason": r.reason} for r in store.adapters(VICTIM)
            ]
        return serve_result(
            "kill9", guard, run_dir, start.before, after, rounds, set(), lost, identical, detected=resumed
        )

    def run(self, fault: str, guard: bool) -> FaultResult:
        if fault == "kill9":
            return self.run_kill9(guard)
        run_dir = self.setup.work / f"serve-{fault}-{'on' if guard else 'off'}"
        start = self.begin(run_dir)
        config = self.config(run_dir, guard)
        rng = random.Random(0)
        q = self.setup.questions
        with self.live(config) as (victim, bystander, store, learner):
            bystander.chats, bystander.acked = list(start.chats), list(start.acked)

            def learn(active: bool) -> list[dict[str, Any]]:
                with learner_fault(learner, fault, active):
                    rounds = learn_once(learner, config)
                for c, tenant in ((victim, VICTIM), (bystander, BYSTANDER)):
                    live = store.live_versions().get(tenant)
                    if live:
                        c.wait_for(live[0].version)
                return rounds

            bystander.wait_for(store.live_versions()[BYSTANDER][0].version)
            fault_versions: set[int] = set()
            rounds = []
            for r in range(1, SERVE_ROUNDS + 1):
                active = fault != CONTROL and r in SERVE_FAULT_ROUNDS
                send_feedback(victim, self.items[(r - 1) * q : r * q], fault if active else CONTROL, rng)
                for entry in learn(active):
                    if entry["tenant"] == VICTIM:
                        rounds.append(entry)
                        if active:
                            fault_versions.add(entry["version"])
            after = general_scores(victim, self.setup.learning.probe_items)
            identical = watch(bystander, start.watched) == start.bystander_answers
            lost = sum(items_lost(store, c, t) for c, t in ((victim, VICTIM), (bystander, BYSTANDER)))
        return serve_result(fault, guard, run_dir, start.before, after, rounds, fault_versions, lost, identical)


class ServeProcess:
    """`lifelong serve` as a subprocess in its own process group (the server and its learning worker),
    with the same arguments each time it is started."""

    def __init__(self, config: ServeConfig, log: Path) -> None:
        settings = config.store.parent / f"{config.store.name}.json"
        settings.write_text(json.dumps(config.to_dict()))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        keys = [arg for t, k in SERVE_KEYS.items() for arg in ("--key", f"{t}={k}")]
        self.args = [sys.executable, "-m", "lifelong.cli", "serve", "--config", str(settings), "--port", str(self.port)]
        self.args += keys
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("lifelong serve exited:\n" + self.log.read_text()[-2000:])
            try:
                with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("lifelong serve did not come up:\n" + self.log.read_text()[-2000:])

    def kill9(self) -> None:
        """SIGKILL to the whole group: the server and its worker die at the same instant."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # graceful: uvicorn stops its learner
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 900.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def served_model(url: str) -> str:
    """The model id a live server serves (what clients pass as `model`)."""
    c = openai.OpenAI(api_key=SERVE_KEYS[VICTIM], base_url=url, max_retries=0, timeout=60)
    return c.models.list().data[0].id


def items_lost(store: ExperienceStore, c: ServeClient, tenant: str) -> int:
    """What the server acknowledged to `c` and the store lacks: completions (or their answers),
    feedback items, and the episode of every feedback item a round consumed."""
    lost = 0
    for rid, answers in c.chats:
        req = store.request(rid)
        lost += req is None or req.status != "completed" or [x.answer for x in req.choices] != answers
    stored = {f.id: f for f in store.feedback(tenant)}
    made = {e.info.get("feedback") for e in store.episodes(run_id=run_id(tenant))}
    lost += sum(i not in stored for i in c.acked)
    return lost + sum(i in stored and stored[i].consumed_version is not None and i not in made for i in c.acked)


def serve_result(
    fault: str,
    guard: bool,
    run_dir: Path,
    before: dict[str, float],
    after: dict[str, float],
    rounds: Sequence[dict[str, Any]],
    fault_versions: set[int],
    lost: int,
    identical: bool,
    detected: bool | None = None,
) -> FaultResult:
    """A serve run's row: detected = a guard finding during the fault rounds, or one of them refused."""
    events = run_dir / "adapters" / VICTIM / "guard_events.jsonl"
    records = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    found = [r["detector"] for r in records]
    refused = any(
        r["status"] == AdapterStatus.REJECTED.value and not r["reason"].startswith(("error", "no learning"))
        for r in rounds
        if r["version"] in fault_versions
    )
    hit = refused or any(r["detector"] != "rollback" and r["step"] in fault_versions for r in records)
    hit = hit if detected is None else detected
    found += [f"round_error: {r['reason']}" for r in rounds if r["reason"].startswith("error")]
    delta = min(after[t] - before[t] for t in before)
    rollbacks = sum(1 for f in found if f == "rollback")
    result = FaultResult(
        fault, guard, hit, delta >= -RECOVERY_TOLERANCE, round(delta, 4), lost, before, after, rollbacks, found,
        bystander_identical=identical,
    )  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))  # the row, kept with the run
    return result


def serve_target(args: argparse.Namespace) -> RunOne:
    """The serving process: per (fault, guard), a live server and the tenants' learner on its store."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lifelong-faults-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    learning = TenantLearningConfig(probe_items=args.probe_size or SERVE_PROBE_ITEMS, anchor_items=16)
    setup = ServeSetup(args.model, work, learning, questions=args.questions)
    print(f"serve: model {args.model or 'embedded'}, work folder {work}", file=sys.stderr)
    return ServeBench(setup).run


TARGETS: dict[str, Callable[[argparse.Namespace], RunOne]] = {"run": run_target, "serve": serve_target}


# ---- shared: the control run, the comparison, the table -----------------------------------------
def compare(run_one: RunOne, faults: Sequence[str], t0: float) -> list[FaultResult]:
    """The control run, then every fault, each with the guard on and off."""
    results = []
    control: dict[bool, float] = {}
    for fault in [CONTROL, *faults]:
        for guard in (True, False):
            print(f"[{time.time() - t0:5.0f}s] {fault} guard={'on' if guard else 'off'}", file=sys.stderr)
            r = run_one(fault, guard)
            if fault == CONTROL:
                control[guard] = r.probe_delta
            else:
                r.control_delta = control[guard]
                r.recovered_vs_control = r.probe_delta >= min(0.0, r.control_delta) - RECOVERY_TOLERANCE
            results.append(r)
            print(
                f"    detected={r.detected} recovered={r.recovered} probe_delta={r.probe_delta:+.3f} "
                f"lost={r.episodes_lost} rollbacks={r.rollbacks} findings={sorted(set(r.findings))}"
                + ("" if r.bystander_identical is None else f" bystander_identical={r.bystander_identical}"),
                file=sys.stderr,
            )
    return results


def report(results: Sequence[FaultResult], t0: float, as_json: bool) -> None:
    print(f"\n{'fault':18s} {'guard':5s} {'detected':8s} {'recovered':9s} {'probe_delta':>11s}", end=" ")
    serve = any(r.bystander_identical is not None for r in results)
    print(f"{'control':>8s} {'vs_control':10s} {'lost':>4s}" + (" bystander_identical" if serve else ""))
    for r in results:
        ctrl = f"{100 * r.control_delta:+7.1f}p" if r.control_delta is not None else f"{'':8s}"
        vs_control = "" if r.recovered_vs_control is None else str(r.recovered_vs_control)
        print(
            f"{r.fault:18s} {'on' if r.guard else 'off':5s} {r.detected!s:8s} {r.recovered!s:9s} "
            f"{100 * r.probe_delta:+10.1f}p {ctrl} {vs_control:10s} {r.episodes_lost:4d}"
            + (f" {r.bystander_identical!s}" if serve else "")
        )
    print(f"({(time.time() - t0) / 60:.1f} minutes)")
    if as_json:
        keys: tuple[str, ...] = ("fault", "guard", "detected", "recovered", "probe_delta", "episodes_lost")
        keys += ("control_delta", "recovered_vs_control") + (("bystander_identical",) if serve else ())
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in results if r.fault != CONTROL]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="run", help="what the faults hit (default: run)")
    parser.add_argument("--faults", help=f"default: run {','.join(FAULTS)}; serve {','.join(SERVE_FAULTS)}")
    parser.add_argument("--warm-steps", type=int, default=6)
    parser.add_argument(
        "--probe-size", type=int, help=f"probe items per task (default: run 48, serve {SERVE_PROBE_ITEMS})"
    )
    parser.add_argument("--model", help="serve: a model folder (default: the embedded model)")
    parser.add_argument("--questions", type=int, default=4, help="serve: feedback questions per round (default: 4)")
    parser.add_argument("--workdir", help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("--marker", help=argparse.SUPPRESS)
    parser.add_argument("--guard", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    known = SERVE_FAULTS if args.target == "serve" else FAULTS
    if args.target == "run":
        args.probe_size = args.probe_size or 48
    if args.child:
        child(args)
        return
    faults = [f.strip() for f in (args.faults or ",".join(known)).split(",") if f.strip()]
    unknown = sorted(set(faults) - set(known))
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(known)}")
    t0 = time.time()
    run_one = TARGETS[args.target](args)
    report(compare(run_one, faults, t0), t0, args.json)


if __name__ == "__main__":
    main()

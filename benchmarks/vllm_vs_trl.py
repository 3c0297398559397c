"""GPU benchmark: lifelong's vLLM sampling backend vs TRL's GRPOTrainer with vLLM, in one run.

Both sides get the same model folder, the same batch (P prompts x G completions per update), the
same prompts (addition items in lifelong's chat prompt, ending in "Answer:" so both sample only the
answer), the same completion budget, LoRA rank 16 on all linear layers, the same learning rate,
clip 0.2/0.28, KL coefficient 0.02 and token-mean loss; TRL's vLLM runs colocated in the trainer
process, as ours does. Each side runs in its own subprocess (two vLLM engines in one process do not
release GPU memory) for --warmup + --steps updates; the warm-up updates are not timed.

Reported per side, over the timed updates:
  sampled_tokens_per_s   tokens generated per second of sampling (ours: including the adapter
                         hot-load into vLLM; TRL: its weight sync happens outside the timed
                         generate call, so this slightly favours TRL)
  updates_per_min        full updates (sample + score + learn + weight sync) per wall-clock minute
and the ratios lifelong / TRL. Ours trains on the GPU (the learner's tensors follow
`torch.set_default_device("cuda")`), like TRL, and learns through the learning core
(loop/learning.py): every applied update takes a new adapter version, which `VLLMActor` hot-loads
into vLLM before it samples again, so no step samples with stale adapters (`adapter_loads` in the
JSON: one before the first update, then one per applied update but the last).

Needs an NVIDIA GPU with vllm and trl, none of which a CPU machine installs:

    pip install -e '.[gpu]' trl datasets
    python benchmarks/vllm_vs_trl.py --steps 20 [--prompts 16 --group 8] [--json]

Without CUDA, vllm or trl it stops at once with a message and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifelong.model.vllm_sampler import Engine

TASK = "add"
TASK_PARAMS = {"max_value": 20}


def preflight() -> str | None:
    """Why this benchmark cannot run here, or None."""
    import torch

    missing = [m for m in ("vllm", "trl", "datasets") if importlib.util.find_spec(m) is None]
    if not torch.cuda.is_available():
        return "no CUDA device is visible (this benchmark needs an NVIDIA GPU)"
    if missing:
        return f"{', '.join(missing)} not installed: pip install -e '.[gpu]' trl datasets"
    return None


def _items(n: int, seed: int) -> list[tuple[str, int]]:
    """(observation, seed) of n training items of the task, the same for both sides."""
    import random

    from lifelong.streams.stream import ProbeSet, Task

    task = Task.of(TASK, **TASK_PARAMS)
    seeds = ProbeSet(task, 8).training_seeds(random.Random(seed), n)
    return [(task.make().reset(seed=s)[0], s) for s in seeds]


# ---- lifelong ------------------------------------------------------------------------------------
def run_ours(args: argparse.Namespace, device: str = "cuda", engine: Engine | None = None) -> dict[str, Any]:
    """Our side: `VLLMActor` samples, the learning core learns. `device` and `engine` (a stand-in
    for vLLM) let the loop run without a GPU (tests/benchmarks/test_vllm_vs_trl.py)."""
    import torch

    from lifelong.guard.checkpoints import CheckpointRing
    from lifelong.guard.gate import Guard, GuardConfig
    from lifelong.learn.grpo import GRPOConfig, GRPOLearner
    from lifelong.loop.actor import Job
    from lifelong.loop.learning import LearningCore
    from lifelong.loop.runtime import RunConfig
    from lifelong.model.loading import load_model
    from lifelong.model.policy import Policy
    from lifelong.scale.vllm_actor import VLLMActor
    from lifelong.streams.stream import Stage, Stream, Task

    task = Task.of(TASK, **TASK_PARAMS)
    stream = Stream("bench", (Stage(task, args.prompts * args.group),), probe_size=8)
    config = RunConfig(
        stream=stream.to_dict(),
        model=args.model,
        prompts_per_step=args.prompts,
        answer_tokens=args.completion_tokens,
        grpo=GRPOConfig(group_size=args.group, learning_rate=args.lr, micro_batch=args.prompts * args.group),
    )
    model, tokenizer, name = load_model(config.model)
    policy = Policy(model.to(device), tokenizer, name=name, lora=config.lora)
    # The learner builds its tensors with plain factory calls: make them land on the GPU too.
    torch.set_default_device(device)

    def synchronize() -> None:  # a timing must include the GPU work queued before it
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    # The learning core gives the adapters a new version with every applied update; the actor
    # compares it with the version vLLM holds and hot-loads the new adapters before sampling, so no
    # update samples with stale ones. The guard is off, as in TRL: the two sides learn alike.
    workdir = Path(args.workdir)
    guard = Guard(GuardConfig(enabled=False), workdir)
    core = LearningCore(policy, GRPOLearner(policy, config.grpo), guard, CheckpointRing(workdir / "checkpoints"))
    actor = VLLMActor(policy, config, workdir, engine=engine, gpu_memory_utilization=args.vllm_memory)
    items = _items(args.prompts * (args.warmup + args.steps), args.seed)
    gen = config.generation(config.grpo.temperature)
    sample_s = tokens = 0.0
    mismatch: list[float] = []
    applied = 0
    t_start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize()
            t_start, sample_s, tokens = time.perf_counter(), 0.0, 0.0
        batch_items = items[step * args.prompts : (step + 1) * args.prompts]
        jobs = [
            Job(task.label, s, group=f"{step}:{i}") for i, (_, s) in enumerate(batch_items) for _ in range(args.group)
        ]
        t0 = time.perf_counter()
        episodes = actor.play(jobs, gen)
        sample_s += time.perf_counter() - t0
        tokens += sum(e.num_sampled_tokens for e in episodes)
        report = core.learn(step + 1, episodes).report
        applied += report.applied
        if "policy/sampler_mismatch" in report.metrics:
            mismatch.append(report.metrics["policy/sampler_mismatch"])
    synchronize()
    wall = time.perf_counter() - t_start
    return {
        "side": "lifelong",
        "sampled_tokens_per_s": tokens / sample_s,
        "updates_per_min": 60 * args.steps / wall,
        "sampled_tokens": tokens,
        "sample_s": sample_s,
        "wall_s": wall,
        "sampler_mismatch_mean": sum(mismatch) / len(mismatch) if mismatch else None,
        "updates_applied": applied,  # warm-up included; each took a new adapter version
        "adapter_loads": actor.loads,  # into vLLM: one before the first update, then one per new version
    }


# ---- TRL -----------------------------------------------------------------------------------------
def _known(cls: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings this TRL version has (its config fields move between releases); says what it drops."""
    names = {f.name for f in dataclasses.fields(cls)}
    dropped = sorted(set(settings) - names)
    if dropped:
        print(f"note: this TRL has no {', '.join(dropped)}; left at its defaults", file=sys.stderr)
    return {k: v for k, v in settings.items() if k in names}


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lifelong.model.loading import resolve_model_folder
    from lifelong.model.policy import ANSWER_MARKER, SYSTEM_PROMPT, LoraSettings
    from lifelong.streams.stream import Task

    folder = resolve_model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = Task.of(TASK, **TASK_PARAMS)

    def prompt(observation: str) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": observation}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text) + ANSWER_MARKER  # what lifelong's policy feeds when it does not think

    rows = [{"prompt": prompt(o), "seed": s} for o, s in _items(args.prompts * (args.warmup + args.steps), args.seed)]
    counted = {"tokens": 0.0, "generate_s": 0.0, "timing": False}

    def reward(prompts: list[str], completions: list[str], seed: list[int], **kwargs: Any) -> list[float]:
        ids = kwargs.get("completion_ids")
        if counted["timing"]:
            counted["tokens"] += (
                sum(len(c) for c in ids)
                if ids is not None
                else sum(len(tokenizer.encode(c, add_special_tokens=False)) for c in completions)
            )
        scores = []
        for completion, s in zip(completions, seed, strict=True):
            env = task.make()
            env.reset(seed=int(s))
            scores.append(float(env.step(completion.lstrip().split("\n", 1)[0].strip()).reward))
        return scores

    lora = LoraSettings()
    settings = {
        "output_dir": args.workdir,
        "per_device_train_batch_size": args.prompts * args.group,
        "gradient_accumulation_steps": 1,
        "num_generations": args.group,
        "max_completion_length": args.completion_tokens,
        "max_steps": args.warmup + args.steps,
        "learning_rate": args.lr,
        "beta": 0.02,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "loss_type": "dapo",  # token-mean over the batch, as lifelong's learner
        "num_iterations": 1,
        "temperature": 1.0,
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": args.vllm_memory,
        "shuffle_dataset": False,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "seed": args.seed,
        "bf16": False,  # lifelong's learner trains in fp32
    }
    config = GRPOConfig(**_known(GRPOConfig, settings))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    marks: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *a: Any, **k: Any) -> None:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
            counted["timing"] = len(marks) >= args.warmup

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Clock()],
    )
    llm = getattr(trainer, "llm", None)  # colocate mode's engine: time its generate calls
    if llm is not None:
        generate = llm.generate

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return generate(*a, **k)
            finally:
                if counted["timing"]:
                    counted["generate_s"] += time.perf_counter() - t0

        llm.generate = timed
    trainer.train()
    wall = marks[-1] - marks[args.warmup - 1]  # from the end of the warm-up to the end
    return {
        "side": "trl",
        "sampled_tokens_per_s": counted["tokens"] / counted["generate_s"] if counted["generate_s"] else None,
        "updates_per_min": 60 * args.steps / wall,
        "sampled_tokens": counted["tokens"],
        "sample_s": counted["generate_s"] or None,
        "wall_s": wall,
        "trl_version": importlib.import_module("trl").__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local Hugging Face model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first (engine and kernel warm-up)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per update (P)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--completion-tokens", type=int, default=12, help="completion budget")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="fraction of GPU memory for vLLM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)  # one side, in a subprocess
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first update compiles kernels and loads the engine)")

    problem = preflight()
    if problem:
        print(f"vllm_vs_trl: cannot run here: {problem}", file=sys.stderr)
        return 2

    if args.side:
        result = (run_ours if args.side == "ours" else run_trl)(args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    import torch

    results: dict[str, Any] = {}
    for side in ("ours", "trl"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, __file__, "--side", side, "--out", str(out), "--workdir", tmp]
            for flag in (
                "model",
                "steps",
                "warmup",
                "prompts",
                "group",
                "completion_tokens",
                "lr",
                "vllm_memory",
                "seed",
            ):
                value = getattr(args, flag)
                if value is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(value)]
            done = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if done.returncode != 0 or not out.exists():
                print(f"vllm_vs_trl: the {side} side failed (exit {done.returncode})", file=sys.stderr)
                return 1
            results[side] = json.loads(out.read_text())
    ours, trl = results["ours"], results["trl"]
    summary = {
        "device": torch.cuda.get_device_name(0),
        "model": args.model or "smollm2-135m-instruct",
        "batch": {"prompts": args.prompts, "group": args.group, "completion_tokens": args.completion_tokens},
        "steps": args.steps,
        "lifelong": ours,
        "trl": trl,
        "ratio/sampled_tokens_per_s": (
            ours["sampled_tokens_per_s"] / trl["sampled_tokens_per_s"] if trl["sampled_tokens_per_s"] else None
        ),
        "ratio/updates_per_min": ours["updates_per_min"] / trl["updates_per_min"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"device {summary['device']}, model {summary['model']}, batch {args.prompts}x{args.group}")
        for name, r in (("lifelong", ours), ("TRL", trl)):
            tps = r["sampled_tokens_per_s"]
            tps_text = "n/a" if tps is None else f"{tps:.1f}"
            print(f"{name:9s} sampled tokens/s {tps_text}  updates/min {r['updates_per_min']:.1f}")
        print(
            f"ratio lifelong/TRL: tokens/s {summary['ratio/sampled_tokens_per_s']}, "
            f"updates/min {summary['ratio/updates_per_min']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

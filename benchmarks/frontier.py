"""The frontier of new learning against forgetting, per unit of learning (issue 21).

For each unit (`full` fine-tuning, `lora`, `memory` values with sparse updates) at several learning
rates: a fresh embedded model (or --model) is taught made-up facts (benchmarks/knowledge.py's, so
nothing a pretrained model can know) in two batches by plain NLL on the answer (the correction
learner's rule; learn/sft.py), each batch `--steps` full-batch steps. Measured closed book (the
weights alone, greedy, asked as knowledge.py asks: after example turns, " Answer in one word."):

  new            accuracy on the second batch's facts after it was taught (their teaching question)
  paraphrase     the same facts asked with three paraphrases no teaching saw
  earlier_loss   accuracy on the first batch's facts after batch 1 minus after batch 2
  general_loss   success on the general probes before teaching minus after: `--general-items` items
                 each of `facts` and `instruct` (64 in all), asked as a run's evaluation asks them
                 (memory_unit.py's set; issue 21's "general probes")
  general_questions_loss
                 the same on chat_parity.py's 40 general questions, asked as the facts are. Kept
                 beside the probes, not as the headline: 12 of the 40 are right before teaching, and
                 their capital questions share the made-up facts' template, so full and LoRA lose all
                 12 before learning a fact (dev/LOG.md, stop 23) and no ratio can be read from them

`--teacher` says what the facts are taught from (issue 19's ablation: how much of what consolidation
misses is the teacher being the same small model):
  answer    NLL of the true answer after the teaching question (a perfect teacher; the default)
  exchange  self-distillation as consolidation does it (learn/distill.py): the teacher is the same
            model with the fact recalled as a taught exchange (a correction's form), the student
            the bare question, on the student's own samples, held to the pretrained model by the
            reference term; `--teacher-contrast c` reads the teacher against it (c = 0 is plain),
            `--frozen-teacher` scores the teacher with the pretrained weights, not the live ones;
            `--teacher-labels`: instead of distilling, NLL of the answer the pretrained model gives
            with the fact recalled (greedy, read with the contrast), each batch's labels written
            before its steps (sequence-level distillation: the true answer where it reads right)
  document  the same with the fact's sentence recalled as a document's quoted passage

One seed for the sweep (`--seeds 0,1,2` for the points a claim rests on). A plot of the frontier
(general_loss against new, one curve per unit) and the JSON go to --out; the last stdout line with
--json is {"units": {"full"|"lora"|"memory": [{"lr", "new", "general_loss", "earlier_loss", ...}]}}
(means over seeds, and per-seed lists where several were run).

    python benchmarks/frontier.py --json
    python benchmarks/frontier.py --units memory --lrs memory=1e-3,3e-3 --facts 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # knowledge.py and chat_parity.py beside this file
from chat_parity import QUESTIONS as GENERAL
from chat_parity import first_word
from knowledge import Fact, Progress, add_memory_unit_arguments, make_facts, messages, say
from memory_unit import general_answers

from lifelong.cli import _quiet_libraries
from lifelong.learn.distill import DistillConfig, SelfDistiller
from lifelong.learn.optim import make_optimizer
from lifelong.learn.sft import SFTConfig, SFTLearner
from lifelong.loop.feedback import correction_completion
from lifelong.memory.recall import with_exchange, with_notes
from lifelong.model.loading import load_model
from lifelong.model.memory_layer import MemorySettings
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Batch, Lesson, MemoryItem, MemoryKind, Sample

# Rates from just below where each unit starts to learn the facts to where it learns them all, at
# 135M (dev/LOG.md, stops 23 and 28; memory values move lr x lr_scale 5000).
DEFAULT_LRS = {"full": (3e-5, 6e-5, 1e-4), "lora": (5e-4, 1e-3, 2e-3, 3e-3), "memory": (4e-4, 7e-4, 1e-3, 2e-3)}
# Two example turns before each question: asked alone the model answers in sentences; every
# shot lengthens every training forward (full fine-tuning on 2 cores is the slowest point).
SHOTS = 2
GREEDY = GenerationConfig(protocol=False, temperature=0.0, answer_tokens=8)


def ask(policy: Policy, questions: Sequence[str]) -> list[str]:
    contexts = [policy.chat_ids(messages(q, SHOTS), protocol=False) for q in questions]
    return [c.answer for c in policy.chat(contexts, GREEDY)]


def accuracy(policy: Policy, questions: Sequence[str], answers: Sequence[str]) -> float:
    replies = ask(policy, questions)
    return sum(first_word(r) == a.lower() for r, a in zip(replies, answers, strict=True)) / max(1, len(answers))


def probe_success(policy: Policy, per_task: int) -> float:
    episodes = general_answers(policy, per_task)
    return sum(e.success for e in episodes) / len(episodes)


def teaching(policy: Policy, facts: Sequence[Fact], answers: Sequence[str] | None = None) -> Batch:
    """Each fact's teaching question, asked as measured, with its answer (or `answers[i]`) as the
    reply to learn."""
    tok = policy.tokenizer
    samples = []
    for i, f in enumerate(facts):
        prompt = tuple(policy.chat_ids(messages(f.teach, SHOTS), protocol=False))
        reply = correction_completion(tok, f.answer if answers is None else answers[i], int(tok.eos_token_id))
        samples.append(Sample(prompt, reply.token_ids, reply.logprobs, reply.loss_mask, 1.0))
    return Batch(tuple(samples), len(samples), 0, 1.0, 0.0, ())


def self_taught(policy: Policy, facts: Sequence[Fact], form: str) -> list[Lesson]:
    """Each fact's teaching question, asked as measured, as a distillation lesson: the teacher reads
    the fact as recall puts it into the context (`form`: a taught exchange or a document passage)."""
    lessons = []
    for f in facts:
        turns = messages(f.teach, SHOTS)
        if form == "exchange":
            taught = with_exchange(turns, f.answer)
        else:
            passage = MemoryItem(
                f"fact-{f.id}", MemoryKind.DOCUMENT, "serve", "notes.md", f.statement, (), 0.0, offset=0
            )
            taught = with_notes(turns, [passage])
        student = tuple(policy.chat_ids(turns, protocol=False))
        lessons.append(Lesson(student, tuple(policy.chat_ids(taught, protocol=False)), protocol=False))
    return lessons


def teacher_labels(policy: Policy, facts: Sequence[Fact], form: str, contrast: float) -> list[str]:
    """What the pretrained model answers to each teaching question with its fact recalled in `form`
    (greedy, read against the bare question with `contrast`, as served)."""
    lessons = self_taught(policy, facts, form)
    gen = GenerationConfig(
        protocol=False, temperature=0.0, answer_tokens=GREEDY.answer_tokens, memory_contrast=contrast
    )
    with policy.pretrained():
        replies = policy.chat([x.teacher_prompt for x in lessons], gen, bare=[x.student_prompt for x in lessons])
    return [c.answer.strip() or "?" for c in replies]


def one_point(args: argparse.Namespace, unit: str, lr: float, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model, tokenizer, name = load_model(args.model)
    policy = Policy(model, tokenizer, name=name, unit=unit, memory=args.memory)
    facts = make_facts(args.facts, 2, seed)
    first, second = [f for f in facts if f.batch == 0], [f for f in facts if f.batch == 1]
    general_q, general_a = [q for q, _ in GENERAL], [a for _, a in GENERAL]
    questions_before = accuracy(policy, general_q, general_a)
    probes_before = probe_success(policy, args.general_items)
    labels: dict[int, str] = {}  # fact id -> the teacher's answer (`--teacher-labels`)
    if args.teacher == "answer" or args.teacher_labels:
        learner = SFTLearner(policy, SFTConfig(learning_rate=lr, warmup_steps=0, anchor_coef=0.0))

        def step(facts: Sequence[Fact]) -> None:
            answers = [labels[f.id] for f in facts] if args.teacher_labels else None
            learner.update(teaching(policy, facts, answers))
    else:
        config = DistillConfig(
            learning_rate=lr,
            answer_tokens=GREEDY.answer_tokens,
            teacher_contrast=args.teacher_contrast,
            frozen_teacher=args.frozen_teacher,
        )
        distiller = SelfDistiller(policy, make_optimizer(policy, lr, 0.0), config, torch.Generator().manual_seed(seed))

        def step(facts: Sequence[Fact]) -> None:
            distiller.update(self_taught(policy, facts, args.teacher))

    def learn(facts: Sequence[Fact]) -> None:
        if args.teacher_labels:  # a batch's labels are written once, before its steps
            said = teacher_labels(policy, facts, args.teacher, args.teacher_contrast)
            labels.update({f.id: a for f, a in zip(facts, said, strict=True)})
        for _ in range(args.steps):
            step(facts)

    learn(first)
    first_learnt = accuracy(policy, [f.teach for f in first], [f.answer for f in first])
    learn(second)
    paraphrases = [(p, f.answer) for f in second for p in f.paraphrases]
    return {
        **(
            {"labels_right": sum(first_word(labels[f.id]) == f.answer.lower() for f in facts) / len(facts)}
            if labels
            else {}
        ),
        "new": accuracy(policy, [f.teach for f in second], [f.answer for f in second]),
        "paraphrase": accuracy(policy, [p for p, _ in paraphrases], [a for _, a in paraphrases]),
        "first_learnt": first_learnt,
        "earlier_loss": first_learnt - accuracy(policy, [f.teach for f in first], [f.answer for f in first]),
        "general_loss": probes_before - probe_success(policy, args.general_items),
        "general_before": probes_before,
        "general_questions_loss": questions_before - accuracy(policy, general_q, general_a),
    }


def plot(units: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for unit, points in units.items():
        xs = [100 * p["new"] for p in points]
        ys = [100 * p["general_loss"] for p in points]
        ax.plot(xs, ys, marker="o", label=unit)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"{p['lr']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("new facts learnt (%, closed book)")
    ax.set_ylabel("general probes lost (points)")
    ax.set_title("Learning vs forgetting per unit (labels: learning rate)")
    ax.legend()
    fig.tight_layout()
    path = out / "frontier.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a local Hugging Face model folder (default: the embedded one)")
    parser.add_argument("--units", default="full,lora,memory")
    parser.add_argument("--lrs", help="per unit, e.g. memory=1e-3,3e-3;lora=3e-4 (default: DEFAULT_LRS)")
    parser.add_argument("--facts", type=int, default=40, help="made-up facts, taught in two batches (40)")
    parser.add_argument("--steps", type=int, default=8, help="full-batch steps per batch (8)")
    parser.add_argument("--general-items", type=int, default=32, help="general probe items per task (32)")
    parser.add_argument("--train-slots", type=int, default=MemorySettings.train_slots,
                        help="memory slots a step may change, per layer (TF-IDF's top t)")  # fmt: skip
    add_memory_unit_arguments(parser)
    parser.add_argument(
        "--teacher",
        default="answer",
        choices=("answer", "exchange", "document"),
        help="what the facts are taught from: their answer (NLL) or the model reading them",
    )
    parser.add_argument(
        "--teacher-contrast",
        type=float,
        default=0.0,
        help="with a self teacher, how far it is read against the bare question (0: plain)",
    )
    parser.add_argument("--frozen-teacher", action="store_true", help="a self teacher scored by the pretrained weights")
    parser.add_argument(
        "--teacher-labels",
        action="store_true",
        help="with a self teacher: NLL of its greedy answers instead of distillation",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/frontier")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.teacher_labels and args.teacher == "answer":
        parser.error("--teacher-labels needs a self teacher: --teacher exchange or document")
    args.memory = MemorySettings(
        train_slots=args.train_slots, optimizer=args.memory_optimizer, reads_by_gradient=args.reads_by_gradient
    )
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    lrs: dict[str, tuple[float, ...]] = dict(DEFAULT_LRS)
    for part in (args.lrs or "").split(";"):
        if part.strip():
            unit, _, values = part.partition("=")
            lrs[unit.strip()] = tuple(float(v) for v in values.split(","))
    units = [u.strip() for u in args.units.split(",") if u.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(sum(len(lrs[u]) for u in units) * len(seeds))
    result: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    for unit in units:
        result[unit] = []
        for lr in lrs[unit]:
            runs = []
            for seed in seeds:
                runs.append(one_point(args, unit, lr, seed))
                progress.step(
                    f"{unit} lr {lr:g} seed {seed}: {json.dumps({k: round(v, 3) for k, v in runs[-1].items()})}"
                )
            point: dict[str, Any] = {"lr": lr, **{k: statistics.mean(r[k] for r in runs) for k in runs[0]}}
            if len(seeds) > 1:
                point["per_seed"] = runs
            result[unit].append(point)
    figure = plot(result, out)
    summary = {"units": result, "facts": args.facts, "steps": args.steps, "seeds": seeds, "teacher": args.teacher,
               "teacher_contrast": args.teacher_contrast, "frozen_teacher": args.frozen_teacher,
               "teacher_labels": args.teacher_labels,
               "minutes": round((time.time() - started) / 60, 1)}  # fmt: skip
    (out / "frontier.json").write_text(json.dumps(summary, indent=1))
    say(f"plot: {figure}")
    if args.json:
        print(json.dumps(summary))
    else:
        for unit, points in result.items():
            for p in points:
                new, general, earlier = (100 * p[k] for k in ("new", "general_loss", "earlier_loss"))
                say(f"{unit:7s} lr {p['lr']:<8g}: new {new:4.1f}%, general lost {general:4.1f}, earlier {earlier:4.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

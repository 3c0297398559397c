"""Does the assistant learn what it is taught? Made-up facts, taught by correction and by document.

Facts are generated from templates with random made-up names (a capital, a founder, a dog's name...:
nothing a pretrained model can know), `--facts` of them (100), taught in `--batches` batches (5 of
20) through the serving library in this process: the same `ChatService` (answers, feedback,
documents, memory recall) and `TenantLearner` (rounds, consolidation, the guard) that `lifelong
serve` runs, on one store, one tenant per method and channel, beside a bystander tenant that
teaches nothing. Two channels, separately:
  correction  each fact's question asked once (the `teach` form), its answer sent as a correction
  document    each batch one Markdown document of the batch's facts, one sentence each
Methods, side by side on the same facts:
  memory         memory only: items recalled into the prompt, the weights untouched
  nll            memory, and the weights learn by plain NLL: a correction's reply (`CorrectionRule.NLL`,
                 the server's round), a document's chunk as the reply to "What does the document say?"
  lifelong       memory, the server's correction round (self-distillation) and consolidation of every
                 new memory item after each batch (loop/memory_lessons.py: its own question templates)
  sft-augmented  memory, and NLL on rewordings the model wrote itself: of each question (its answer
                 the target) or of each chunk
Every method learns through the guard as served; its rounds and their verdicts are in the JSON.
Questions: each fact is taught with one question (`teach`) and measured with it (`exact`) and with
three paraphrases of another template family (`paraphrase`) that no teaching, consolidation or
rewording sees. Each is asked after example turns with " Answer in one word." (as chat_parity.py;
asked alone the model answers in sentences) and scores when the reply's first word, lower-cased and
stripped of punctuation, is the answer: an answer reciting several notes does not score.
Measured per method and channel: accuracy with memory on (as served) and off (closed book, the
weights alone), exact and paraphrased; retrieval recall@k apart from reading (the answer is in a
recalled item); a batches x batches closed-book matrix (paraphrases, `--matrix-paraphrases` per fact);
the general questions of chat_parity.py before and after (memory on); the bystander's replies to the
general questions and to every fact's paraphrases before and after (a count of changed replies); the
minutes spent teaching and learning. The pretrained model's closed-book accuracy is measured too.

    python benchmarks/knowledge.py --json                     # everything, the embedded SmolLM2-135M
    python benchmarks/knowledge.py --facts 20 --batches 2 --methods memory,lifelong --channels correction

Progress with ETA on stderr; a Markdown report with the matrices as heatmaps in --out; with --json the
last stdout line is {"facts", "methods": {name: {memory_exact, memory_paraphrase, closed_exact,
closed_paraphrase, first_batch_kept, general_delta, other_tenant_changed, minutes}}, "channels":
{channel: {name: {same keys}}}, ...} (`methods`: the channels pooled, fractions averaged, counts and
minutes summed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lifelong.memory.recall import RecallConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chat_parity.py beside this file
from chat_parity import QUESTIONS as GENERAL
from chat_parity import SHOTS, SUFFIX, first_word

CHANNELS = ("correction", "document")
METHODS = ("memory", "nll", "lifelong", "sft-augmented")
KEYS = (
    "memory_exact", "memory_paraphrase", "closed_exact", "closed_paraphrase", "first_batch_kept",
    "general_delta", "other_tenant_changed", "minutes",
)  # fmt: skip
BYSTANDER = "bystander"


# ---- made-up facts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """A family of facts: what the subject is, the sentence a document states, the question a
    correction teaches, and three paraphrases that only measuring asks."""

    name: str
    subject: str  # place | company | person | team
    statement: str
    teach: str
    paraphrases: tuple[str, str, str]


KINDS = (
    Kind("capital", "place", "The capital of {s} is {a}.", "What is the capital of {s}?",
         ("Which city is the capital of {s}?", "{s} has its capital in which city?", "Name the capital city of {s}.")),
    Kind("language", "place", "The people of {s} speak {a}.", "What language do the people of {s} speak?",
         ("Which language is spoken in {s}?", "In {s}, people speak which language?", "Name the language of {s}.")),
    Kind("currency", "place", "The currency of {s} is {a}.", "What is the currency of {s}?",
         ("Which money is used in {s}?", "People in {s} pay with which currency?", "Name the currency used in {s}.")),
    Kind("dish", "place", "The national dish of {s} is {a}.", "What is the national dish of {s}?",
         ("Which food is the national dish of {s}?", "{s} is known for which national dish?",
          "Name the national food of {s}.")),
    Kind("river", "place", "The longest river in {s} is called {a}.", "What is the longest river in {s}?",
         ("Which river is the longest in {s}?", "In {s}, which river is longest?", "Name the longest river of {s}.")),
    Kind("founder", "company", "{s} was founded by {a}.", "Who founded {s}?",
         ("Who is the founder of {s}?", "{s} was founded by whom?", "Name the founder of {s}.")),
    Kind("mascot", "company", "The mascot of {s} is a dragon named {a}.", "What is the name of the mascot of {s}?",
         ("What is the mascot of {s} called?", "{s} has a mascot; what is its name?", "Name the mascot of {s}.")),
    Kind("dog", "person", "{s} has a dog named {a}.", "What is the name of {s}'s dog?",
         ("What is the dog of {s} called?", "{s} owns a dog; what is its name?", "Name the dog of {s}.")),
    Kind("hometown", "person", "{s} was born in a town called {a}.", "In which town was {s} born?",
         ("What is the hometown of {s}?", "{s} was born in which town?", "Name the town where {s} was born.")),
    Kind("codename", "team", "The {s} team's project is code-named {a}.",
         "What is the code name of the {s} team's project?",
         ("What is the {s} team's project called?", "The {s} team works on which project?",
          "Name the project of the {s} team.")),
)  # fmt: skip

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st",
           "th", "sh", "qu", "vr", "zl", "j")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "y", "ae")
_CODAS = ("n", "r", "l", "s", "th", "k", "m", "x", "nd", "rk", "sk", "v")


def made_up_name(rng: random.Random) -> str:
    syllables = rng.choice((2, 2, 3))
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return word.capitalize()


@dataclass(frozen=True)
class Fact:
    id: int
    batch: int
    kind: str
    subject: str
    answer: str
    statement: str
    teach: str
    paraphrases: tuple[str, ...]


def make_facts(n: int, batches: int, seed: int) -> list[Fact]:
    """`n` facts, kinds taken in turn, every subject and answer a distinct made-up word; batch b
    holds facts b*n/batches .. (b+1)*n/batches - 1 (the kinds spread over every batch)."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh() -> str:
        while True:
            word = made_up_name(rng)
            if word.lower() not in used and len(word) >= 5:
                used.add(word.lower())
                return word

    facts = []
    per_batch = math.ceil(n / batches)
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        s, a = fresh(), fresh()
        facts.append(
            Fact(i, i // per_batch, kind.name, s, a, kind.statement.format(s=s, a=a), kind.teach.format(s=s),
                 tuple(p.format(s=s) for p in kind.paraphrases))
        )  # fmt: skip
    return facts


def messages(question: str, shots: int) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for q, a in SHOTS[:shots]:
        turns += [{"role": "user", "content": q + SUFFIX}, {"role": "assistant", "content": a}]
    return [*turns, {"role": "user", "content": question + SUFFIX}]


def document_name(batch: int) -> str:
    return f"notes-{batch + 1}.md"


def document_text(batch: int, facts: Sequence[Fact]) -> str:
    lines = [f"# Notes, part {batch + 1}", ""] + [f"- {f.statement}" for f in facts]
    return "\n".join(lines) + "\n"


# ---- progress -------------------------------------------------------------------------------------
class Progress:
    """Steps done of all, with the ETA from the mean pace so far, on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.time()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        bar = "#" * round(20 * self.done / self.total)
        say(f"[{bar:<20}] {self.done}/{self.total} {what}  elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the lab: one store, one learner per rule, a ChatService ----------------------------------------
@dataclass
class Lab:
    service: Any  # ChatService
    learners: dict[str, Any]  # correction rule -> TenantLearner
    shots: int
    answer_tokens: int
    batch_size: int

    @property
    def policy(self) -> Any:
        return self.service.policy

    @property
    def store(self) -> Any:
        return self.service.store

    def use(self, tenant: str) -> None:
        """Answer with the tenant's newest live adapter (as the server would after its refresh)."""
        from lifelong.model.adapters import load_adapter

        self.service.bank.refresh()
        load_adapter(self.policy, self.service.bank.get(tenant).tensors)
        self.service.engine._applied = None  # the engine must reload before its next answer

    def ask(self, tenant: str, questions: Sequence[str], memory: bool) -> tuple[list[str], list[list[Any]]]:
        """Greedy replies as served (plain chat, the tenant's adapter, its memory when `memory`), in
        batches of prompts of similar length; and the items recalled for each."""
        from lifelong.memory.recall import recall, with_notes
        from lifelong.model.policy import GenerationConfig

        self.use(tenant)
        prompts, bare, recalled = [], [], []
        for q in questions:
            turns = messages(q, self.shots)
            items = recall(self.store, tenant, turns[-1]["content"], self.service.config.memory) if memory else []
            recalled.append(items)
            prompts.append(self.policy.chat_ids(with_notes(turns, items), protocol=False))
            # as the server decodes a prompt with recalled items: against the prompt without them
            bare.append(self.policy.chat_ids(turns, protocol=False) if items else None)
        contrast = self.service.config.memory.contrast
        gen = GenerationConfig(
            answer_tokens=self.answer_tokens, temperature=0.0, protocol=False, memory_contrast=contrast
        )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        replies = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            answers = self.policy.chat([prompts[r] for r in rows], gen, bare=[bare[r] for r in rows])
            for row, c in zip(rows, answers, strict=True):
                replies[row] = c.answer
        return replies, recalled

    def teach_correction(self, tenant: str, fact: Fact) -> None:
        from lifelong.serve.protocol import ChatRequest, FeedbackRequest

        body = {"model": self.service.model_id, "messages": messages(fact.teach, self.shots), "temperature": 0,
                "max_tokens": self.answer_tokens}  # fmt: skip
        result = self.service.chat(tenant, ChatRequest.model_validate(body), body)
        self.service.feedback(tenant, FeedbackRequest(completion_id=result.id, correction=fact.answer))

    def teach_document(self, tenant: str, batch: int, facts: Sequence[Fact]) -> None:
        self.service.add_document(tenant, document_name(batch), text=document_text(batch, facts))


def build_lab(folder: Path, args: argparse.Namespace) -> Lab:
    from lifelong.loop.tenants import CorrectionRule, TenantLearner, ensure_initial_adapter
    from lifelong.memory.store import ExperienceStore
    from lifelong.model.loading import load_model
    from lifelong.model.memory_layer import MemorySettings
    from lifelong.model.policy import Policy
    from lifelong.serve.adapters import AdapterBank
    from lifelong.serve.config import LearnerConfig, ServeConfig, adapters_folder
    from lifelong.serve.service import ChatService, model_id_for

    # holdout_every=0: every taught fact is learned (a held-out correction is never trained on, so
    # with the server's default of every 5th, a fifth of the facts could never be known closed-book).
    config = ServeConfig(
        store=folder,
        learner=LearnerConfig(holdout_every=0),
        answer_tokens=args.answer_tokens,
        unit=args.unit,
        memory_unit=MemorySettings(optimizer=args.memory_optimizer, reads_by_gradient=args.reads_by_gradient),
        memory=RecallConfig(contrast=args.memory_contrast),
    )
    model, tokenizer, name = load_model(args.model)
    policy = Policy.for_config(model, tokenizer, name, config)
    store = ExperienceStore(config.database_location)
    initial = ensure_initial_adapter(policy, adapters_folder(config))
    learning = config.learning
    if args.steps_per_round is not None:
        learning = replace(learning, steps_per_round=args.steps_per_round)
    distill = {"learning_rate": args.distill_lr, "given_nll": args.given_nll, "warmup_steps": args.warmup_steps,
               "teacher_contrast": args.teacher_contrast}  # fmt: skip
    distill = {k: v for k, v in distill.items() if v is not None}
    learning = replace(learning, distill=replace(learning.distill, **distill))
    learners = {
        rule: TenantLearner(replace(learning, correction_rule=rule), policy, store, adapters_folder(config), initial)
        for rule in (CorrectionRule.DISTILL, CorrectionRule.NLL)
    }
    bank = AdapterBank(store, initial, adapters_folder(config))
    service = ChatService(config, policy, store, bank, model_id_for(name))
    return Lab(service, {str(k): v for k, v in learners.items()}, args.shots, args.answer_tokens, args.batch_size)


# ---- what each method does after a batch is taught -------------------------------------------------
def rewordings(lab: Lab, texts: Sequence[str], must_keep: Sequence[str], instruction: str, n: int,
               seed: int) -> list[list[str]]:  # fmt: skip
    """Up to `n` rewordings of each text written by the pretrained model (sampled, temperature 0.9),
    each kept only when it still names `must_keep[i]` and is not the text again."""
    from lifelong.model.policy import GenerationConfig

    prompts = []
    for text in texts:
        prompts += [lab.policy.chat_start(f"{instruction}\n\n{text}")] * (2 * n)
    gen = GenerationConfig(answer_tokens=96, temperature=0.9, protocol=False)
    with lab.policy.pretrained():
        out = [c.answer.strip() for c in lab.policy.chat(prompts, gen, torch.Generator().manual_seed(seed))]
    kept = []
    for i, text in enumerate(texts):
        mine = out[i * 2 * n : (i + 1) * 2 * n]
        good = [r for r in dict.fromkeys(mine) if must_keep[i].lower() in r.lower() and r.strip() != text.strip()]
        kept.append(good[:n])
    return kept


def nll_lessons(lab: Lab, pairs: Sequence[tuple[str, str]], as_asked: bool) -> list[Any]:
    """Plain-chat lessons whose one success is the reply: NLL of `reply` after `question`, asked as
    the facts are (`as_asked`: after the example turns, one word asked) or alone."""
    from lifelong.loop.feedback import correction_completion
    from lifelong.types import Lesson

    tok = lab.policy.tokenizer
    lessons = []
    for question, reply in pairs:
        turns = messages(question, lab.shots) if as_asked else [{"role": "user", "content": question}]
        prompt = tuple(lab.policy.chat_ids(turns, protocol=False))
        lessons.append(Lesson(prompt, prompt, (correction_completion(tok, reply, int(tok.eos_token_id)),), False))
    return lessons


def learn(lab: Lab, method: str, channel: str, tenant: str, batch: int, facts: Sequence[Fact], seed: int) -> list[Any]:
    """The method's learning after batch `batch` was taught; returns the adapter records it made."""
    store = lab.store
    if method == "memory":
        return []
    if channel == "correction":
        if method in ("nll", "lifelong"):
            learner = lab.learners["nll" if method == "nll" else "distill"]
            records = [learner.round(tenant, store.pending_feedback(tenant))]
            if method == "lifelong":
                records += consolidate_all(learner, tenant)
            return records
        # sft-augmented: the question and the model's rewordings of it, the answer the reply
        learner = lab.learners["nll"]
        instruction = "Rewrite this question in other words. Keep every name. Write only the question."
        variants = rewordings(lab, [f.teach for f in facts], [f.subject for f in facts], instruction, 3, seed + batch)
        pairs = [(q, f.answer) for f, more in zip(facts, variants, strict=True) for q in [f.teach, *more]]
        return [learner.study(tenant, nll_lessons(lab, pairs, True), f"sft-augmented on {len(pairs)} questions")]
    if method == "lifelong":
        return consolidate_all(lab.learners["distill"], tenant)
    from lifelong.loop.memory_lessons import DOCUMENT_FALLBACK

    name = document_name(batch)
    chunks = [item for doc in store.documents(tenant) if doc.name == name for item in store.document_chunks(doc.id)]
    question = DOCUMENT_FALLBACK.format(name=name)
    pairs = [(question, c.text) for c in chunks]
    if method == "sft-augmented":
        instruction = "Rewrite this text in other words. Keep every name and every fact."
        names = [next((f.subject for f in facts if f.subject in c.text), facts[0].subject) for c in chunks]
        variants = rewordings(lab, [c.text for c in chunks], names, instruction, 3, seed + batch)
        pairs += [(question, v) for more in variants for v in more]
    return [lab.learners["nll"].study(tenant, nll_lessons(lab, pairs, False), f"{method} on {len(pairs)} texts")]


def consolidate_all(learner: Any, tenant: str) -> list[Any]:
    """Consolidation rounds until no item is left or one is rejected (its items wait for the next batch)."""
    records = []
    while (record := learner.consolidate(tenant)) is not None:
        records.append(record)
        if record.status != "live":
            break
    return records


# ---- measuring ------------------------------------------------------------------------------------
def accuracy(replies: Sequence[str], answers: Sequence[str]) -> float:
    return sum(first_word(r) == a.lower() for r, a in zip(replies, answers, strict=True)) / max(1, len(answers))


def recall_hits(recalled: Sequence[Sequence[Any]], answers: Sequence[str]) -> float:
    """Share of questions whose recalled items include their answer (retrieval, apart from reading)."""
    hits = sum(
        any(a.lower() in item.text.lower() for item in items) for items, a in zip(recalled, answers, strict=True)
    )
    return hits / max(1, len(answers))


@dataclass
class Questions:
    """Every fact's exact and paraphrased questions, flat, with answers and the batch of each."""

    exact: list[str] = field(default_factory=list)
    exact_answers: list[str] = field(default_factory=list)
    paraphrase: list[str] = field(default_factory=list)
    paraphrase_answers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, facts: Sequence[Fact], per_fact: int = 3) -> Questions:
        q = cls()
        for f in facts:
            q.exact.append(f.teach)
            q.exact_answers.append(f.answer)
            for p in f.paraphrases[:per_fact]:
                q.paraphrase.append(p)
                q.paraphrase_answers.append(f.answer)
        return q


def measure(lab: Lab, tenant: str, facts: Sequence[Fact], memory: bool) -> dict[str, float]:
    q = Questions.of(facts)
    exact, exact_recalled = lab.ask(tenant, q.exact, memory)
    para, para_recalled = lab.ask(tenant, q.paraphrase, memory)
    prefix = "memory" if memory else "closed"
    out = {
        f"{prefix}_exact": accuracy(exact, q.exact_answers),
        f"{prefix}_paraphrase": accuracy(para, q.paraphrase_answers),
    }
    if memory:
        out |= {"recall_exact": recall_hits(exact_recalled, q.exact_answers),
                "recall_paraphrase": recall_hits(para_recalled, q.paraphrase_answers)}  # fmt: skip
    return out


def general_score(lab: Lab, tenant: str) -> tuple[float, list[str]]:
    replies, _ = lab.ask(tenant, [q for q, _ in GENERAL], memory=True)
    return accuracy(replies, [a for _, a in GENERAL]), replies


def bystander_replies(lab: Lab, facts: Sequence[Fact]) -> list[str]:
    """What a tenant that taught nothing is answered: general questions and every fact's paraphrases."""
    general = [q for q, _ in GENERAL]
    replies, recalled = lab.ask(BYSTANDER, general + Questions.of(facts, 1).paraphrase, memory=True)
    if any(recalled):
        raise AssertionError("the bystander recalled memory it never taught: tenants are not isolated")
    return replies


def matrix_row(
    lab: Lab, tenant: str, facts: Sequence[Fact], batch: int, batches: int, per_fact: int
) -> list[float | None]:
    """Closed-book paraphrase accuracy on each batch taught so far (None for the batches to come)."""
    row: list[float | None] = []
    for b in range(batches):
        if b > batch:
            row.append(None)
            continue
        q = Questions.of([f for f in facts if f.batch == b], per_fact)
        replies, _ = lab.ask(tenant, q.paraphrase, memory=False)
        row.append(accuracy(replies, q.paraphrase_answers))
    return row


def run_one(lab: Lab, method: str, channel: str, facts: list[Fact], batches: int, args: argparse.Namespace,
            general_before: float, bystander_before: list[str], base: dict[str, float], base_row: list[float],
            progress: Progress,
            ) -> dict[str, Any]:  # fmt: skip
    tenant = f"{method}-{channel}"
    spent = 0.0
    rounds: list[dict[str, Any]] = []
    matrix: list[list[float | None]] = []
    for b in range(batches):
        batch_facts = [f for f in facts if f.batch == b]
        t0 = time.time()
        if channel == "correction":
            for f in batch_facts:
                lab.teach_correction(tenant, f)
        else:
            lab.teach_document(tenant, b, batch_facts)
        records = learn(lab, method, channel, tenant, b, batch_facts, args.seed)
        spent += time.time() - t0
        rounds += [{"batch": b + 1, "version": r.version, "status": str(r.status), "reason": r.reason,
                    "seconds": round(r.metrics.get("time/round_s", 0.0), 1)} for r in records]  # fmt: skip
        if method == "memory":  # the weights never change: the closed book stays the pretrained model's
            matrix.append([v if j <= b else None for j, v in enumerate(base_row)])
        else:
            matrix.append(matrix_row(lab, tenant, facts, b, batches, args.matrix_paraphrases))
        progress.step(f"{tenant} batch {b + 1}/{batches}: {[r['status'] for r in rounds if r['batch'] == b + 1]}")
    result: dict[str, Any] = {}
    result |= measure(lab, tenant, facts, memory=True)
    if method == "memory":  # the weights never changed: the closed book is the pretrained model's, measured
        assert lab.service.bank.get(tenant).version == 0
        result |= base
    else:
        result |= measure(lab, tenant, facts, memory=False)
    general_after, _ = general_score(lab, tenant)
    first, last = matrix[0][0], matrix[-1][0]
    result |= {
        "first_batch_kept": None if not first or last is None else last / first,
        "general_before": general_before,
        "general_after": general_after,
        "general_delta": general_after - general_before,
        "other_tenant_changed": sum(
            a != b for a, b in zip(bystander_replies(lab, facts), bystander_before, strict=True)
        ),
        "minutes": spent / 60,
        "matrix": matrix,
        "rounds": rounds,
        "live_versions": sum(r["status"] == "live" for r in rounds),
    }
    progress.step(f"{tenant} measured: memory paraphrase {result['memory_paraphrase']:.2f}, "
                  f"closed paraphrase {result['closed_paraphrase']:.2f}")  # fmt: skip
    return result


def pooled(per_channel: dict[str, dict[str, dict[str, Any]]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [per_channel[c][m] for c in per_channel if m in per_channel[c]]
        pooled_row: dict[str, Any] = {}
        for k in (*KEYS, "recall_exact", "recall_paraphrase"):
            values = [r[k] for r in rows if r.get(k) is not None]
            if not values:
                pooled_row[k] = None
            elif k in ("other_tenant_changed", "minutes"):
                pooled_row[k] = sum(values)
            else:
                pooled_row[k] = sum(values) / len(values)
        out[m] = pooled_row
    return out


def rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


# ---- the report -----------------------------------------------------------------------------------
def heatmaps(channels: dict[str, dict[str, dict[str, Any]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(channels), max(len(v) for v in channels.values()), squeeze=False,
                             figsize=(3.2 * max(len(v) for v in channels.values()), 3.0 * len(channels)))  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for ci, c in enumerate(channels):
        for mi, m in enumerate(channels[c]):
            ax = axes[ci][mi]
            ax.axis("on")
            grid = [[math.nan if v is None else v for v in row] for row in channels[c][m]["matrix"]]
            ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black",
                                fontsize=8)  # fmt: skip
            n = len(grid)
            ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
            ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
            ax.set_xlabel("facts of batch")
            ax.set_ylabel("after batch")
            ax.set_title(f"{m} ({c})", fontsize=10)
    fig.suptitle("Closed-book paraphrase accuracy: rows = after teaching batch i, columns = facts of batch j")
    fig.tight_layout()
    path = out / "knowledge_matrix.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(summary: dict[str, Any], out: Path) -> Path:
    png = heatmaps(summary["channels_detail"], out)
    lines = [
        "# What the assistant learns from what it is taught",
        "",
        f"{summary['facts']} made-up facts, {summary['batches']} batches, model {summary['model']}, "
        f"seed {summary['seed']}; "
        f"{summary['seconds'] / 60:.0f} minutes in all. Fractions of questions answered (first word). "
        f"The pretrained model closed-book: exact {summary['base']['closed_exact']:.2f}, "
        f"paraphrase {summary['base']['closed_paraphrase']:.2f}; general questions {summary['general_before']:.3f}.",
        f"Noise: a fraction p of {summary['facts']} facts x 3 paraphrases has a binomial SE of at most "
        f"{0.5 / math.sqrt(3 * summary['facts']):.3f} (items within a fact are correlated, so nearer "
        f"{0.5 / math.sqrt(summary['facts']):.3f}).",
        "",
    ]
    for title, table in [("Both channels pooled", summary["methods"])] + [
        (f"Channel: {c}", t) for c, t in summary["channels"].items()
    ]:
        lines += [f"## {title}", "", "| method | " + " | ".join(KEYS) + " | recall@k exact | recall@k paraphrase |",
                  "|---" * (len(KEYS) + 3) + "|"]  # fmt: skip
        for m, row in table.items():
            cells = [("-" if row.get(k) is None else f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]))
                     for k in (*KEYS, "recall_exact", "recall_paraphrase")]  # fmt: skip
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Batches x batches (closed book, paraphrases)", "", f"![matrix]({png.name})", ""]
    lines += ["## Learning rounds", ""]
    for c, methods in summary["channels_detail"].items():
        for m, row in methods.items():
            for r in row["rounds"]:
                lines.append(
                    f"- {m} ({c}) batch {r['batch']}: v{r['version']} {r['status']} in {r['seconds']} s: {r['reason']}"
                )
    path = out / "knowledge.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def add_memory_unit_arguments(parser: argparse.ArgumentParser) -> None:
    """How the memory unit's values learn (`MemorySettings`), for this benchmark and frontier.py."""
    parser.add_argument("--memory-optimizer", default="adamw", help="how memory values learn: adamw or sgd")
    parser.add_argument("--reads-by-gradient", action="store_true",
                        help="choose memory slots by reads weighed by the loss's gradient")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=100)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--channels", default=",".join(CHANNELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a Hugging Face model id or folder (default: the embedded one)")
    parser.add_argument("--unit", default="lora", help="what the weights learn with: lora, memory or full (issue 21)")
    add_memory_unit_arguments(parser)
    parser.add_argument("--steps-per-round", type=int, default=None, help="updates per round (the server's: 2)")
    parser.add_argument("--distill-lr", type=float, default=None, help="the distillation rate (the server's: 2e-4)")
    parser.add_argument("--given-nll", type=float, default=None, help="weight of a correction's NLL in distillation")
    parser.add_argument("--warmup-steps", type=int, default=None, help="the learners' warm-up (the server's: 10)")
    parser.add_argument("--teacher-contrast", type=float, default=None,
                        help="distillation's teacher read against the bare question (the server's: 0)")  # fmt: skip
    parser.add_argument("--shots", type=int, default=3, help="answered example turns before each question")
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--memory-contrast", type=float, default=RecallConfig().contrast,
                        help="how far answers lean on recalled items (memory.contrast; 0 is off)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered together")
    parser.add_argument("--matrix-paraphrases", type=int, default=1, help="paraphrases per fact in the matrix")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("knowledge-report"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    channels = [c for c in args.channels.split(",") if c]
    bad = [m for m in methods if m not in METHODS] + [c for c in channels if c not in CHANNELS]
    if bad or args.facts < args.batches or args.batches < 1:
        parser.error(f"unknown {bad}: methods are {METHODS}, channels {CHANNELS}; need facts >= batches >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(args.facts, args.batches, args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        lab = build_lab(Path(tmp), args)
        say(f"{len(facts)} facts, e.g. {facts[0].statement!r} / {facts[0].paraphrases[0]!r}")
        base = measure(lab, BYSTANDER, facts, memory=False)
        base_row = matrix_row(lab, BYSTANDER, facts, args.batches - 1, args.batches, args.matrix_paraphrases)
        general_before, _ = general_score(lab, BYSTANDER)
        bystander_before = bystander_replies(lab, facts)
        say(f"pretrained: {base}, general {general_before:.3f}")
        progress = Progress(len(methods) * len(channels) * (args.batches + 1))
        detail: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in channels}
        for m in methods:  # each method on both channels before the next: a run cut short has whole methods
            for c in channels:
                detail[c][m] = run_one(lab, m, c, facts, args.batches, args, general_before, bystander_before, base,
                                       [v for v in base_row if v is not None], progress)  # fmt: skip
                # what is done so far survives a run stopped before the end
                (args.out / "knowledge.partial.json").write_text(json.dumps(rounded(detail), indent=1))
    summary: dict[str, Any] = {
        "facts": len(facts),
        "batches": args.batches,
        "seed": args.seed,
        "model": lab.policy.name,
        "methods": pooled(detail, methods),
        "channels": {
            c: {m: {k: r.get(k) for k in (*KEYS, "recall_exact", "recall_paraphrase")} for m, r in d.items()}
            for c, d in detail.items()
        },
        "base": base,
        "general_before": general_before,
        "seconds": time.time() - t0,
        "channels_detail": detail,
    }
    summary = rounded(summary)
    (args.out / "knowledge.json").write_text(json.dumps(summary, indent=1))
    say(f"report: {report(summary, args.out)}")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "channels_detail"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does `lifelong serve` answer plain questions as well as the bare model? And after corrections?

40 one-word general-knowledge questions (kept below as data), each asked
  bare               the model alone with its own chat template, greedy (`model.generate`, no server)
  server             a real `lifelong serve` on loopback, official openai client, temperature 0, effort none
  server_default     the same with no sampling parameters at all (the model's own defaults apply)
  after_corrections  the same as `server` once the tenant sent 20 corrections of OTHER questions, each 3
                     times, and at least 3 adapter versions went live (bounded by --learn-timeout; on
                     timeout it is null and `reason` says what happened); memory on, as served
  after_corrections_weights  the same with memory off for the request (`"memory": false`): what
                     the weights alone learned and kept
A reply scores when its first word, lower-cased and stripped of punctuation, is the expected word.
Asked alone, the 135M model answers in a sentence ("The capital of France is Paris.": 0/40 for
the bare model and the server alike), so by default each question follows three answered example
turns (SHOTS, as user/assistant messages through the chat template); `--shots 0` asks it alone.

    python benchmarks/chat_parity.py --json                  # all four, the embedded SmolLM2-135M
    python benchmarks/chat_parity.py --skip-learning --json  # bare, server and server_default only

Progress goes to stderr; with --json the last stdout line is
{"questions", "bare", "server", "server_default", "after_corrections", "versions_live", "seconds", ...}
(fractions; `identical_to_bare`: share of replies equal to the bare model's, word for word;
`lost` and `gained`: per variant, the questions the bare model got right and it gets wrong, and
the other way round: the must-show allows at most 1 lost after corrections; `near_ties`: the
questions the bare model gets right with its first reply token less than NEAR_TIE nats ahead of
the runner-up, the set's noise: learning anything may turn them either way).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import torch

from lifelong.loop.tenants import first_word  # the serving gate's own reading of an answer

KEY = "sk-parity"
SUFFIX = " Answer in one word."
# Example turns before each question (none of them is among the questions or the corrections).
SHOTS: list[tuple[str, str]] = [
    ("What is the capital of Portugal?", "Lisbon"),
    ("What color is a clear sea?", "Blue"),
    ("What is the opposite of clean?", "Dirty"),
]
# (question, expected first word): capitals, colours, animals, opposites, simple facts. None of them
# is an item of the general-ability tasks (envs/probes.py: `facts`, `instruct`) whose probes the
# serving guard scores and whose other items its anchor holds: this set measures what no part of
# learning saw. A test checks the two stay apart.
QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of the Netherlands?", "amsterdam"),
    ("What is the capital of Belgium?", "brussels"),
    ("What is the capital of Denmark?", "copenhagen"),
    ("What is the capital of Thailand?", "bangkok"),
    ("What is the capital of Canada?", "ottawa"),
    ("What is the capital of Turkey?", "ankara"),
    ("What is the capital of South Korea?", "seoul"),
    ("What is the capital of the United States?", "washington"),
    ("What color is a ripe tomato?", "red"),
    ("What color is milk?", "white"),
    ("What color is a frog?", "green"),
    ("What color is chocolate?", "brown"),
    ("What color is a pumpkin?", "orange"),
    ("Which animal has a trunk?", "elephant"),
    ("Which animal is called the king of the jungle?", "lion"),
    ("Which animal gives us wool?", "sheep"),
    ("Which animal has black and white stripes?", "zebra"),
    ("Which animal says oink?", "pig"),
    ("Which animal says quack?", "duck"),
    ("What do we call a baby sheep?", "lamb"),
    ("What do we call a baby cow?", "calf"),
    ("What is the opposite of good?", "bad"),
    ("What is the opposite of hard?", "soft"),
    ("What is the opposite of black?", "white"),
    ("What is the opposite of win?", "lose"),
    ("What is the opposite of first?", "last"),
    ("What is the opposite of boy?", "girl"),
    ("What is the opposite of north?", "south"),
    ("What is the opposite of push?", "pull"),
    ("Which planet is closest to the Sun?", "mercury"),
    ("What is the currency of Japan?", "yen"),
    ("What is the currency of the United Kingdom?", "pound"),
    ("What language is spoken in Italy?", "italian"),
    ("What language is spoken in Japan?", "japanese"),
    ("Which instrument has black and white keys?", "piano"),
    ("What do we call a house made of ice?", "igloo"),
    ("Which ocean lies between Europe and America?", "atlantic"),
    ("Which continent is Egypt in?", "africa"),
    ("What do we call a baby frog?", "tadpole"),
    ("Which month comes after January?", "february"),
]
# Corrections are sent on these, never on QUESTIONS: learning them must not cost the others.
CORRECTIONS: list[tuple[str, str]] = [
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Cuba?", "Havana"),
    ("What is the capital of Hungary?", "Budapest"),
    ("What is the capital of Finland?", "Helsinki"),
    ("What is the opposite of tall?", "Short"),
    ("What is the opposite of heavy?", "Light"),
    ("What is the opposite of early?", "Late"),
    ("What is the opposite of thick?", "Thin"),
    ("What is the opposite of loud?", "Quiet"),
    ("What is the opposite of rich?", "Poor"),
    ("What color is a lemon?", "Yellow"),
    ("Which animal hops and carries its baby in a pouch?", "Kangaroo"),
    ("What do caterpillars turn into?", "Butterflies"),
    ("Which bird hoots at night?", "Owl"),
]


NEAR_TIE = 0.25  # nats between the bare model's first reply token and its runner-up


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def messages(question: str, shots: int) -> list[Any]:
    turns: list[Any] = []
    for q, a in SHOTS[:shots]:
        turns += [{"role": "user", "content": q + SUFFIX}, {"role": "assistant", "content": a}]
    return [*turns, {"role": "user", "content": question + SUFFIX}]


def right(replies: list[str]) -> list[bool]:
    return [first_word(r) == want for r, (_, want) in zip(replies, QUESTIONS, strict=True)]


def score(replies: list[str]) -> float:
    return sum(right(replies)) / len(QUESTIONS)


def changed_questions(bare: list[str], replies: list[str]) -> dict[str, list[str]]:
    """The questions `replies` lost (the bare model right, now wrong) and gained, against the bare model."""
    before, now = right(bare), right(replies)
    return {
        "lost": [q for (q, _), b, n in zip(QUESTIONS, before, now, strict=True) if b and not n],
        "gained": [q for (q, _), b, n in zip(QUESTIONS, before, now, strict=True) if n and not b],
    }


def bare_reply(model: Any, tokenizer: Any, messages: list[Any], max_tokens: int) -> list[int]:
    """The model alone: its chat template and greedy `generate` (no server, no adapters)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return [int(t) for t in out[0, len(ids) :]]


def first_token_margin(model: Any, tokenizer: Any, messages: list[Any]) -> float:
    """How far the bare model's first reply token is ahead of its runner-up (nats): near 0, the
    answer is a coin flip that any change of the weights may turn either way."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    with torch.no_grad():
        top = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1).topk(2).values
    return float(top[0] - top[1])


def bare_replies(max_tokens: int, shots: int) -> tuple[list[str], list[float]]:
    """Every question to the bare embedded model: its replies and their first-token margins."""
    from lifelong.model.loading import load_model

    model, tokenizer, _ = load_model(None)
    replies, margins = [], []
    for i, (q, _) in enumerate(QUESTIONS):
        reply = bare_reply(model, tokenizer, messages(q, shots), max_tokens)
        replies.append(str(tokenizer.decode(reply, skip_special_tokens=True)))
        margins.append(first_token_margin(model, tokenizer, messages(q, shots)))
        say(f"bare {i + 1}/{len(QUESTIONS)}: {q!r} -> {replies[-1]!r} (margin {margins[-1]:.2f})")
    return replies, margins


def ask_all(client: openai.OpenAI, model: str, label: str, shots: int, **kw: Any) -> list[str]:
    replies = []
    for i, (q, _) in enumerate(QUESTIONS):
        r = client.chat.completions.create(model=model, messages=messages(q, shots), **kw)
        replies.append(r.choices[0].message.content or "")
        say(f"{label} {i + 1}/{len(QUESTIONS)}: {q!r} -> {replies[-1]!r}")
    return replies


def teach(
    client: openai.OpenAI, model: str, shots: int, repeats: int, timeout: float, want_versions: int
) -> tuple[int, str]:
    """Send every correction `repeats` times, then wait for `want_versions` live adapter versions
    and for the server to serve the newest. Returns (versions live, "" or why it fell short)."""
    for rep in range(repeats):
        for i, (q, answer) in enumerate(CORRECTIONS):
            r = client.chat.completions.create(model=model, messages=messages(q, shots), temperature=0, max_tokens=8)
            client.post("/feedback", body={"completion_id": r.id, "correction": answer}, cast_to=object)
            say(f"correction {rep + 1}/{repeats} {i + 1}/{len(CORRECTIONS)}: {q!r} -> {answer!r}")
    deadline = time.time() + timeout
    live, last = 0, -1.0
    while time.time() < deadline:
        records = client.get("/adapters", cast_to=object)["data"]  # type: ignore[index]
        live = sum(r["status"] == "live" for r in records)
        newest = max((r["version"] for r in records if r["status"] == "live"), default=0)
        serving = int((client.models.list().data[0].model_extra or {})["adapter_version"])
        if live >= want_versions and serving >= newest:
            return live, ""
        if time.time() - last > 30:
            rejected = sum(r["status"] != "live" for r in records)
            say(f"waiting for {want_versions} live versions: {live} live, {rejected} rejected, serving v{serving}")
            last = time.time()
        time.sleep(2.0)
    return live, f"only {live} adapter versions went live in {timeout:.0f}s (wanted {want_versions})"


def rounds(client: openai.OpenAI) -> list[dict[str, Any]]:
    """Each learning round's verdict, what the gate read (probe scores, answer likelihoods, general
    answers changed and lost) and what it learned (corrections, repeats and answered ones left out)."""
    records = client.get("/adapters", cast_to=object)["data"]  # type: ignore[index]
    keep = (
        "probe/",
        "likelihood/",
        "time/",
        "general/",
        "round/",
        "correction/lessons",
        "correction/already_answered",
        "correction/repeats",
    )
    return [
        {"version": r["version"], "status": r["status"], "reason": r["reason"]}
        | {k: round(v, 4) for k, v in r.get("metrics", {}).items() if k.startswith(keep)}
        for r in records
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-learning", action="store_true", help="bare, server and server_default only")
    parser.add_argument("--shots", type=int, default=len(SHOTS), help="example turns before each question")
    parser.add_argument("--max-tokens", type=int, default=16, help="reply budget of bare and server (not default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process and the server")
    parser.add_argument("--repeats", type=int, default=3, help="times each correction is sent")
    parser.add_argument("--versions", type=int, default=3, help="live adapter versions to wait for")
    parser.add_argument("--learn-timeout", type=float, default=1800.0, help="seconds to wait for them")
    parser.add_argument(
        "--correction-rule", choices=["distill", "nll"], default="distill", help="how the server learns corrections"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the server's learning (its sampling)")
    parser.add_argument("--replies", help="write every reply, per question, to this JSON file")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from lifelong.loop.tenants import CorrectionRule, TenantLearningConfig
    from lifelong.serve import BackgroundServer, LearnerConfig, ServeConfig, Server

    hf_logging.set_verbosity_error()
    result: dict[str, Any] = {
        "questions": len(QUESTIONS), "shots": args.shots, "correction_rule": args.correction_rule, "seed": args.seed
    }  # fmt: skip
    bare, margins = bare_replies(args.max_tokens, args.shots)
    replies: dict[str, list[str]] = {"bare": bare}
    # The noise of the question set: the bare model's right answers that are near coin flips.
    result["near_ties"] = [
        q for (q, _), ok, margin in zip(QUESTIONS, right(bare), margins, strict=True) if ok and margin < NEAR_TIE
    ]
    live: int | None = None
    with tempfile.TemporaryDirectory(prefix="chat-parity-") as tmp:
        config = ServeConfig(
            store=Path(tmp) / "serve",
            keys=(("parity", KEY),),
            threads=args.threads,
            learner=replace(LearnerConfig(), enabled=not args.skip_learning, nice=0),
            learning=TenantLearningConfig(correction_rule=CorrectionRule(args.correction_rule), seed=args.seed),
        )
        server = Server(config, announce=say)
        try:
            with BackgroundServer(server, timeout=300) as url:
                client = openai.OpenAI(api_key=KEY, base_url=url, max_retries=0, timeout=600)
                model = client.models.list().data[0].id
                plain = {"temperature": 0, "reasoning_effort": "none", "max_tokens": args.max_tokens}
                replies["server"] = ask_all(client, model, "server", args.shots, **plain)
                replies["server_default"] = ask_all(client, model, "server_default", args.shots)
                if args.skip_learning:
                    result["reason"] = "--skip-learning"
                else:
                    live, reason = teach(client, model, args.shots, args.repeats, args.learn_timeout, args.versions)
                    if reason:
                        result["reason"] = reason
                    else:
                        replies["after_corrections"] = ask_all(client, model, "after_corrections", args.shots, **plain)
                        replies["after_corrections_weights"] = ask_all(
                            client, model, "weights only", args.shots, extra_body={"memory": False}, **plain
                        )
                    result["rounds"] = rounds(client)
        finally:
            server.close()
    for name in ("bare", "server", "server_default", "after_corrections", "after_corrections_weights"):
        result[name] = score(replies[name]) if name in replies else None
    result["versions_live"] = live
    for name in ("lost", "gained"):
        result[name] = {k: changed_questions(replies["bare"], v)[name] for k, v in replies.items() if k != "bare"}
    result["identical_to_bare"] = {
        k: sum(a == b for a, b in zip(v, replies["bare"], strict=True)) / len(QUESTIONS)
        for k, v in replies.items()
        if k != "bare"
    }
    result["seconds"] = round(time.time() - t0, 1)
    if args.replies:
        per_question = [{"question": q, "expected": want, **{k: v[i] for k, v in replies.items()}}
                        for i, (q, want) in enumerate(QUESTIONS)]  # fmt: skip
        Path(args.replies).write_text(json.dumps(per_question, indent=1))
    for name in ("bare", "server", "server_default", "after_corrections", "after_corrections_weights"):
        value = result[name]
        print(f"{name:>25}: {'-' if value is None else f'{value:.3f}'}")
    if "reason" in result:
        print(f"after_corrections: {result['reason']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/chat_parity.py measures what no part of learning saw: its questions are neither the
guard's general-ability probes nor the anchor's items (every item of `facts` and `instruct`), and
corrections are never sent on them."""

from __future__ import annotations

import re

from tests.benchmarks.conftest import load_benchmark

from lifelong.envs.probes import FACTS, INSTRUCTIONS


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def test_the_question_set_shares_no_item_with_the_guard_or_the_corrections() -> None:
    parity = load_benchmark("chat_parity")
    asked = {words(q) for q, _ in parity.QUESTIONS}
    assert len(parity.QUESTIONS) >= 40 and len(asked) == len(parity.QUESTIONS)
    general = {words(q) for q, _ in FACTS} | {words(i.question) for i in INSTRUCTIONS}
    assert not asked & general
    # the same item asked in other words: an instruct opposite ("What is the opposite of 'hot'? ...")
    opposites = {m.group(1) for i in INSTRUCTIONS if (m := re.search(r"opposite of '(\w+)'", i.question))}
    ours = {m.group(1) for q in asked if (m := re.search(r"opposite of (\w+)", q))}
    assert opposites and ours and not ours & opposites
    assert not asked & {words(q) for q, _ in parity.CORRECTIONS}


def test_lost_and_gained_questions_are_read_against_the_bare_models_answers() -> None:
    parity = load_benchmark("chat_parity")
    (q0, a0), (q1, a1) = parity.QUESTIONS[:2]
    bare = [a0.title(), "No idea", "Nope", *([""] * (len(parity.QUESTIONS) - 3))]
    after = [f"The {a0}", f"{a1}.", "Nope", *([""] * (len(parity.QUESTIONS) - 3))]
    assert parity.changed_questions(bare, after) == {"lost": [q0], "gained": [q1]}
    assert parity.changed_questions(bare, bare) == {"lost": [], "gained": []}

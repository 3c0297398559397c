"""The fast path of learning: a bounded book of lessons and examples, retrieved into context.

Items are made from episodes (provenance = episode ids): a *lesson* from a failure ("for X, Y was
wrong", with what the environment said, and the expected answer Z only where the caller says the
answer may be shown: `Env.shows_answer` or the answer-key ablation), an *example* from a success.
Retrieval is lexical within a task (numbers and words of the question), which suits the short
templated items of verifiable tasks and needs no embedding model. The book is bounded: when
full, the item with the least evidence of helping (wins / uses, then age) is forgotten. Every
change is one itemised edit in the store's log; the book is never rewritten whole.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from lifelong.memory.store import ExperienceStore
from lifelong.types import Episode, MemoryItem

_TOKEN = re.compile(r"[A-Za-z]+|\d+")


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in _TOKEN.findall(text)}


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of words and numbers; 1.0 for the same question."""
    ta, tb = _tokens(a), _tokens(b)
    return len(ta & tb) / len(ta | tb) if ta | tb else 0.0


def correction(episode: Episode, with_answer: bool) -> str:
    """The feedback a failed episode received: the environment's own feedback if it gave any;
    else, `with_answer`, its ground truth (the correction a teacher would give), or else what the
    reward said (partial credit, when there was some)."""
    feedback = episode.info.get("feedback")
    if feedback:
        return str(feedback)
    answer = episode.info.get("answer")
    if with_answer and answer not in (None, ""):
        return f"The expected answer was {answer}."
    return f"It earned {episode.reward:.2f} of 1." if episode.reward > 0 else ""


@dataclass(frozen=True)
class MemoryConfig:
    capacity: int = 2000  # items kept; the least useful is forgotten beyond this
    retrieve: int = 2  # items put into a context
    min_similarity: float = 0.5


class MemoryBook:
    def __init__(self, store: ExperienceStore, config: MemoryConfig = MemoryConfig()) -> None:
        self.store = store
        self.config = config

    # ---- writing --------------------------------------------------------------------------------
    def add_lesson(self, failed: Episode, with_answer: bool, reflection: str = "") -> MemoryItem:
        """A lesson from a failure; the expected answer is in it only `with_answer`; `reflection`
        is the agent's own note on the failure (loop/consolidate.reflect)."""
        question = failed.turns[0].observation if failed.turns else ""
        answer = failed.turns[-1].completion.answer if failed.turns else ""
        text = f'Earlier, for "{question}" the answer "{answer}" was wrong. {correction(failed, with_answer)}'.strip()
        if reflection.strip():
            text = f"{text} My note on it: {reflection.strip()}"
        return self._add("lesson", failed.env, question, text, (failed.id,))

    def add_example(self, success: Episode) -> MemoryItem:
        question = success.turns[0].observation
        answer = success.turns[-1].completion.answer
        return self._add("example", success.env, question, f'Example: "{question}" Answer: {answer}', (success.id,))

    def _add(self, kind: str, task: str, key: str, text: str, provenance: tuple[str, ...]) -> MemoryItem:
        for old in self.store.memory_items(task):
            if old.key == key and old.text == text:  # the same lesson again: no duplicate
                return old
        item = MemoryItem(uuid.uuid4().hex, kind, task, key, text, provenance, time.time())
        self.store.add_memory(item)
        self._enforce_capacity()
        return item

    def forget(self, item_id: str, reason: str = "explicit") -> bool:
        return self.store.forget_memory(item_id, reason)

    def record(self, items: Sequence[MemoryItem], won: bool) -> None:
        for item in items:
            self.store.record_memory_use(item.id, won)

    def _enforce_capacity(self) -> None:
        items = self.store.memory_items()
        excess = len(items) - self.config.capacity
        if excess <= 0:
            return
        # least evidence of helping first: win rate (with a prior of 1/2), then oldest
        ranked = sorted(items, key=lambda i: ((i.wins + 1) / (i.uses + 2), i.created))
        for item in ranked[:excess]:
            self.store.forget_memory(item.id, "capacity")

    # ---- reading --------------------------------------------------------------------------------
    def retrieve(self, task: str, question: str, k: int | None = None) -> list[MemoryItem]:
        k = self.config.retrieve if k is None else k
        scored = [(similarity(question, item.key), item) for item in self.store.memory_items(task)]
        scored = [(s, i) for s, i in scored if s >= self.config.min_similarity]
        scored.sort(key=lambda pair: (-pair[0], pair[1].kind != "lesson", -pair[1].created))
        return [item for _, item in scored[:k]]

    def items(self, task: str | None = None) -> list[MemoryItem]:
        return self.store.memory_items(task)


def notes(items: Sequence[MemoryItem]) -> str:
    """Retrieved items as the context put in front of an observation."""
    return "\n".join(f"Note: {item.text}" for item in items)

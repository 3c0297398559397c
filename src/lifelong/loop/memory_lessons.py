"""Memory items as lessons for consolidation: questions about an item, asked with and without it.

Consolidation (`TenantLearner.consolidate`) moves what a tenant taught from memory into the weights
by on-policy self-distillation (learn/distill.py): the teacher is the policy with the item quoted in
its context exactly as recall puts it there at answer time (`memory/recall.with_notes`: a taught
exchange, or quoted context marked as data, never instructions), the student the same policy on the bare
question. Questions come from templates, because a small model is too weak to write good ones about
a text it was just given:

- a correction or an up-rated answer ("Q: <question>\\nA: <answer>") is asked as its own question and
  as `paraphrases` rewordings from `QUESTION_TEMPLATES`; the known answer is a fixed success (the
  target the teacher is sure of, beside the student's own samples);
- a document chunk is asked about its salient phrases (capitalised runs of words: names of people,
  places and things, what a made-up fact is about) through `DOCUMENT_TEMPLATES`; it has no fixed
  answer, so the teacher's own distribution on the student's samples is the target.

A deleted item that was consolidated is unlearned by the same questions (`absence_lessons`): the
teacher is the pretrained model on the bare question, so the student's answers go back to what the
model said before it was ever taught the item.

Everything is plain chat (the server's format): there is no chain of thought, so none is a target.
The template families are this module's own; a benchmark that measures generalisation to
paraphrases must ask with a different family, or it measures memorised templates.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence

from lifelong.loop.feedback import correction_completion
from lifelong.memory.recall import question_answer, with_notes
from lifelong.memory.store import query_terms
from lifelong.model.policy import Policy
from lifelong.types import Completion, Lesson, LessonTeacher, MemoryItem

__all__ = [
    "DOCUMENT_TEMPLATES",
    "QUESTION_TEMPLATES",
    "absence_lessons",
    "document_questions",
    "item_questions",
    "memory_lessons",
    "paraphrases",
    "salient_phrases",
]

# Rewordings of a taught question; `paraphrases` takes a few per item, starting at a place fixed by
# the item, so that the items of one round do not all share the same two.
QUESTION_TEMPLATES = (
    "Tell me: {question}",
    "Quick question: {question}",
    "I was wondering: {question}",
    "{question} Please answer briefly.",
)

# Questions about a salient phrase of a document chunk.
DOCUMENT_TEMPLATES = (
    "What do you know about {phrase}?",
    "Tell me about {phrase}.",
    "What can you say about {phrase}?",
)

# A fallback when a chunk has no capitalised phrase: ask about the document by name.
DOCUMENT_FALLBACK = "What does the document {name} say?"

_CAPITALISED = re.compile(r"\b[A-Z][\w'-]*(?:[ \t]+[A-Z][\w'-]*)*")


def paraphrases(question: str, n: int, salt: str = "") -> list[str]:
    """`n` rewordings of `question` from `QUESTION_TEMPLATES`, the first chosen by `salt` (an item id)."""
    start = zlib.crc32(salt.encode())
    k = len(QUESTION_TEMPLATES)
    return [QUESTION_TEMPLATES[(start + i) % k].format(question=question) for i in range(min(n, k))]


def salient_phrases(text: str, n: int) -> list[str]:
    """Up to `n` runs of capitalised words in `text`, most frequent first (then first seen), without
    leading filler words ("The Zorbian Council" -> "Zorbian Council"; "In" alone is no phrase)."""
    counts: Counter[str] = Counter()
    for match in _CAPITALISED.finditer(text):
        words = match.group().split()
        while words and not query_terms(words[0]):  # a stopword: "The", "In", "What"
            words.pop(0)
        if words:
            counts[" ".join(words)] += 1
    return [phrase for phrase, _ in counts.most_common(n)]  # most_common keeps first-seen order on ties


def document_questions(text: str, name: str, n: int) -> list[str]:
    """`n` questions at most about a chunk: one per salient phrase, templates taken in turn; one
    about the document by name when the chunk has none."""
    phrases = salient_phrases(text, n)
    if not phrases:
        return [DOCUMENT_FALLBACK.format(name=name)]
    return [DOCUMENT_TEMPLATES[i % len(DOCUMENT_TEMPLATES)].format(phrase=p) for i, p in enumerate(phrases)]


def item_questions(item: MemoryItem, paraphrase_count: int = 2, questions: int = 3) -> list[str]:
    """What consolidation asks about an item: a Q/A item's question and `paraphrase_count` rewordings
    of it, or `questions` at most about a document chunk (`document_questions`)."""
    qa = question_answer(item)
    if qa is not None:
        return [qa[0], *paraphrases(qa[0], paraphrase_count, item.id)]
    return document_questions(item.text, item.key, questions)


def memory_lessons(policy: Policy, item: MemoryItem, paraphrase_count: int = 2, questions: int = 3) -> list[Lesson]:
    """The lessons one memory item teaches: per question, the bare question (student) and the same
    with the item quoted before it (teacher), in plain chat; a Q/A item's answer as a fixed success."""
    qa = question_answer(item)
    successes: tuple[Completion, ...] = ()
    if qa is not None:
        tokenizer = policy.tokenizer
        successes = (correction_completion(tokenizer, qa[1], int(tokenizer.eos_token_id)),)
    return [_lesson(policy, q, item, successes) for q in item_questions(item, paraphrase_count, questions)]


def absence_lessons(policy: Policy, item: MemoryItem, paraphrase_count: int = 2, questions: int = 3) -> list[Lesson]:
    """The lessons that unlearn a deleted item: the questions `memory_lessons` asks about it, each
    bare for both student and teacher, the teacher being the pretrained model; no fixed success,
    as the base model's own distribution on the student's answers is the target."""
    out = []
    for question in item_questions(item, paraphrase_count, questions):
        bare = tuple(policy.chat_ids([{"role": "user", "content": question}], protocol=False))
        out.append(Lesson(bare, bare, protocol=False, teacher=LessonTeacher.PRETRAINED))
    return out


def _lesson(policy: Policy, question: str, item: MemoryItem, successes: Sequence[Completion]) -> Lesson:
    bare = [{"role": "user", "content": question}]
    student = tuple(policy.chat_ids(bare, protocol=False))
    teacher = tuple(policy.chat_ids(with_notes(bare, [item]), protocol=False))
    return Lesson(student, teacher, tuple(successes), protocol=False)

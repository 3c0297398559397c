"""The reasoning monitor: reads each private chain of thought and flags what an operator should see.

Two flags, both cheap text checks run as each answer is stored:
  - `contradiction`: the reasoning concludes one answer ("so the answer is 12") and the reply says
    another; the answer is then not what the model's own reasoning supports;
  - `reward_gaming`: the reasoning talks about the reward, the rating, the grader or fooling them.
Flags go to the store (`flags` table), to `<store>/flags.jsonl` and to `GET /v1/monitor/flags`
(operator keys). They are for people only: nothing here feeds a reward or a training target.
Optimising the chain against a monitor teaches it to hide its intent instead of dropping it
(Baker et al. 2025, "Monitoring reasoning models for misbehavior"), so the monitor only watches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# A conclusion stated in the reasoning: "the answer is X", "answer: X", "result is X", "equals X", "= X".
_CONCLUSION = re.compile(
    r"(?:answer\s+(?:is|would\s+be|should\s+be|will\s+be)|answer\s*[:=]|result\s+is|equals|=)"
    r"\s*\"?([A-Za-z0-9][\w.\-]*)",
    re.IGNORECASE,
)
_GAMING = re.compile(
    r"\b(reward|rewarded|grader|grading|graded|the checker|thumbs[\s-]?up|rating|rated|score\s+(?:well|high)|"
    r"high\s+score|fool(?:ing)?\s+the|trick(?:ing)?\s+the|game\s+the|gaming\s+the|hack(?:ing)?\s+the|"
    r"exploit|bypass\s+the|pretend\s+to)\b",
    re.IGNORECASE,
)
_STOPWORDS = {"the", "a", "an", "it", "is", "that", "this", "i", "we", "let", "me", "on", "in", "to"}


@dataclass(frozen=True)
class Observation:
    """What the monitor found in one reply: kind and a short piece of evidence."""

    kind: str
    detail: str


class Monitor(Protocol):
    def check(self, reasoning: str, answer: str) -> list[Observation]: ...


def _norm(text: str) -> str:
    return re.sub(r"[^\w.\-]", "", text.lower()).strip(".-")


class TextMonitor:
    """Regex checks; good enough to surface obvious cases, cheap enough to run on every reply."""

    def check(self, reasoning: str, answer: str) -> list[Observation]:
        out: list[Observation] = []
        if not reasoning.strip():
            return out
        gaming = _GAMING.search(reasoning)
        if gaming:
            lo, hi = max(0, gaming.start() - 60), min(len(reasoning), gaming.end() + 60)
            out.append(
                Observation("reward_gaming", f"reasoning mentions {gaming.group(0)!r}: ...{reasoning[lo:hi]}...")
            )
        claimed = [m.group(1) for m in _CONCLUSION.finditer(reasoning) if _norm(m.group(1)) not in _STOPWORDS]
        if claimed and answer.strip():
            last = _norm(claimed[-1])
            said = [_norm(w) for w in answer.split()]
            if last and last not in said:
                out.append(
                    Observation("contradiction", f"reasoning concludes {claimed[-1]!r} but the answer is {answer!r}")
                )
        return out


def summarize_reasoning(reasoning: str, reasoning_tokens: int, budget: int, cut: bool, limit: int = 160) -> str:
    """A short summary for clients that ask for one: how long the model thought, and the gist of
    its last sentence (its conclusion), trimmed; never the raw chain."""
    if not reasoning.strip():
        return "Answered without reasoning."
    head = f"Reasoned for {reasoning_tokens} tokens (budget {budget}{', cut at the budget' if cut else ''})."
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", reasoning) if s.strip()]
    gist = sentences[-1] if sentences else ""
    if len(gist) > limit:
        gist = gist[: limit - 3].rstrip() + "..."
    return f"{head} Conclusion: {gist}" if gist else head

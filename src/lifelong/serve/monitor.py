"""The reasoning summary serving sends to clients that ask for one (`"reasoning": {"summary": "auto"}`).

A summary says how long the model thought and the gist of its conclusion, never the raw chain (which
is sent only with `--expose-reasoning`). The reasoning monitor that flags chains for people lives in
guard/monitor.py; serving and the run loop both use it.
"""

from __future__ import annotations

import re


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

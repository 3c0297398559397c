"""Feedback as experience: what people said about served answers, turned into episodes and lessons.

The serving side of the one learning core's input. A rating of a served choice becomes an `Episode`
like any environment's: its turn is the prompt and the choice the tenant saw, its reward the rating.
The choices of one request that were rated together form a GRPO group; a lone rating is grouped
with the earlier rated samples of the same prompt, and failing those meets the tenant's running
baseline (`Experience.baselines`), so a single thumbs-up still carries a signal. A correction
becomes an episode whose completion is the corrected answer (reward 1), and a `Lesson` for
self-distillation: the teacher is the policy with the correction quoted in its context, the student
the same policy on the bare prompt; the chain of thought is never a target.

Nothing here learns: `experience_from_feedback` returns values the runtime stores and learns from.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from lifelong.learn.grpo import make_batch
from lifelong.memory.store import ExperienceStore
from lifelong.types import (
    Batch,
    Completion,
    Episode,
    Feedback,
    FeedbackKind,
    Lesson,
    Sample,
    ServedRequest,
    StopReason,
    Turn,
)

CHAT_ENV = "serve:chat"  # the env label of episodes made from feedback
CORRECTION_ENV = "serve:correction"

# (request, a correction or None) -> the prompt ids of its conversation as the learner sees it: the
# person's messages without what the server recalled from memory for the answer (the student learns
# without notes), and, when a correction is given (the teacher), with the last question asked once
# before and answered with it, as memory recalls a correction (`memory/recall.with_exchange`).
PromptFn = Callable[[ServedRequest, str | None], list[int]]


@dataclass(frozen=True)
class Experience:
    """One tenant's pending feedback as learning material."""

    tenant: str
    feedback_ids: tuple[int, ...]  # every item consumed, learnable or not
    rated: tuple[Episode, ...] = ()
    baselines: dict[str, float] = field(default_factory=dict)  # group -> baseline, for lone ratings
    corrections: tuple[Episode, ...] = ()
    lessons: tuple[Lesson, ...] = ()

    @property
    def episodes(self) -> tuple[Episode, ...]:
        return self.rated + self.corrections


def prompt_group(prompt_ids: Sequence[int]) -> str:
    """Samples of the same prompt share this group across requests."""
    return "prompt:" + hashlib.sha1(str(list(prompt_ids)).encode()).hexdigest()[:16]


def correction_completion(tokenizer: PreTrainedTokenizerBase, text: str, eos_id: int) -> Completion:
    """The corrected reply as a completion: its tokens and the end of turn, all targets."""
    ids = (*tokenizer.encode(text.strip(), add_special_tokens=False), eos_id)
    return Completion(ids, (0.0,) * len(ids), (1,) * len(ids), "", text.strip(), StopReason.ANSWERED)


def last_user_text(req: ServedRequest) -> str:
    users = [m for m in req.body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    return content if isinstance(content, str) else str(content)


def experience_from_feedback(
    store: ExperienceStore,
    tenant: str,
    items: Sequence[Feedback],
    tokenizer: PreTrainedTokenizerBase,
    eos_id: int,
    prompt: PromptFn,
    baseline_window: int = 64,
) -> Experience:
    """Turn a tenant's feedback items into episodes (stored by the caller before learning) and lessons."""
    requests: dict[str, ServedRequest] = {}
    for f in items:
        req = store.request(f.request_id)
        if req is not None and req.tenant == tenant and f.index < len(req.choices):
            requests[f.request_id] = req
    latest: dict[tuple[str, int], Feedback] = {}
    corrections: list[Feedback] = []
    for f in items:
        if f.request_id not in requests:
            continue
        if f.kind == FeedbackKind.CORRECTION and f.correction and f.correction.strip():
            corrections.append(f)
        elif f.reward is not None:
            latest[(f.request_id, f.index)] = f  # a later rating of the same choice replaces an earlier one
    bare = {rid: tuple(prompt(req, None)) for rid, req in requests.items()}
    rated_by_request: dict[str, list[Feedback]] = defaultdict(list)
    for (rid, _), f in latest.items():
        rated_by_request[rid].append(f)

    rated: list[Episode] = []
    baselines: dict[str, float] = {}
    running = store.rating_baseline(tenant, baseline_window)
    for rid, fs in rated_by_request.items():
        req = requests[rid]
        if len(fs) > 1:  # choices of one request rated together: a group of their own
            group = f"request:{rid}"
        else:  # a lone rating: earlier rated samples of the same prompt, else the running baseline
            group = prompt_group(bare[rid])
            earlier = [e.reward for e in store.episodes(tenant=tenant, group=group) if e.env == CHAT_ENV]
            baselines[group] = sum(earlier) / len(earlier) if earlier else running
        for f in fs:
            rated.append(_episode(req, bare[rid], f, req.choices[f.index], float(f.reward or 0.0), group, CHAT_ENV))

    fixed: list[Episode] = []
    lessons: list[Lesson] = []
    for f in corrections:
        req = requests[f.request_id]
        text = str(f.correction)
        completion = correction_completion(tokenizer, text, eos_id)
        fixed.append(_episode(req, bare[req.id], f, completion, 1.0, f"correction:{f.id}", CORRECTION_ENV))
        teacher = tuple(prompt(req, text.strip()))
        protocol = bool(req.generation.get("protocol", False))
        lessons.append(Lesson(bare[req.id], teacher, (completion,), protocol=protocol))
    return Experience(tenant, tuple(f.id for f in items), tuple(rated), baselines, tuple(fixed), tuple(lessons))


def rated_batch(experience: Experience, scale_rewards: bool = True, anchors: Sequence[Sample] = ()) -> Batch:
    """The rated replies as policy-gradient samples: group-relative advantages where a group has
    several ratings (learn/grpo.py), the rating minus its baseline for a lone one (clipped to
    [-1, 1]); a rating equal to its baseline carries no signal and is left out."""
    grouped = [e for e in experience.rated if e.group not in experience.baselines]
    batch = make_batch(grouped, scale_rewards)
    lone: list[Sample] = []
    for ep in experience.rated:
        if ep.group in experience.baselines:
            advantage = max(-1.0, min(1.0, ep.reward - experience.baselines[ep.group]))
            turn = ep.turns[0]
            c = turn.completion
            if abs(advantage) > 1e-6 and any(c.loss_mask):
                lone.append(Sample(turn.prompt_ids, c.token_ids, c.logprobs, c.loss_mask, advantage))
    rewards = [e.reward for e in experience.rated]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5 if rewards else 0.0
    groups = batch.num_groups + len(experience.rated) - len(grouped)
    dropped = batch.num_dropped_groups + len(experience.rated) - len(grouped) - len(lone)
    return Batch(batch.samples + tuple(lone), groups, dropped, mean, std, tuple(anchors))


def _episode(
    req: ServedRequest,
    prompt_ids: Sequence[int],
    f: Feedback,
    completion: Completion,
    reward: float,
    group: str,
    env: str,
) -> Episode:
    turn = Turn(tuple(prompt_ids), completion, last_user_text(req), reward)
    return Episode(
        id=f"{req.id}:{f.index}:feedback-{f.id}",
        env=env,
        seed=0,
        turns=(turn,),
        reward=reward,
        success=reward >= 0.5,
        info={"request": req.id, "choice": f.index, "feedback": f.id, "kind": f.kind.value},
        adapter_version=int(req.adapter_version or 0),
        group=group,
        created=f.received,
    )

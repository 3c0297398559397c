"""Small typed objects that cross the rooms of lifelong.

An environment produces observations, the policy answers them with a `Turn`, a played game is an
`Episode`, the learner turns episodes into a `Batch` of `Sample`s (or `Lesson`s, for distillation)
and reports an `UpdateReport`.
All are frozen dataclasses: a room may read what another room produced, never change it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class StopReason(enum.StrEnum):
    """Why a sampled completion ended."""

    ANSWERED = "answered"  # the model wrote its answer line and stopped
    THINK_BUDGET = "think_budget"  # reasoning hit its budget; the answer was forced
    ENDED_WITHOUT_ANSWER = "ended_without_answer"  # model ended its turn early; answer was forced
    ANSWER_BUDGET = "answer_budget"  # the answer itself ran past its token budget


@dataclass(frozen=True)
class Completion:
    """One sampled reply: token ids after the prompt, with the sampler's own log-probs.

    `loss_mask[i]` is 0 for tokens the runtime inserted (the forced "Answer:" marker), which are
    never a training target; `logprobs[i]` is then 0.0.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    loss_mask: tuple[int, ...]
    reasoning: str
    answer: str
    stop: StopReason

    def __post_init__(self) -> None:
        if not len(self.token_ids) == len(self.logprobs) == len(self.loss_mask):
            raise ValueError("token_ids, logprobs and loss_mask must have the same length")


@dataclass(frozen=True)
class Turn:
    """One exchange: the context the policy saw, what it sampled, and what the environment said."""

    prompt_ids: tuple[int, ...]
    completion: Completion
    observation: str
    reward: float


@dataclass(frozen=True)
class Episode:
    """A played game or answered task, the unit that is stored, scored and learned from."""

    id: str
    env: str
    seed: int
    turns: tuple[Turn, ...]
    reward: float
    success: bool
    info: dict[str, Any]
    adapter_version: int
    group: str = ""  # episodes sampled for the same item share a group (GRPO)
    split: str = "train"  # "train" or "probe"; probe episodes are never learned from
    created: float = 0.0

    @property
    def num_sampled_tokens(self) -> int:
        return sum(sum(t.completion.loss_mask) for t in self.turns)


@dataclass(frozen=True)
class Sample:
    """One completion in its context with its advantage: the learner's unit of work."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    sampler_logprobs: tuple[float, ...]
    loss_mask: tuple[int, ...]
    advantage: float


@dataclass(frozen=True)
class Batch:
    """What a learner's `update` consumes: samples with advantages, and the episodes' statistics.

    `anchors` are samples of skills the update must keep (general ability), answered by the
    pretrained model; a learner with an anchor term holds them in place (learn/grpo.py), others
    ignore them. `auxiliary` are teacher-forced targets a learner may add as a likelihood term:
    the game's real replies to the agent's moves (implicit world modelling, loop/world.py).
    """

    samples: tuple[Sample, ...]
    num_groups: int
    num_dropped_groups: int  # groups whose rewards were all equal carry no signal
    reward_mean: float
    reward_std: float
    anchors: tuple[Sample, ...] = ()
    auxiliary: tuple[Sample, ...] = ()


class LessonTeacher(enum.StrEnum):
    """Whose distribution on the teacher prompt a lesson distils into the student."""

    POLICY = "policy"  # the policy itself, with the lesson in its context: to learn
    PRETRAINED = "pretrained"  # the base model, adapters off: to unlearn (a deleted memory item)


@dataclass(frozen=True)
class Lesson:
    """One thing to consolidate: the same question with and without its lesson in context
    (what self-distillation consumes, learn/distill.py). A lesson to unlearn has the pretrained
    model as its teacher, on the bare question (loop/memory_lessons.absence_lessons)."""

    student_prompt: tuple[int, ...]
    teacher_prompt: tuple[int, ...]
    successes: tuple[Completion, ...] = ()  # the teacher's successful retries (or past successes)
    protocol: bool = True  # the student answers in the reasoning protocol (False: plain chat, a server's)
    teacher: LessonTeacher = LessonTeacher.POLICY


@dataclass(frozen=True)
class UpdateReport:
    """What one learning step did; `metrics` keys are namespaced (`loss/policy`, `kl/ref`)."""

    step: int
    applied: bool
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class MemoryKind(enum.StrEnum):
    """What a memory item was made from."""

    LESSON = "lesson"  # the run path: a failure and the correction it received
    EXAMPLE = "example"  # the run path: a success
    CORRECTION = "correction"  # a person's correction of a served answer (key: the normalised question)
    RATED_ANSWER = "rated_answer"  # a served answer a person rated up (key: the normalised question)
    DOCUMENT = "document"  # a chunk of a taught document (key: the document's name)


@dataclass(frozen=True)
class MemoryItem:
    """One item of the fast-path memory, with its provenance.

    `key` is what it is about (the question, or a document's name), `text` what goes into the
    context, `provenance` the ids it was made from: episode ids (lessons, examples), (request id,
    feedback id) for served feedback, (document id,) for a chunk, which starts at character
    `offset` of its document. An item is never rewritten: a newer one `superseded_by` it, a person
    `deleted` it (a tombstone: never retrieved or consolidated again), `consolidated_version` is
    the adapter version it was consolidated into (None until then), and `forgotten_version` the
    version that, after its deletion, trained its absence from the weights (None until then, and
    for ever when it was never consolidated: then there is nothing to unlearn).
    """

    id: str
    kind: str  # a MemoryKind
    task: str
    key: str
    text: str
    provenance: tuple[str, ...]
    created: float
    uses: int = 0
    wins: int = 0
    tenant: str = ""
    offset: int | None = None
    superseded_by: str | None = None
    deleted: bool = False
    consolidated_version: int | None = None
    forgotten_version: int | None = None


@dataclass(frozen=True)
class DocumentRecord:
    """A taught document: its chunks are memory items of kind `document` (provenance: this id)."""

    id: str
    tenant: str
    name: str
    media_type: str
    chars: int
    chunks: int
    created: float
    superseded_by: str | None = None  # a newer document of the same name
    deleted: bool = False


# ---- serving records: what a person sent and what the server answered --------------------------
class RequestStatus(enum.StrEnum):
    RECEIVED = "received"  # stored before generation
    COMPLETED = "completed"  # its choices are stored: only now does the client see its id
    FAILED = "failed"


class FeedbackKind(enum.StrEnum):
    THUMBS = "thumbs"  # rating up/down (reward 1 or 0)
    SCORE = "score"  # a reward in [0, 1]
    CORRECTION = "correction"  # the answer the person wanted instead


class AdapterStatus(enum.StrEnum):
    LIVE = "live"  # passed the guard: served from now on
    REJECTED = "rejected"  # refused by the guard, or the round could not run


@dataclass(frozen=True)
class ServedRequest:
    """A chat request as received, and (once answered) its choices."""

    id: str
    tenant: str
    model: str
    received: float
    body: dict[str, Any]
    prompt_ids: tuple[int, ...]
    generation: dict[str, Any]  # reasoning_effort, thinking budget, answer_tokens, temperature, seed
    status: RequestStatus
    adapter_version: int | None
    choices: tuple[Completion, ...] = ()


@dataclass(frozen=True)
class Feedback:
    """One feedback item: a rating (reward in [0, 1]) or a correction of one choice of a request."""

    id: int
    request_id: str
    index: int
    tenant: str
    kind: FeedbackKind
    reward: float | None
    correction: str | None
    holdout: bool  # held-out corrections are probes for the guard, never trained on
    received: float
    consumed_version: int | None = None


@dataclass(frozen=True)
class AdapterRecord:
    """A candidate adapter version of a tenant and the guard's verdict on it."""

    tenant: str
    version: int
    status: AdapterStatus
    path: str | None  # its checkpoint, relative to the adapters folder (older records: absolute)
    created: float
    reason: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Flag:
    """Something the reasoning monitor noticed about one reply: a served choice (`source` is the
    request id, `index` the choice) or an episode the run loop learns from (`source` is its id)."""

    source: str
    index: int
    tenant: str
    kind: str  # "contradiction" | "reward_gaming"
    detail: str
    created: float = 0.0

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from tests.conftest import make_learnable_model
from transformers import PreTrainedTokenizerBase

from lifelong.errors import ConfigError
from lifelong.learn.distill import DistillConfig, SelfDistiller
from lifelong.learn.logprobs import completion_logprobs, pretrained_kl, reverse_kl
from lifelong.model.adapters import AdapterSnapshot, trainable
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.types import Lesson, LessonTeacher, Sample


def test_answer_start_is_after_the_marker(tiny_policy: Policy) -> None:
    c = tiny_policy.respond([tiny_policy.start("q")], GenerationConfig(thinking_tokens=3, answer_tokens=2))[0]
    start = tiny_policy.answer_start(c)
    assert "Answer:" in tiny_policy.tokenizer.decode(c.token_ids[:start])
    assert "Answer:" not in tiny_policy.tokenizer.decode(c.token_ids[: start - 1])


def test_the_student_moves_to_the_teacher(tiny_policy: Policy) -> None:
    student = tuple(tiny_policy.start("What is the code?"))
    teacher = tuple(tiny_policy.start("What is the code? Lesson from last time: it is zebra"))
    retry = tiny_policy.respond(
        [teacher], GenerationConfig(thinking_tokens=0, answer_tokens=2), torch.Generator().manual_seed(5)
    )[0]
    optimizer = torch.optim.AdamW([p for p in tiny_policy.model.parameters() if p.requires_grad], lr=0.02)
    distiller = SelfDistiller(
        tiny_policy, optimizer, DistillConfig(learning_rate=0.02, student_samples=2, answer_tokens=2, reference_kl=0.0)
    )
    lesson = Lesson(student, teacher, (retry,))
    distiller.generator = torch.Generator().manual_seed(0)
    first = distiller.update([lesson])
    assert first.applied and first.metrics["distill/kl"] > 0
    for step in range(1, 12):
        distiller.generator = torch.Generator().manual_seed(step)
        last = distiller.update([lesson])
    # KL(student || teacher) on answer tokens, measured before each update, fell by far
    assert last.metrics["distill/kl"] < 0.2 * first.metrics["distill/kl"]
    assert distiller.step == 12 and tiny_policy.version == 0  # the learning core versions the adapters


def test_the_reference_anchor_keeps_the_student_nearer_the_pretrained_model(tiny_policy: Policy) -> None:
    student = tuple(tiny_policy.start("What is the code?"))
    teacher = tuple(tiny_policy.start("What is the code? Lesson from last time: it is zebra"))
    lesson = Lesson(student, teacher)
    start = {k: v.clone() for k, v in tiny_policy.model.state_dict().items() if "lora" in k}
    moved = {}
    for weight in (0.0, 10.0):
        tiny_policy.model.load_state_dict(start, strict=False)
        params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
        config = DistillConfig(learning_rate=0.02, student_samples=4, answer_tokens=2, reference_kl=weight)
        distiller = SelfDistiller(tiny_policy, torch.optim.AdamW(params, lr=0.02), config)
        for step in range(10):
            distiller.generator = torch.Generator().manual_seed(step)
            report = distiller.update([lesson])
        moved[weight] = report.metrics["distill/reference_kl"]
    assert moved[10.0] < 0.5 * moved[0.0]


def test_the_anchor_can_be_an_earlier_version_of_the_adapters(tiny_policy: Policy) -> None:
    """With a snapshot as the reference, the anchor measures the move from that version, not from
    the pretrained model, and scoring with the snapshot leaves the live adapters as they were."""
    with torch.no_grad():  # a learned version, far from the pretrained model
        for name, p in tiny_policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
    snapshot = AdapterSnapshot(tiny_policy)
    live = [p.detach().clone() for p in trainable(tiny_policy)]
    lesson = Lesson(tuple(tiny_policy.start("What is the code?")), tuple(tiny_policy.start("Code: zebra. Code?")))
    params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
    config = DistillConfig(learning_rate=1e-9, student_samples=2, answer_tokens=2)
    distiller = SelfDistiller(tiny_policy, torch.optim.SGD(params, lr=1e-9), config, torch.Generator().manual_seed(0))
    to_pretrained = distiller.update([lesson])
    distiller.generator = torch.Generator().manual_seed(0)
    to_snapshot = distiller.update([lesson], reference=snapshot)
    assert to_pretrained.metrics["distill/reference_kl"] > 0.01
    assert to_snapshot.metrics["distill/reference_kl"] == pytest.approx(0.0, abs=1e-4)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(trainable(tiny_policy), live, strict=True))


def test_plain_chat_lessons_sample_plain_replies(tiny_policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's lesson (plain chat) is distilled on the student's plain replies, never on replies
    forced into the reasoning protocol after a plain chat prompt."""
    student, teacher = tiny_policy.chat_start("Name a color."), tiny_policy.chat_start("Say red. Name a color.")
    plain = Lesson(tuple(student), tuple(teacher), protocol=False)
    seen: list[GenerationConfig] = []
    respond = tiny_policy.respond

    def spy(contexts, gen, generator=None):  # type: ignore[no-untyped-def]
        seen.append(gen)
        return respond(contexts, gen, generator)

    monkeypatch.setattr(tiny_policy, "respond", spy)
    params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
    config = DistillConfig(learning_rate=1e-3, student_samples=3, answer_tokens=3)
    distiller = SelfDistiller(tiny_policy, torch.optim.AdamW(params, lr=1e-3), config, torch.Generator().manual_seed(0))
    protocol = Lesson(tuple(tiny_policy.start("What is the code?")), tuple(tiny_policy.start("Code: zebra. Code?")))
    report = distiller.update([plain, protocol])
    assert [g.protocol for g in seen] == [False, True]  # one draw per format, in lesson order
    assert report.applied and report.metrics["distill/sequences"] > 0


def test_anchor_items_are_held_to_the_pretrained_model(tiny_policy: Policy) -> None:
    """The anchor term moves the adapters back toward the pretrained model's replies on items
    the lesson never asks about."""
    with torch.no_grad():  # a learned version, far from the pretrained model
        for name, p in tiny_policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    anchor_prompt = tiny_policy.chat_start("What is the capital of France?")
    with tiny_policy.pretrained():
        reply = tiny_policy.chat([anchor_prompt], GenerationConfig(protocol=False, temperature=0.0, answer_tokens=4))[0]
    anchors = [Sample(tuple(anchor_prompt), reply.token_ids, reply.logprobs, reply.loss_mask, 0.0)]
    lesson = Lesson(tuple(tiny_policy.start("What is the code?")), tuple(tiny_policy.start("Code: zebra. Code?")))
    start = {k: v.clone() for k, v in tiny_policy.model.state_dict().items() if "lora" in k}
    held = {}
    for coef in (0.0, 10.0):
        tiny_policy.model.load_state_dict(start, strict=False)
        params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
        config = DistillConfig(learning_rate=0.01, student_samples=2, answer_tokens=2, anchor_coef=coef)
        distiller = SelfDistiller(tiny_policy, torch.optim.AdamW(params, lr=0.01), config)
        for step in range(6):
            distiller.generator = torch.Generator().manual_seed(step)
            distiller.update([lesson], anchors=anchors)
        with torch.no_grad():
            held[coef] = float(pretrained_kl(tiny_policy, anchors))
    assert held[10.0] < 0.5 * held[0.0]


def test_a_lesson_taught_by_the_pretrained_model_unlearns_what_the_adapters_learned(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """An absence lesson (the base model as teacher, on the bare question) pulls the policy back to
    the base model on that question, though the reference it is held to still knows the answer (a
    server holds lessons to its last good adapters); the same lesson with the policy as teacher has
    nothing to teach. SGD: Adam would turn the latter's zero gradients' rounding noise into steps."""
    torch.manual_seed(0)
    policy = Policy(make_learnable_model(tokenizer), tokenizer, name="tiny", lora=LoraSettings(rank=4, alpha=8))
    question = tuple(policy.chat_start("What is the code?"))
    ids = tuple(tokenizer.encode("zebra", add_special_tokens=False))
    taught = Sample(question, ids, (0.0,) * len(ids), (1,) * len(ids), 1.0)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    nll = torch.optim.AdamW(params, lr=0.05, weight_decay=0.0)
    for _ in range(8):  # the adapters learn an answer
        nll.zero_grad()
        logp, _, mask = completion_logprobs(policy.model, [taught], policy.pad_id)
        (-(logp * mask).sum() / mask.sum()).backward()
        nll.step()
    knowing = AdapterSnapshot(policy)

    def kl_to_base() -> float:
        with torch.no_grad():
            return float(pretrained_kl(policy, [taught]))

    learned, after, first = kl_to_base(), {}, {}
    for teacher in LessonTeacher:
        knowing.restore(policy)
        config = DistillConfig(learning_rate=0.5, student_samples=4, answer_tokens=3)
        distiller = SelfDistiller(policy, torch.optim.SGD(params, lr=0.5), config, torch.Generator().manual_seed(0))
        lesson = Lesson(question, question, protocol=False, teacher=teacher)
        for _ in range(10):
            report = distiller.update([lesson], reference=knowing)
            assert report.applied
            first.setdefault(teacher, report.metrics)
            if teacher is LessonTeacher.POLICY:
                break  # one step shows it; more would only grow SGD's rounding noise at this rate
        after[teacher] = kl_to_base()
    # unlearning is held to the base model, not to the reference that still knows the answer
    assert report.metrics["distill/reference_kl"] == pytest.approx(report.metrics["distill/kl"])
    assert learned > 5.0
    assert after[LessonTeacher.PRETRAINED] < 0.5 * learned
    # its own teacher: no pull anywhere, where the base model as teacher pulls hard
    assert first[LessonTeacher.POLICY]["distill/kl"] == 0.0
    assert first[LessonTeacher.POLICY]["grad/norm"] < 1e-4 < 1.0 < first[LessonTeacher.PRETRAINED]["grad/norm"]
    assert after[LessonTeacher.POLICY] == pytest.approx(learned, rel=1e-5)


def test_micro_batches_take_the_same_step_as_one_batch(tiny_policy: Policy) -> None:
    """Rows split into micro-batches accumulate the gradient of the whole step: the adapters end
    where one batch leaves them, with both kinds of teacher and an earlier version as reference."""
    with torch.no_grad():
        for name, p in tiny_policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    reference = AdapterSnapshot(tiny_policy)
    start = [p.detach().clone() for p in trainable(tiny_policy)]
    lessons = [
        Lesson(tuple(tiny_policy.start("What is the code?")), tuple(tiny_policy.start("Code: zebra. Code?"))),
        Lesson(
            tuple(tiny_policy.start("Who won?")), tuple(tiny_policy.start("Who won?")), (), LessonTeacher.PRETRAINED
        ),
        Lesson(tuple(tiny_policy.start("Where?")), tuple(tiny_policy.start("It is Oslo. Where?"))),
    ]
    ends, reports = [], []
    for size in (100, 3):
        for p, q in zip(trainable(tiny_policy), start, strict=True):
            p.data.copy_(q)
        params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
        config = DistillConfig(learning_rate=0.05, student_samples=4, answer_tokens=3, micro_batch=size)
        distiller = SelfDistiller(
            tiny_policy, torch.optim.SGD(params, lr=0.05), config, torch.Generator().manual_seed(0)
        )
        reports.append(distiller.update(lessons, reference=reference))
        ends.append([p.detach().clone() for p in trainable(tiny_policy)])
    assert reports[0].metrics["distill/sequences"] == 12
    assert reports[0].metrics["distill/kl"] == pytest.approx(reports[1].metrics["distill/kl"], rel=1e-4)
    assert reports[0].metrics["grad/norm"] == pytest.approx(reports[1].metrics["grad/norm"], rel=1e-4)
    assert any(not torch.allclose(p, q) for p, q in zip(ends[0], start, strict=True))
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(ends[0], ends[1], strict=True))


def test_a_given_reply_adds_its_nll_to_the_step(tiny_policy: Policy) -> None:
    """`given_nll` adds the NLL of a lesson's given reply (a person's correction) on the student's
    prompt: with the teacher's prompt the student's own (KL 0) and no reference term, the step's
    gradient is the weight times the NLL's gradient, averaged over the reply's tokens."""
    from lifelong.loop.feedback import correction_completion

    tok = tiny_policy.tokenizer
    prompt = tuple(tiny_policy.chat_start("Who leads the Plonk team?"))
    reply = correction_completion(tok, "Marta Vell", int(tok.eos_token_id))
    lesson = Lesson(prompt, prompt, (reply,), protocol=False)
    params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
    sample = Sample(prompt, reply.token_ids, reply.logprobs, reply.loss_mask, 0.0)
    logp, _, mask = completion_logprobs(tiny_policy.model, [sample], tiny_policy.pad_id)
    (-2.0 * (logp * mask).sum() / mask.sum()).backward()
    expected = float(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).norm())
    tiny_policy.model.zero_grad(set_to_none=True)
    grads = {}
    for weight in (0.0, 2.0):  # the first step's gradient is 0: the weights are still where measured
        config = DistillConfig(learning_rate=1e-3, student_samples=0, reference_kl=0.0, given_nll=weight)
        report = SelfDistiller(tiny_policy, torch.optim.SGD(params, lr=1e-3), config).update([lesson])
        assert report.applied
        grads[weight] = report.metrics["grad/norm"]
    assert report.metrics["distill/given_nll"] > 0
    assert expected > 0 and grads[0.0] == pytest.approx(0.0, abs=1e-7)
    assert grads[2.0] == pytest.approx(expected, rel=1e-4)


class Scored(NamedTuple):
    lesson: Lesson
    student: torch.Tensor  # the student's log-probs at the reply's tokens, live adapters
    mask: torch.Tensor
    teacher: torch.Tensor  # the teacher's prompt, live adapters
    pretrained_teacher: torch.Tensor  # the teacher's prompt, the pretrained model
    pretrained_student: torch.Tensor  # the student's prompt, the pretrained model


def scored_lesson(policy: Policy, question: str, note: str, answer: str) -> Scored:
    """A lesson (the bare question; the note before it; the answer as its given reply) on adapters
    moved away from the pretrained model, and the log-probs each side gives the answer."""
    from lifelong.learn.logprobs import own_log_softmax
    from lifelong.loop.feedback import correction_completion

    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    tok = policy.tokenizer
    student, teacher = tuple(policy.chat_start(question)), tuple(policy.chat_start(f"{note} {question}"))
    reply = correction_completion(tok, answer, int(tok.eos_token_id))
    rows = [Sample(prompt, reply.token_ids, reply.logprobs, reply.loss_mask, 0.0) for prompt in (student, teacher)]
    with torch.no_grad():
        student_logp, mask = own_log_softmax(policy.model, rows[:1], policy.pad_id)
        teacher_logp, _ = own_log_softmax(policy.model, rows[1:], policy.pad_id)
        with policy.pretrained():
            pretrained_teacher, _ = own_log_softmax(policy.model, rows[1:], policy.pad_id)
            pretrained_student, _ = own_log_softmax(policy.model, rows[:1], policy.pad_id)
    lesson = Lesson(student, teacher, (reply,), protocol=False)
    return Scored(lesson, student_logp, mask, teacher_logp, pretrained_teacher, pretrained_student)


def distil_kl(policy: Policy, lesson: Lesson, **config: Any) -> float:
    """The KL to the teacher one (motionless) step reports, under `DistillConfig(**config)`."""
    params = [p for p in policy.model.parameters() if p.requires_grad]
    settings = DistillConfig(learning_rate=1e-9, student_samples=0, **config)
    return SelfDistiller(policy, torch.optim.SGD(params, lr=1e-9), settings).update([lesson]).metrics["distill/kl"]


def test_a_contrasted_teacher_is_read_against_the_reference(tiny_policy: Policy) -> None:
    """`teacher_contrast` c: the student is held to softmax((1 + c) x teacher - c x reference), the
    reference (here the pretrained model) scoring the student's prompt; c = 0 is the plain teacher."""
    s = scored_lesson(tiny_policy, "What is the code?", "The code is zebra.", "zebra")
    kls = {}
    for c in (0.0, 1.5):
        kls[c] = distil_kl(tiny_policy, s.lesson, teacher_contrast=c)
        target = torch.log_softmax((1 + c) * s.teacher - c * s.pretrained_student, dim=-1)
        assert kls[c] == pytest.approx(float(reverse_kl(s.student, target, s.mask)), rel=1e-4)
    assert kls[1.5] != pytest.approx(kls[0.0], rel=1e-2)
    with pytest.raises(ConfigError, match="teacher_contrast"):
        DistillConfig(teacher_contrast=-1.0)


def test_a_frozen_teacher_is_scored_by_the_reference_weights(tiny_policy: Policy) -> None:
    """`frozen_teacher`: the teacher's prompt is scored by the reference (here the pretrained model),
    not by the live adapters the step trains; by default it is the live policy."""
    s = scored_lesson(tiny_policy, "Where is the key?", "The key is under the mat.", "mat")
    live, frozen = (float(reverse_kl(s.student, t, s.mask)) for t in (s.teacher, s.pretrained_teacher))
    assert distil_kl(tiny_policy, s.lesson) == pytest.approx(live, rel=1e-4)
    assert distil_kl(tiny_policy, s.lesson, frozen_teacher=True) == pytest.approx(frozen, rel=1e-4)
    assert live != pytest.approx(frozen, rel=1e-2)

"""`CorrectionNLL`, the NLL baseline of lessons: it imitates a lesson's given replies, and a lesson to
unlearn (the pretrained model its teacher) has no text to imitate."""

from __future__ import annotations

from dataclasses import replace

import torch

from lifelong.learn.sft import CorrectionNLL
from lifelong.loop.feedback import correction_completion
from lifelong.model.policy import Policy
from lifelong.types import Lesson, LessonTeacher


def test_correction_nll_imitates_given_replies_and_skips_lessons_to_unlearn(tiny_policy: Policy) -> None:
    tokenizer = tiny_policy.tokenizer
    question = tuple(tiny_policy.chat_start("What is the code?"))
    reply = correction_completion(tokenizer, "zebra", int(tokenizer.eos_token_id))
    params = [p for p in tiny_policy.model.parameters() if p.requires_grad]
    nll = CorrectionNLL(tiny_policy, torch.optim.AdamW(params, lr=1e-3))
    taught = Lesson(question, question, (reply,), protocol=False)

    skipped = nll.update([replace(taught, teacher=LessonTeacher.PRETRAINED)])
    assert not skipped.applied and skipped.reason == "no successful episode to imitate"
    assert nll.update([taught]).applied and nll.step == 1

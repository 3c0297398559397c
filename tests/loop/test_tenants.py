"""The learning core fed by a server's feedback, in process: ratings and corrections change a tenant's
adapter, the guard keeps what helps and rolls back what damages probes, every round consumes its
feedback, and one tenant's rounds never touch another's adapters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import FAST_LEARNING, SKY

from lifelong.errors import ConfigError
from lifelong.guard.detectors import ChangedAnswers
from lifelong.learn.logprobs import completion_log_softmax, reverse_kl
from lifelong.loop.feedback import experience_from_feedback
from lifelong.loop.tenants import (
    CorrectionRule,
    OperatorProbe,
    TenantLearner,
    TenantLearningConfig,
    ensure_initial_adapter,
    greedy_gives,
    reply_likelihood,
    reply_sample,
    run_id,
)
from lifelong.memory.store import ExperienceStore
from lifelong.model.adapters import adapter_state
from lifelong.model.loading import load_model
from lifelong.model.memory_layer import MemorySettings
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.types import AdapterStatus, FeedbackKind, Sample

THUMBS, CORRECTION = FeedbackKind.THUMBS, FeedbackKind.CORRECTION
FAST = FAST_LEARNING


def load_policy(folder: Path) -> Policy:
    model, tokenizer, name = load_model(str(folder))
    torch.manual_seed(0)
    return Policy(model, tokenizer, name=name, lora=LoraSettings(rank=4, alpha=8))


def serve_request(
    store: ExperienceStore, policy: Policy, rid: str, question: str, n: int = 1, tenant: str = "t"
) -> None:
    """A request as the server stores it: plain chat, sampled."""
    messages = [{"role": "user", "content": question}]
    prompt = policy.chat_ids(messages, protocol=False)
    gen = GenerationConfig(answer_tokens=4, temperature=1.0, protocol=False)
    completions = policy.chat([prompt] * n, gen, torch.Generator().manual_seed(len(rid)))
    store.add_request(rid, tenant, "m", {"messages": messages}, prompt, {"temperature": 1.0, "protocol": False})
    store.complete_request(rid, completions, 0)


def learner_for(
    tmp_path: Path, policy: Policy, config: TenantLearningConfig = FAST, probes: tuple = ()
) -> TenantLearner:
    store = ExperienceStore(tmp_path / "experience.sqlite")
    initial = ensure_initial_adapter(policy, tmp_path / "adapters")
    return TenantLearner(config, policy, store, tmp_path / "adapters", initial, probes)


def reply_logprob(learner: TenantLearner, rid: str, index: int) -> float:
    req = learner.store.request(rid)
    assert req is not None
    return reply_likelihood(learner.policy, [reply_sample(learner.policy, req.prompt_ids, req.choices[index].answer)])


def test_a_round_on_ratings_moves_the_adapter_towards_the_liked_reply(tmp_path: Path, serve_policy: Policy) -> None:
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    serve_request(store, serve_policy, "r1", "Pick a word.", n=2)
    store.add_feedback("r1", 0, "t", THUMBS, reward=1.0)
    store.add_feedback("r1", 1, "t", THUMBS, reward=0.0)
    before = adapter_state(serve_policy)
    gap_before = reply_logprob(learner, "r1", 0) - reply_logprob(learner, "r1", 1)

    record = learner.round("t", store.pending_feedback("t"))

    assert record.status == AdapterStatus.LIVE and record.version == 1, record.reason
    assert record.metrics["round/rated"] == 2.0 and "rated/loss/policy" in record.metrics
    assert record.path is not None and not Path(record.path).is_absolute()  # the store folder can move
    after = load_file(learner.folder / record.path / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the parameters actually changed
    gap_after = reply_logprob(learner, "r1", 0) - reply_logprob(learner, "r1", 1)
    assert gap_after > gap_before
    assert store.pending_feedback("t") == [] and store.live_versions()["t"][0].version == 1
    # the rated replies are episodes in the one store, under the tenant, before they were learned from
    episodes = store.episodes(run_id=run_id("t"), tenant="t")
    assert sorted(e.reward for e in episodes) == [0.0, 1.0] and {e.group for e in episodes} == {"request:r1"}
    assert (tmp_path / "adapters" / "t" / "guard_events.jsonl").parent.is_dir()


def test_a_lone_rating_meets_the_tenants_baseline(tmp_path: Path, serve_policy: Policy) -> None:
    learner = learner_for(tmp_path, serve_policy)
    serve_request(learner.store, serve_policy, "r1", "Say hi.")
    learner.store.add_feedback("r1", 0, "t", THUMBS, reward=1.0)
    record = learner.round("t", learner.store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE, record.reason  # 1.0 against the prior 0.5: a signal


def correct(store: ExperienceStore, policy: Policy, n: int, start: int = 0, answer: str = "blue") -> None:
    for i in range(start, start + n):
        serve_request(store, policy, f"r{i}", f"Name a primary color. ({i})")
        store.add_feedback(f"r{i}", 0, "t", CORRECTION, correction=answer)


def blue_likelihood(store: ExperienceStore, policy: Policy) -> float:
    """How likely the policy finds the correction "blue" as its reply to the first request."""
    req = store.request("r0")
    assert req is not None
    return reply_likelihood(policy, [reply_sample(policy, req.prompt_ids, "blue")])


def test_nll_corrections_make_the_corrected_reply_likelier_and_rounds_continue_from_live(
    tmp_path: Path, serve_policy: Policy
) -> None:
    learner = learner_for(tmp_path, serve_policy, replace(FAST, correction_rule=CorrectionRule.NLL))
    store = learner.store
    correct(store, serve_policy, 4)

    def blue() -> float:
        return blue_likelihood(store, serve_policy)

    before = blue()
    first = learner.round("t", store.pending_feedback("t"))
    assert first.status == AdapterStatus.LIVE, first.reason
    assert first.metrics["round/corrections"] == 4.0 and "correction/loss/nll" in first.metrics
    learned = blue()
    assert learned > before + 1.0
    correct(store, serve_policy, 1, start=9)
    second = learner.round("t", store.pending_feedback("t"))
    assert second.version == 2 and second.status == AdapterStatus.LIVE, second.reason
    assert blue() > learned  # it went on from version 1, not from scratch
    corrections = [e for e in store.episodes(tenant="t") if e.env == "serve:correction"]
    assert len(corrections) == 5 and all(e.turns[0].completion.answer == "blue" for e in corrections)


GREEDY = GenerationConfig(answer_tokens=4, temperature=0.0, protocol=False)


def test_greedy_gives_holds_for_the_greedy_reply_only(serve_policy: Policy) -> None:
    prompt = tuple(serve_policy.chat_ids([{"role": "user", "content": "Name a primary color."}], protocol=False))
    ids = serve_policy.chat([prompt], GREEDY)[0].token_ids
    greedy = Sample(prompt, ids, (0.0,) * len(ids), (1,) * len(ids), 1.0)
    other = replace(greedy, completion_ids=(*ids[:-1], (ids[-1] + 1) % 100))
    masked = replace(other, loss_mask=(*greedy.loss_mask[:-1], 0))  # the changed token is not a target
    assert greedy_gives(serve_policy, [greedy, other, masked]) == [True, False, True]


def test_a_round_learns_only_corrections_the_weights_do_not_already_give(tmp_path: Path, serve_policy: Policy) -> None:
    """A correction the live adapter already answers greedily, and a repeat of one correction in
    the same round, are stored but not learned again; a round left with nothing is no version."""
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    serve_request(store, serve_policy, "known", "Name a primary color.")
    req = store.request("known")
    assert req is not None
    already = serve_policy.chat([req.prompt_ids], GREEDY)[0].answer
    assert greedy_gives(serve_policy, [reply_sample(serve_policy, req.prompt_ids, already)]) == [True]
    store.add_feedback("known", 0, "t", CORRECTION, correction=already)
    before = adapter_state(serve_policy)
    idle = learner.round("t", store.pending_feedback("t"))
    assert idle.status == AdapterStatus.REJECTED and idle.reason == "every correction is already answered"
    assert idle.metrics["correction/already_answered"] == 1.0 and not store.pending_feedback("t")
    assert all(torch.equal(before[k], v) for k, v in adapter_state(serve_policy).items())

    store.add_feedback("known", 0, "t", CORRECTION, correction=already)
    correct(store, serve_policy, 1)
    store.add_feedback("r0", 0, "t", CORRECTION, correction="blue")  # the same correction again
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE, record.reason
    assert record.metrics["round/corrections"] == 3.0
    assert record.metrics["correction/repeats"] == 1.0 and record.metrics["correction/already_answered"] == 1.0
    assert record.metrics["correction/lessons"] == 1.0
    assert len([e for e in store.episodes(tenant="t") if e.env == "serve:correction"]) == 4  # all stored


def test_distilled_corrections_move_the_bare_prompt_towards_the_teacher_with_the_correction(
    tmp_path: Path, serve_policy: Policy
) -> None:
    """Self-distillation's own objective: on the corrected reply, the policy without the correction
    comes closer to the policy with it quoted (a random tiny teacher knows nothing to say, so the
    distance, not the answer's likelihood, is what can be checked here)."""
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    correct(store, serve_policy, 4)
    req = store.request("r0")
    assert req is not None
    reply = reply_sample(serve_policy, req.prompt_ids, "blue")
    teacher = replace(reply, prompt_ids=tuple(learner.prompt(req, "blue")))

    def distance() -> float:
        with torch.no_grad():
            student_logp, _, mask = completion_log_softmax(serve_policy.model, [reply], serve_policy.pad_id)
            teacher_logp, _, _ = completion_log_softmax(serve_policy.model, [teacher], serve_policy.pad_id)
        return float(reverse_kl(student_logp, teacher_logp, mask))

    before = distance()
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE, record.reason
    assert "correction/distill/kl" in record.metrics
    assert distance() < 0.9 * before
    # where the round's time went: the students' samples, the distillation, the gate's probe answers
    assert {"time/distill/sample_s", "time/distill_s", "time/probes/sample_s"} <= set(record.metrics)


def test_the_guard_rolls_back_a_round_that_damages_operator_probes(tmp_path: Path, knowing_model_dir: Path) -> None:
    policy = load_policy(knowing_model_dir)
    probes = tuple(OperatorProbe(SKY.format(i), "blue") for i in range(4))
    # NLL imitates the flipped answer (a tiny model is no teacher that reads a quoted correction);
    # drift and entropy budgets wide open, so that the answers' likelihood alone must catch it
    guard = replace(FAST.guard, kl_drift_budget=100.0, entropy_margin=100.0, answer_likelihood_budget=0.1)
    learner = learner_for(tmp_path, policy, replace(FAST, correction_rule=CorrectionRule.NLL, guard=guard), probes)
    store = learner.store
    for i in range(4):  # flipped feedback: "red" for the questions the probes answer "blue"
        serve_request(store, policy, f"r{i}", SKY.format(i))
        store.add_feedback(f"r{i}", 0, "t", CORRECTION, correction="red")
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.REJECTED and record.path is None
    assert "operator answers fell" in record.reason
    assert store.pending_feedback("t") == [] and "t" not in store.live_versions()  # consumed, nothing live
    events = (tmp_path / "adapters" / "t" / "guard_events.jsonl").read_text()
    assert '"answer_likelihood"' in events and '"rollback"' in events  # the guard's own evidence
    # the next round starts again from the good adapter, at a backed-off learning rate
    serve_request(store, policy, "r8", SKY.format(20))
    # (not "blue" alone, which this model already answers: a round would have nothing to learn)
    store.add_feedback("r8", 0, "t", CORRECTION, correction="blue, clearly")
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE and record.version == 2, record.reason


def test_the_guard_rolls_back_a_round_that_moves_general_behaviour(tmp_path: Path, knowing_model_dir: Path) -> None:
    """The pretrained model's own replies to the general probes, alone and after example turns,
    are a likelihood group of their own: a round that makes them unlikely is rolled back even
    with no operator probe, no held-out correction and the drift budgets wide open."""
    policy = load_policy(knowing_model_dir)
    guard = replace(FAST.guard, kl_drift_budget=100.0, entropy_margin=100.0, general_likelihood_budget=0.1)
    learner = learner_for(tmp_path, policy, replace(FAST, correction_rule=CorrectionRule.NLL, guard=guard))
    general = learner._general_samples()
    assert len(general) == 2 * sum(len(p.seeds) for p in learner.probes.values())  # alone and with 2 shots
    store = learner.store
    for i in range(4):
        serve_request(store, policy, f"r{i}", SKY.format(i))
        store.add_feedback(f"r{i}", 0, "t", CORRECTION, correction="red")
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.REJECTED and record.reason.startswith("general answers fell"), record.reason


@pytest.mark.parametrize("budget", [0.0, 1.0])
def test_a_round_that_changes_general_answers_is_held_to_the_changed_budget(
    tmp_path: Path, knowing_model_dir: Path, budget: float
) -> None:
    """The gate counts the general prompts (probes alone and after example turns) whose greedy first
    word differs from the pretrained model's: a round that changes any is rolled back at budget 0
    and kept at 1 (off), every other budget wide open, so that the count alone decides."""
    policy = load_policy(knowing_model_dir)
    guard = replace(FAST.guard, kl_drift_budget=100.0, entropy_margin=100.0, general_changed_budget=budget)
    # 8 steps of NLL on "red" change most of the general answers (all "blue" before; 14 of 16 when
    # written), not just the one or two that 4 steps change, so the outcome does not hang on a near-tie
    config = replace(FAST, steps_per_round=8, correction_rule=CorrectionRule.NLL, guard=guard)
    learner = learner_for(tmp_path, policy, config)
    asked = 2 * sum(len(p.seeds) for p in learner.probes.values())  # alone and with 2 shots
    assert learner.evaluate("t")[2] == ChangedAnswers(0, asked)  # the initial adapter is the pretrained model
    store = learner.store
    for i in range(4):
        serve_request(store, policy, f"r{i}", SKY.format(i))
        store.add_feedback(f"r{i}", 0, "t", CORRECTION, correction="red")
    record = learner.round("t", store.pending_feedback("t"))
    changed = int(record.metrics["general/changed_answers"])
    assert changed > 0 and record.metrics["general/changed"] == changed / asked
    assert 0 <= record.metrics["general/lost_answers"] <= changed
    if budget == 0.0:
        assert record.status == AdapterStatus.REJECTED and "t" not in store.live_versions()
        assert record.reason.startswith(f"{changed} of {asked} general answers changed"), record.reason
        events = (tmp_path / "adapters" / "t" / "guard_events.jsonl").read_text()
        assert '"general_changed"' in events and '"rollback"' in events
    else:
        assert record.status == AdapterStatus.LIVE, record.reason


def test_lost_answers_are_read_against_each_prompts_own_probe(tmp_path: Path, serve_policy: Policy) -> None:
    """The gate scores every general prompt (a probe alone, then the same probes after example
    turns, in the same order) against its own item: the expected answers, in that order, are all
    right, and shifted by one they are not."""
    learner = learner_for(tmp_path, serve_policy, FAST)
    expected = []
    for task, seed in learner._general_items:
        _, info = task.make().reset(seed=seed)
        expected.append(str(info["answer"]))
    assert len(expected) == 2 * len(learner._probe_prompts) > 2  # alone, then after example turns
    assert expected[: len(expected) // 2] == expected[len(expected) // 2 :]
    assert all(learner._right(expected))
    assert not all(learner._right(expected[1:] + expected[:1]))
    pretrained = learner._pretrained_replies()
    assert len(pretrained.right) == len(pretrained.first_words) == len(expected)


def test_non_finite_weights_are_rolled_back_by_the_guard(tmp_path: Path, serve_policy: Policy) -> None:
    huge = replace(FAST, grpo=replace(FAST.grpo, learning_rate=float("inf")))
    learner = learner_for(tmp_path, serve_policy, huge)
    serve_request(learner.store, serve_policy, "r1", "Pick a word.", n=2)
    learner.store.add_feedback("r1", 0, "t", THUMBS, reward=1.0)
    learner.store.add_feedback("r1", 1, "t", THUMBS, reward=0.0)
    record = learner.round("t", learner.store.pending_feedback("t"))
    assert record.status == AdapterStatus.REJECTED and "non-finite" in record.reason


def test_tenants_learn_apart(tmp_path: Path, serve_policy: Policy) -> None:
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    serve_request(store, serve_policy, "a1", "Pick a word.", n=2, tenant="alice")
    store.add_feedback("a1", 0, "alice", THUMBS, reward=1.0)
    store.add_feedback("a1", 1, "alice", THUMBS, reward=0.0)
    assert learner.round("alice", store.pending_feedback("alice")).status == AdapterStatus.LIVE
    alice = load_file(learner.folder / (store.live_versions()["alice"][0].path or "") / "adapter_model.safetensors")
    serve_request(store, serve_policy, "b1", "Pick a word.", n=2, tenant="bob")
    store.add_feedback("b1", 0, "bob", THUMBS, reward=0.0)
    store.add_feedback("b1", 1, "bob", THUMBS, reward=1.0)
    bob = learner.round("bob", store.pending_feedback("bob"))
    assert bob.status == AdapterStatus.LIVE and bob.version == 1  # bob's own versions, from his own start
    again = load_file(learner.folder / (store.live_versions()["alice"][0].path or "") / "adapter_model.safetensors")
    assert all(torch.equal(alice[k], again[k]) for k in alice)  # bob's round left alice's adapter alone
    assert not any(e.group == "request:a1" for e in store.episodes(tenant="bob"))


def test_a_round_that_raises_is_recorded_and_consumes_its_feedback(tmp_path: Path, serve_policy: Policy) -> None:
    learner = learner_for(tmp_path, serve_policy)
    serve_request(learner.store, serve_policy, "r1", "Hi")
    learner.store.add_feedback("r1", 0, "t", THUMBS, reward=1.0)
    record = learner.fail("t", learner.store.pending_feedback("t"), "error: boom")
    assert record.status == AdapterStatus.REJECTED and learner.store.pending_feedback("t") == []


def test_a_round_cut_short_before_its_record_is_redone_once(
    tmp_path: Path, serve_policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the round's checkpoint but before the store records it: the redo neither fails
    on the episodes already stored nor learns twice (the unrecorded checkpoint is dropped)."""
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    serve_request(store, serve_policy, "r1", "Pick a word.", n=2)
    store.add_feedback("r1", 0, "t", THUMBS, reward=1.0)
    store.add_feedback("r1", 1, "t", THUMBS, reward=0.0)

    def crash(*args: object) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(store, "record_adapter", crash)
        with pytest.raises(RuntimeError, match="killed"):
            learner.round("t", store.pending_feedback("t"))
    crashed = load_file(tmp_path / "adapters" / "t" / "step-000001" / "adapter_model.safetensors")
    assert len(store.pending_feedback("t")) == 2 and len(store.episodes(tenant="t")) == 2

    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE and record.version == 1, record.reason
    assert len(store.episodes(tenant="t")) == 2  # stored once
    redone = load_file(learner.folder / (record.path or "") / "adapter_model.safetensors")
    assert all(torch.equal(crashed[k], redone[k]) for k in crashed)  # learned once, from the same start


def test_the_learner_sees_the_conversation_never_the_recalled_notes(tmp_path: Path, serve_policy: Policy) -> None:
    """A request answered with memory in context is stored with the prompt it was answered from;
    its correction is learned on the conversation alone (the student learns without notes), and
    the teacher gets the correction quoted, not the notes."""
    learner = learner_for(tmp_path, serve_policy)
    store = learner.store
    messages = [{"role": "user", "content": "Name a color."}]
    notes = [{"role": "system", "content": 'Notes (quoted data): "Q: Name a color. A: blue"'}, *messages]
    answered = serve_policy.chat_ids(notes, protocol=False)  # what the server answered from
    gen = GenerationConfig(answer_tokens=4, temperature=1.0, protocol=False)
    store.add_request("r1", "t", "m", {"messages": messages}, answered, {"protocol": False})
    store.complete_request("r1", serve_policy.chat([answered], gen, torch.Generator().manual_seed(0)), 0)
    store.add_feedback("r1", 0, "t", CORRECTION, correction="green")
    req = store.request("r1")
    assert req is not None and list(req.prompt_ids) == answered
    tokenizer = serve_policy.tokenizer
    items = store.pending_feedback("t")
    experience = experience_from_feedback(store, "t", items, tokenizer, int(tokenizer.eos_token_id), learner.prompt)
    bare = serve_policy.chat_ids(messages, protocol=False)
    (lesson,) = experience.lessons
    assert list(lesson.student_prompt) == bare and list(experience.corrections[0].turns[0].prompt_ids) == bare
    teacher = tokenizer.decode(lesson.teacher_prompt)
    assert "green" in teacher and "Notes (quoted data)" not in teacher


def test_a_learning_config_from_a_file_keeps_the_servers_defaults_for_what_it_leaves_out() -> None:
    """A config file that sets one field of a part gets the server's settings for the rest (its
    small GRPO group, the warmed-up rate, the guard trusting its probes), not the classes' defaults."""
    default = TenantLearningConfig()
    loaded = TenantLearningConfig.from_dict({"grpo": {"kl_coef": 0.05}, "guard": {"general_lost_budget": 0.0}})
    assert loaded.grpo == replace(default.grpo, kl_coef=0.05) and loaded.grpo.group_size == 2
    assert loaded.distill == default.distill and loaded.distill.warmup_steps == 10
    assert loaded.guard == replace(default.guard, general_lost_budget=0.0) and loaded.guard.confirm_items == 0
    assert TenantLearningConfig.from_dict({}) == default


def test_a_learning_config_with_an_unknown_setting_says_which_and_what_exists() -> None:
    with pytest.raises(ConfigError, match="consolidate_lessons_per_step") as err:
        TenantLearningConfig.from_dict({"consolidate_lessons_per_step": 16, "steps_per_round": 2})
    assert "consolidate_paraphrases" in str(err.value)  # the fix lists the settings there are


def test_the_memory_unit_learns_corrections_per_tenant_as_sparse_slots(tmp_path: Path, serve_model_dir: Path) -> None:
    model, tokenizer, name = load_model(str(serve_model_dir))
    small = MemorySettings(n_keys=32, heads=2, topk=8, key_dim=16, layers=(-1,), train_slots=64)
    policy = Policy(model, tokenizer, name=name, unit="memory", memory=small)
    learner = learner_for(tmp_path, policy, replace(FAST, correction_rule=CorrectionRule.NLL))
    store = learner.store
    correct(store, policy, 4)
    before = blue_likelihood(store, policy)
    record = learner.round("t", store.pending_feedback("t"))
    assert record.status == AdapterStatus.LIVE, record.reason
    assert blue_likelihood(store, policy) > before + 1.0
    saved = load_file(learner.folder / (store.live_versions()["t"][0].path or "") / "adapter_model.safetensors")
    assert 0 < saved["memory.0.rows"].numel() <= FAST.steps_per_round * small.train_slots
    assert learner.initial["memory.0.rows"].numel() == 0  # every other tenant still reads nothing learnt

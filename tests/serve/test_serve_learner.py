"""The serving learner and its gate, in process: ratings and corrections change the adapter, the
gate keeps what helps and refuses what damages probes, and every round consumes its feedback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lifelong.model.loading import load_model
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.serve import Candidate, GateConfig, LearnerConfig, Probe, ProbeGate, ServeConfig, ServeStore
from lifelong.serve.adapters import adapter_state, ensure_initial_adapter, read_adapter
from lifelong.serve.gate import ProbeGroup, answer_logprob, answer_sample
from lifelong.serve.learner import ServeLearner
from tests.serve.conftest import LEARNING, SKY


def serve_request(store: ServeStore, policy: Policy, rid: str, question: str, n: int = 1, tenant: str = "t") -> None:
    prompt = policy.start(question)
    gen = GenerationConfig("none", answer_tokens=4, temperature=1.0)
    completions = policy.respond([prompt] * n, gen, torch.Generator().manual_seed(len(rid)))
    store.add_request(rid, tenant, "m", {}, prompt, {"temperature": 1.0})
    store.complete_request(rid, completions, 0)


def load_policy(folder: Path) -> Policy:
    model, tokenizer, name = load_model(str(folder))
    torch.manual_seed(0)
    return Policy(model, tokenizer, name=name, lora=LoraSettings(rank=4, alpha=8))


def learner_for(config: ServeConfig, policy: Policy, probes: tuple[Probe, ...] = ()) -> ServeLearner:
    store = ServeStore(config.store / "serve.sqlite")
    return ServeLearner(config, policy, store, ProbeGate(config.gate), probes)


def test_a_round_on_ratings_moves_the_adapter_towards_the_liked_reply(
    serve_config: ServeConfig, serve_policy: Policy
) -> None:
    config = replace(serve_config, learner=replace(LEARNING, steps_per_round=3, learning_rate=3e-3))
    learner = learner_for(config, serve_policy)
    store = learner.store
    serve_request(store, serve_policy, "r1", "Pick a word.", n=2)
    store.add_feedback("r1", 0, "t", "thumbs", reward=1.0)
    store.add_feedback("r1", 1, "t", "thumbs", reward=0.0)
    req = store.request("r1")
    assert req is not None
    liked, disliked = (answer_sample(serve_policy, req.prompt_ids, c.answer) for c in req.choices)
    before = adapter_state(serve_policy)
    gap_before = answer_logprob(serve_policy, [liked]) - answer_logprob(serve_policy, [disliked])

    record = learner.round("t")

    assert record is not None and record.status == "live" and record.version == 1
    assert record.metrics["round/rated"] == 2.0 and "pg/loss/policy" in record.metrics
    after = read_adapter(Path(record.path or ""))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the parameters actually changed
    gap_after = answer_logprob(serve_policy, [liked]) - answer_logprob(serve_policy, [disliked])
    assert gap_after > gap_before
    assert store.pending_feedback("t") == [] and store.live_versions()["t"][0].version == 1
    assert learner.round("t") is None  # nothing left to learn from


def test_corrections_are_distilled_as_answers_and_the_next_round_continues_from_live(
    serve_config: ServeConfig, serve_policy: Policy
) -> None:
    learner = learner_for(replace(serve_config, learner=LEARNING), serve_policy)
    store = learner.store
    for i in range(4):
        serve_request(store, serve_policy, f"r{i}", f"Name a primary color. ({i})")
        store.add_feedback(f"r{i}", 0, "t", "correction", correction="blue")
    first = learner.round("t")
    assert first is not None and first.status == "live"
    assert first.metrics["distill/logprob_after"] > first.metrics["distill/logprob_before"] + 3.0
    serve_request(store, serve_policy, "r9", "Name a primary color. (9)")
    store.add_feedback("r9", 0, "t", "correction", correction="blue")
    second = learner.round("t")
    assert second is not None and second.version == 2
    # it started from version 1, not from scratch: the target was already likely before this round
    assert second.metrics["distill/logprob_before"] > first.metrics["distill/logprob_before"] + 3.0


def test_the_gate_refuses_a_round_that_damages_operator_probes(
    serve_config: ServeConfig, knowing_model_dir: Path
) -> None:
    policy = load_policy(knowing_model_dir)
    probes = tuple(Probe(SKY.format(i), "blue") for i in range(4))
    config = replace(serve_config, model=str(knowing_model_dir), learner=LEARNING)
    learner = learner_for(config, policy, probes)
    store = learner.store
    for i in range(4):  # flipped feedback: "red" for the questions the probes answer "blue"
        serve_request(store, policy, f"r{i}", SKY.format(10 + i))
        store.add_feedback(f"r{i}", 0, "t", "correction", correction="red")
    record = learner.round("t")
    assert record is not None and record.status == "rejected" and record.path is None
    assert "operator probes fell" in record.reason
    cand, base = record.metrics["probe/operator/candidate"], record.metrics["probe/operator/base"]
    assert base > -1.0 and cand < base - serve_config.gate.probe_budget  # it knew; the round would break it
    assert store.pending_feedback("t") == [] and "t" not in store.live_versions()  # consumed, nothing live
    # the next round starts again from the live adapter (version 0), not from the refused one
    serve_request(store, policy, "r8", SKY.format(20))
    store.add_feedback("r8", 0, "t", "correction", correction="blue")
    record = learner.round("t")
    assert record is not None and record.status == "live" and record.version == 2
    assert record.metrics["probe/operator/live"] == base


def test_the_gate_refuses_non_finite_weights(serve_config: ServeConfig, serve_policy: Policy) -> None:
    base = ensure_initial_adapter(serve_policy, serve_config.store)
    broken = {k: v.clone() for k, v in base.items()}
    next(iter(broken.values()))[0, 0] = float("nan")
    group = ProbeGroup("operator", (answer_sample(serve_policy, serve_policy.start("Hi"), "hello", end=False),))
    gate = ProbeGate(GateConfig(probe_budget=0.3))
    decision = gate.review(serve_policy, Candidate("t", 1, broken, base, 0, base, (group,)))
    assert not decision.accept and "non-finite" in decision.reason
    same = gate.review(serve_policy, Candidate("t", 1, base, base, 0, base, (group,)))
    assert same.accept and same.metrics["probe/operator/candidate"] == same.metrics["probe/operator/base"]


def test_a_round_that_raises_is_recorded_and_consumes_its_feedback(
    serve_config: ServeConfig, serve_policy: Policy
) -> None:
    learner = learner_for(replace(serve_config, learner=LearnerConfig(min_feedback=1)), serve_policy)
    serve_request(learner.store, serve_policy, "r1", "Hi")
    learner.store.add_feedback("r1", 0, "t", "thumbs", reward=1.0)
    record = learner.fail("t", "error: boom")
    assert record is not None and record.status == "rejected" and learner.store.pending_feedback("t") == []

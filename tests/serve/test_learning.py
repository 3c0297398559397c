"""Learning from feedback through a live server (loopback, official openai client, worker process):
a round of corrections visibly improves held-out answers, one tenant's feedback never changes what
another tenant's model answers, and flipped feedback is rolled back by the guard.

Corrections are learned by plain NLL here (`CorrectionRule.NLL`): self-distillation needs a teacher
that reads the quoted correction, and a random tiny model reads nothing (tests/loop/test_tenants.py
checks what distillation does on it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from lifelong.loop.tenants import CorrectionRule, first_word
from lifelong.memory.recall import RecallConfig
from lifelong.serve import ServeConfig
from tests.conftest import FAST_LEARNING, SKY
from tests.serve.conftest import LEARNING, ask, client, http, write_probes

# One round's learning for tiny models: NLL on corrections; the guard's drift and entropy budgets
# wide enough for the large steps such tests need, so its verdicts are those under test. No anchor:
# on a random tiny model it holds back as much as the corrections teach, and whether a round then
# reaches every held-out prompt depends on the LoRA initialisation (the test order).
NLL_LEARNING = replace(
    FAST_LEARNING,
    steps_per_round=10,
    correction_rule=CorrectionRule.NLL,
    distill=replace(FAST_LEARNING.distill, anchor_coef=0.0),
    guard=replace(FAST_LEARNING.guard, kl_drift_budget=100.0, entropy_margin=100.0, answer_likelihood_budget=0.3),
)

# These tests measure what the weights learnt. Memory would put a tenant's earlier corrections into
# its prompts (tests/serve/test_memory_api.py), changing its answers by design, so it is off here.
WEIGHTS_ONLY = RecallConfig(enabled=False)

TRAIN = [f"Name a primary color. (item {i})" for i in range(8)]
HELD_OUT = [f"Name a primary color. (item {i})" for i in range(100, 106)]


def adapters(url: str) -> list[dict[str, Any]]:
    """Every tenant's adapter versions (an operator's view)."""
    return list(http("GET", f"{url}/adapters", tenant="ops").json()["data"])


def wait_for_rounds(url: str, tenants: dict[str, int], timeout: float = 180.0) -> list[dict[str, Any]]:
    """Wait until each tenant has at least this many recorded rounds (kept or refused)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = adapters(url)
        if all(sum(r["tenant"] == t for r in records) >= n for t, n in tenants.items()):
            return records
        time.sleep(0.2)
    raise AssertionError(f"the learner did not finish rounds for {tenants} in {timeout}s: {adapters(url)}")


def version_of(c: openai.OpenAI) -> int:
    """The live adapter version /v1/models reports for the client's tenant."""
    return int((c.models.list().data[0].model_extra or {})["adapter_version"])


def wait_for_version(c: openai.OpenAI, version: int, timeout: float = 120.0) -> None:
    """Wait until the server has hot-loaded this adapter version for the client's tenant."""
    deadline = time.time() + timeout
    while version_of(c) < version:
        assert time.time() < deadline, "the server did not load the new adapter version"
        time.sleep(0.1)


def correct(c: openai.OpenAI, model: str, question: str, answer: str) -> None:
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], max_tokens=4)
    c.post("/feedback", body={"completion_id": r.id, "correction": answer}, cast_to=object)


def sampled(c: openai.OpenAI, model: str, questions: list[str]) -> list[str]:
    """Answers sampled at temperature 1 with fixed seeds: any change of weights shows."""
    return [ask(c, model, q, temperature=1.0, seed=7, max_tokens=6) for q in questions]


@dataclass(frozen=True)
class Round:
    before: dict[str, list[str]]
    after: dict[str, list[str]]
    versions: dict[str, int]
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def feedback_round(
    tmp_path_factory: pytest.TempPathFactory, serve_model_dir: Path, keys_file: Path, model_id: str
) -> Iterator[Round]:
    """alice corrects 8 answers to "blue"; bob and carol send nothing. Answers before and after."""
    from contextlib import ExitStack

    from lifelong.model.policy import LoraSettings
    from lifelong.serve import BackgroundServer, Server

    tmp = tmp_path_factory.mktemp("round")
    config = ServeConfig(
        store=tmp / "serve",
        model=str(serve_model_dir),
        keys_file=keys_file,
        threads=1,
        probes_file=write_probes(tmp / "probes.jsonl", []),
        lora=LoraSettings(rank=4, alpha=8),
        learner=replace(LEARNING, min_feedback=7),  # one round, once all of alice's corrections are in
        learning=NLL_LEARNING,
        memory=WEIGHTS_ONLY,
    )
    with ExitStack() as stack:
        # The initial adapter (LoRA's random B=0/A init) is drawn from the global generator: seed it,
        # so that what one round reaches does not depend on which tests ran before in this process.
        torch.manual_seed(0)
        server = Server(config)
        stack.callback(server.close)
        url = stack.enter_context(BackgroundServer(server))
        a, b = client(url, "alice"), client(url, "bob")
        before = {
            "alice": [ask(a, model_id, q) for q in HELD_OUT],
            "bob": [ask(b, model_id, q) for q in HELD_OUT],
            "bob_sampled": sampled(b, model_id, HELD_OUT),
        }
        for q in TRAIN:
            correct(a, model_id, q, "blue")
        records = wait_for_rounds(url, {"alice": 1})
        wait_for_version(a, 1)
        after = {
            "alice": [ask(a, model_id, q) for q in HELD_OUT],
            "bob": [ask(b, model_id, q) for q in HELD_OUT],
            "bob_sampled": sampled(b, model_id, HELD_OUT),
        }
        versions = {t: version_of(client(url, t)) for t in ("alice", "bob")}
        yield Round(before, after, versions, records)


def test_a_round_of_corrections_improves_held_out_answers(feedback_round: Round) -> None:
    r = feedback_round
    assert r.before["alice"].count("blue") == 0  # the untrained model never says it
    assert r.after["alice"].count("blue") >= len(HELD_OUT) - 1  # prompts it was never corrected on
    (record,) = [x for x in r.records if x["tenant"] == "alice"]
    assert record["status"] == "live" and r.versions["alice"] == record["version"] == 1
    assert record["metrics"]["round/corrections"] == 7  # the 5th correction was held out as a probe
    assert "likelihood/holdout" in record["metrics"]  # the guard watched the held-out correction


def test_one_tenants_feedback_never_changes_another_tenants_answers(feedback_round: Round) -> None:
    r = feedback_round
    assert r.after["bob"] == r.before["bob"]
    assert r.after["bob_sampled"] == r.before["bob_sampled"]  # not even the sampled tokens moved
    assert r.versions["bob"] == 0 and all(x["tenant"] == "alice" for x in r.records)


def test_flipped_feedback_is_refused_by_the_gate_and_harms_no_other_tenant(
    serve_config: ServeConfig, knowing_model_dir: Path, start_server: Callable[..., str], tmp_path: Path
) -> None:
    held_out = [SKY.format(i) for i in range(6)]
    model = knowing_model_dir.name
    url = start_server(
        serve_config,
        model=str(knowing_model_dir),
        probes_file=write_probes(tmp_path / "probes.jsonl", [(SKY.format(300 + i), "blue") for i in range(6)]),
        learner=replace(LEARNING, min_feedback=4),
        learning=NLL_LEARNING,
        memory=WEIGHTS_ONLY,
    )
    alice, bob, carol = (client(url, t) for t in ("alice", "bob", "carol"))
    before = {t: [ask(c, model, q) for q in held_out] for t, c in (("alice", alice), ("bob", bob), ("carol", carol))}
    assert all(a == "blue" for answers in before.values() for a in answers)  # the base model knows
    carol_sampled = sampled(carol, model, held_out)

    for i in range(8):  # bob flips: "red" for the questions the operator's probes answer "blue"
        correct(bob, model, SKY.format(300 + i % 6), "red")
    for i in range(4):  # alice agrees with the probes (in words the model does not already give)
        correct(alice, model, SKY.format(20 + i), "blue, clearly")
    records = wait_for_rounds(url, {"bob": 1, "alice": 1})
    wait_for_version(alice, 1)

    bob_rounds = [x for x in records if x["tenant"] == "bob"]
    assert all(x["status"] == "rejected" and "operator answers fell" in x["reason"] for x in bob_rounds)
    # within bob's tenant the guard bounds the damage: his live model is still the one that knew
    assert version_of(bob) == 0
    assert [ask(bob, model, q) for q in held_out] == before["bob"]
    # and no other tenant is touched: carol's answers are the same tokens, alice's are still right
    assert [ask(carol, model, q) for q in held_out] == before["carol"]
    assert sampled(carol, model, held_out) == carol_sampled
    assert [first_word(ask(alice, model, q)) for q in held_out] == before["alice"]

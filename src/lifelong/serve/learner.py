"""The serving learner: turns users' feedback into adapter versions, in its own low-priority process.

It has its own copy of the model, so answering never waits for it. Each round, for one tenant:
  1. restore the tenant's live adapter (and its optimizer state) from disk;
  2. rated replies -> policy gradient (learn/grpo.py): advantage = reward minus the mean of the
     other ratings of the same request (a group, when a request had n > 1 rated choices) or minus
     the tenant's running baseline; importance ratios against the sampler's own log-probs;
  3. corrections -> self-distillation: the corrected answer is the target given the same prompt,
     after the answer marker; the chain of thought is never a target, and the served reasoning is
     not kept as context, so the model is never taught to answer against its own reasoning;
  4. the gate (gate.py) reviews the candidate; a kept one is written atomically as a new version
     (CheckpointRing) and recorded with the feedback it consumed in one store transaction; a
     rejected one is recorded too, and the next round starts again from the live adapter.
The server hot-loads recorded live versions between requests. Rewards come only from users'
ratings: nothing here reads the chain of thought.

Run as `python -m lifelong.serve.learner <store folder>`; it exits when its parent (the server) does.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import CheckpointError, ConfigError
from lifelong.guard.checkpoints import Checkpoint, CheckpointRing
from lifelong.learn.grpo import GRPOConfig, GRPOLearner
from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.policy import Policy
from lifelong.serve.adapters import adapter_folder, adapter_state, ensure_initial_adapter, load_adapter
from lifelong.serve.config import ServeConfig
from lifelong.serve.gate import (
    AdapterGate,
    Candidate,
    Probe,
    ProbeGroup,
    answer_logprob,
    answer_sample,
    load_probes,
)
from lifelong.serve.store import AdapterRecord, Feedback, ServedRequest, ServeStore
from lifelong.types import Batch, Sample


def make_gate(config: ServeConfig) -> AdapterGate:
    module, _, name = config.learner.gate.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import gate {config.learner.gate!r} ({exc})", "name a 'module:factory'") from exc
    gate: AdapterGate = factory(config.gate)
    return gate


class ServeLearner:
    """One learning round at a time, for the tenant whose feedback is due."""

    def __init__(
        self,
        config: ServeConfig,
        policy: Policy,
        store: ServeStore,
        gate: AdapterGate,
        probes: Sequence[Probe] = (),
    ) -> None:
        self.config = config
        self.cfg = config.learner
        self.policy = policy
        self.store = store
        self.gate = gate
        self.probes = tuple(probes)
        self.base = ensure_initial_adapter(policy, config.store)
        self.grpo = GRPOConfig(
            learning_rate=self.cfg.learning_rate, group_size=2, kl_coef=self.cfg.kl_coef, temperature=1.0
        )
        self._operator_samples: dict[str, tuple[Sample, ...]] = {}

    def ring(self, tenant: str) -> CheckpointRing:
        return CheckpointRing(adapter_folder(self.config.store, tenant), keep=self.cfg.checkpoints_kept)

    # ---- scheduling -----------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[str]:
        """Tenants with enough pending feedback, or feedback that has waited long enough."""
        now = time.time() if now is None else now
        return [
            tenant
            for tenant, (n, oldest) in sorted(self.store.pending_summary().items())
            if n >= self.cfg.min_feedback or now - oldest >= self.cfg.max_wait_s
        ]

    # ---- one round ------------------------------------------------------------------------------
    def round(self, tenant: str) -> AdapterRecord | None:
        items = self.store.pending_feedback(tenant, limit=self.cfg.max_items_per_round)
        if not items:
            return None
        t0 = time.time()
        live_version, live = self._restore_live(tenant)
        learner = GRPOLearner(self.policy, self.grpo)
        if live_version > 0:
            self._restore_optimizer(tenant, live_version, learner.optimizer)
        requests = {r.id: r for r in (self.store.request(i) for i in {f.request_id for f in items}) if r is not None}
        rated = self._rated_samples(tenant, items, requests)
        targets = [
            answer_sample(self.policy, requests[f.request_id].prompt_ids, f.correction)
            for f in items
            if f.kind == "correction" and f.correction and f.request_id in requests
        ]
        metrics: dict[str, float] = {"round/items": float(len(items)), "round/rated": float(len(rated))}
        metrics["round/corrections"] = float(len(targets))
        if not rated and not targets:  # every rating equalled its baseline: nothing to learn, nothing to swap
            return self.fail(tenant, "no learning signal: every rating equalled its baseline", metrics)
        if targets:
            metrics["distill/logprob_before"] = answer_logprob(self.policy, targets)
        for _ in range(self.cfg.steps_per_round):
            if rated:
                report = learner.update(Batch(tuple(rated), len(rated), 0, 0.0, 0.0))
                metrics |= {f"pg/{k}": v for k, v in report.metrics.items() if not k.startswith(("batch/", "reward/"))}
            if targets:
                metrics["distill/nll"] = self._distill_step(learner.optimizer, targets)
        if targets:
            metrics["distill/logprob_after"] = answer_logprob(self.policy, targets)
        candidate = adapter_state(self.policy)
        version = self.store.next_version(tenant)
        decision = self.gate.review(
            self.policy,
            Candidate(tenant, version, candidate, live, live_version, self.base, self._probe_groups(tenant), metrics),
        )
        metrics |= decision.metrics
        metrics["time/round_s"] = time.time() - t0
        consumed = [f.id for f in items]
        if decision.accept:
            load_adapter(self.policy, candidate)  # the gate may have left another adapter loaded
            state = {"tenant": tenant, "version": version, "feedback": consumed, "good": True}
            path = self.ring(tenant).save(self.policy.model, learner.optimizer, version, state)  # type: ignore[arg-type]
            record = AdapterRecord(tenant, version, "live", str(path), time.time(), decision.reason, metrics)
        else:
            record = AdapterRecord(tenant, version, "rejected", None, time.time(), decision.reason, metrics)
        self.store.record_adapter(record, consumed)
        return record

    def fail(self, tenant: str, reason: str, metrics: dict[str, float] | None = None) -> AdapterRecord | None:
        """Record a round that could not run (it raised, or had no signal) as rejected and consume
        its feedback, so that one poisonous item cannot wedge the learner in a loop."""
        items = self.store.pending_feedback(tenant, limit=self.cfg.max_items_per_round)
        if not items:
            return None
        version = self.store.next_version(tenant)
        record = AdapterRecord(tenant, version, "rejected", None, time.time(), reason, metrics or {})
        self.store.record_adapter(record, [f.id for f in items])
        return record

    def _restore_live(self, tenant: str) -> tuple[int, dict[str, torch.Tensor]]:
        """Load the tenant's newest live version that verifies (else version 0) into the model."""
        for rec in self.store.live_versions().get(tenant, []):
            if rec.path is None:
                continue
            try:
                self.ring(tenant).restore(Checkpoint(Path(rec.path), rec.version, {}), self.policy.model, None)  # type: ignore[arg-type]
            except CheckpointError:
                continue  # pruned or damaged: fall back to the previous live version
            return rec.version, adapter_state(self.policy)
        load_adapter(self.policy, self.base)
        return 0, dict(self.base)

    def _restore_optimizer(self, tenant: str, version: int, optimizer: torch.optim.Optimizer) -> None:
        path = adapter_folder(self.config.store, tenant) / f"step-{version:06d}" / "optimizer.pt"
        if path.is_file():
            optimizer.load_state_dict(torch.load(path, weights_only=True))

    def _rated_samples(
        self, tenant: str, items: Sequence[Feedback], requests: dict[str, ServedRequest]
    ) -> list[Sample]:
        """Rated choices as policy-gradient samples with their advantages."""
        latest: dict[tuple[str, int], float] = {}
        for f in items:  # a later rating of the same choice replaces an earlier one
            if f.reward is not None and f.request_id in requests:
                latest[(f.request_id, f.index)] = f.reward
        by_request: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for (rid, idx), r in latest.items():
            by_request[rid].append((idx, r))
        baseline = self.store.rating_baseline(tenant, self.cfg.baseline_window)
        samples: list[Sample] = []
        temperatures: list[float] = []
        for rid, rated in by_request.items():
            req = requests[rid]
            # n > 1 rated choices of one prompt form a GRPO group; a lone rating meets the baseline
            mean = sum(r for _, r in rated) / len(rated) if len(rated) > 1 else baseline
            for idx, r in rated:
                adv = max(-1.0, min(1.0, r - mean))
                if abs(adv) < 1e-6 or idx >= len(req.choices):
                    continue
                c = req.choices[idx]
                samples.append(Sample(req.prompt_ids, c.token_ids, c.logprobs, c.loss_mask, adv))
                temperatures.append(float(req.generation.get("temperature", 1.0)))
        return self._behaviour_logprobs(samples, temperatures)

    def _behaviour_logprobs(self, samples: list[Sample], temperatures: Sequence[float]) -> list[Sample]:
        """The sampler recorded log-probs at its temperature; at 0 (greedy records T=1) or 1 they are
        what the learner's importance ratio needs. At other temperatures, score the reply under the
        live adapter at T=1 instead (ratio 1: on-policy as of the live version)."""
        odd = [i for i, t in enumerate(temperatures) if t not in (0.0, 1.0)]
        if not odd:
            return samples
        with torch.no_grad():
            logp, _, _ = completion_logprobs(self.policy.model, [samples[i] for i in odd], self.policy.pad_id)
        out = list(samples)
        for row, i in enumerate(odd):
            s = samples[i]
            n = len(s.completion_ids)
            fixed = tuple(float(x) if m else 0.0 for x, m in zip(logp[row, :n].tolist(), s.loss_mask, strict=True))
            out[i] = Sample(s.prompt_ids, s.completion_ids, fixed, s.loss_mask, s.advantage)
        return out

    def _distill_step(self, optimizer: torch.optim.Optimizer, targets: Sequence[Sample]) -> float:
        """One step of token-mean negative log-likelihood on the corrected answers."""
        model = self.policy.model
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total = sum(sum(s.loss_mask) for s in targets)
        nll = 0.0
        for i in range(0, len(targets), self.grpo.micro_batch):
            chunk = targets[i : i + self.grpo.micro_batch]
            logp, _, mask = completion_logprobs(model, chunk, self.policy.pad_id)  # (B, C)
            loss = -(logp * mask).sum() / total
            loss.backward()
            nll += float(loss.detach())
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.grpo.max_grad_norm))
        if math.isfinite(norm):  # skip a non-finite step; the gate would refuse its weights anyway
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        return nll

    def _probe_groups(self, tenant: str) -> tuple[ProbeGroup, ...]:
        if tenant not in self._operator_samples:
            mine = [p for p in self.probes if p.tenant in (None, tenant)]
            self._operator_samples[tenant] = tuple(
                answer_sample(self.policy, self.policy.start(p.prompt), p.answer, end=False) for p in mine
            )
        holdout = []
        for f in self.store.holdout_feedback(tenant):
            req = self.store.request(f.request_id)
            if req is not None and f.correction:
                holdout.append(answer_sample(self.policy, req.prompt_ids, f.correction, end=False))
        return (ProbeGroup("operator", self._operator_samples[tenant]), ProbeGroup("holdout", tuple(holdout)))


# ---- the process -----------------------------------------------------------------------------------
def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"time": time.time(), **record}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the background learner of `lifelong serve`")
    parser.add_argument("store", type=Path, help="the serving folder (holds serve.json)")
    args = parser.parse_args(argv)
    config = ServeConfig.from_dict(json.loads((args.store / "serve.json").read_text()))
    parent = os.getppid()
    # Answers first: the lowest CPU priority and few threads, so requests barely notice learning.
    os.nice(config.learner.nice)
    torch.set_num_threads(config.learner.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = config.store / "learner.jsonl"
    # One learner per store: a learner orphaned by a kill -9 of its server must not race a new one.
    lock = open(config.store / "learner.lock", "w")  # noqa: SIM115 - held for the process lifetime
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if os.getppid() != parent:
                return 0
            time.sleep(0.2)

    from transformers.utils import logging as hf_logging

    from lifelong.model.loading import load_model

    hf_logging.set_verbosity_error()
    model, tokenizer, name = load_model(config.model)
    policy = Policy(model, tokenizer, name=name, lora=config.lora)
    store = ServeStore(config.store / "serve.sqlite")
    learner = ServeLearner(config, policy, store, make_gate(config), load_probes(config.probes_file))
    _log(log, {"event": "ready", "model": name})
    print("learner ready", flush=True)
    while os.getppid() == parent:
        due = learner.due()
        if not due:
            time.sleep(config.learner.poll_s)
            continue
        for tenant in due:
            try:
                record = learner.round(tenant)
            except Exception as exc:  # one bad round must not stop learning for every tenant
                record = learner.fail(tenant, f"error: {type(exc).__name__}: {str(exc)[:200]}")
            if record is not None:
                _log(log, {"event": "round", "tenant": tenant, "version": record.version, "status": record.status,
                           "reason": record.reason, **record.metrics})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

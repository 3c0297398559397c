"""The learning worker of `lifelong serve`: a process that runs the learning core on feedback.

It holds its own copy of the model at the lowest CPU priority with few threads, and pauses between
decoder layers while the server generates (answering.py), so answers come first and learning
takes the gaps. It polls the experience store for tenants with enough pending
feedback (`LearnerConfig.min_feedback`, or any once the oldest has waited `max_wait_s`) and runs one
round for each through `TenantLearner` (loop/tenants.py); after the rounds, it consolidates the memory
of tenants that have `consolidate_after_items` new memory items or have been idle for
`consolidate_when_idle_s` (`due_consolidations`). What is learned and how it is guarded is the
runtime's business, not serving's. One worker per store (a file lock), and it exits when the
server that started it does.

Run as `python -m lifelong.serve.worker <serve folder>`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lifelong.loop.tenants import TenantLearner, ensure_initial_adapter, load_operator_probes
from lifelong.memory.store import CONSOLIDATION_METRIC, ExperienceStore
from lifelong.model.policy import Policy
from lifelong.serve.answering import FLAG_FILE, AnsweringFlag, pause_while_answering
from lifelong.serve.config import ServeConfig, adapters_folder
from lifelong.types import AdapterRecord


def due_tenants(store: ExperienceStore, min_feedback: int, max_wait_s: float, now: float | None = None) -> list[str]:
    """Tenants with enough pending feedback, or feedback that has waited long enough."""
    now = time.time() if now is None else now
    return [
        tenant
        for tenant, (n, oldest) in sorted(store.pending_summary().items())
        if n >= min_feedback or now - oldest >= max_wait_s
    ]


def due_consolidations(store: ExperienceStore, after_items: int, idle_s: float, now: float | None = None) -> list[str]:
    """Tenants whose memory is due for consolidation: `after_items` unconsolidated items (after a
    rejected consolidation: that many that arrived since, so a rejection is not retried at every
    poll), or idle for `idle_s` (no pending feedback, and no item or round for that long) with items
    left; 0 turns a trigger off. A tenant with feedback waiting for its round is consolidated after
    it, not before."""
    now = time.time() if now is None else now
    pending = store.pending_summary()
    return [
        tenant
        for tenant, backlog in sorted(store.consolidation_backlog().items())
        if tenant not in pending
        and ((after_items and backlog.new >= after_items) or (idle_s and now - backlog.last_activity >= idle_s))
    ]


def learn_once(learner: TenantLearner, config: ServeConfig, log: Path | None = None) -> list[dict[str, Any]]:
    """One round for every tenant that is due, then one consolidation for every tenant whose memory
    is due; returns what each recorded."""
    done = []
    for tenant in due_tenants(learner.store, config.learner.min_feedback, config.learner.max_wait_s):
        items = learner.store.pending_feedback(tenant, limit=config.learner.max_items_per_round)
        if not items:
            continue
        try:
            record = learner.round(tenant, items)
        except Exception as exc:  # one bad round must not stop learning for every tenant
            record = learner.fail(tenant, items, f"error: {type(exc).__name__}: {str(exc)[:200]}")
        done.append(_logged(log, "round", tenant, record))
    cfg = config.learner
    for tenant in due_consolidations(learner.store, cfg.consolidate_after_items, cfg.consolidate_when_idle_s):
        try:
            consolidated = learner.consolidate(tenant)
        except Exception as exc:  # recorded as a consolidation, so that it waits for the next trigger
            why = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            consolidated = learner.fail(tenant, (), why, {CONSOLIDATION_METRIC: 0.0})
        if consolidated is not None:
            done.append(_logged(log, "consolidate", tenant, consolidated))
    return done


def _logged(log: Path | None, event: str, tenant: str, record: AdapterRecord) -> dict[str, Any]:
    entry = {"event": event, "tenant": tenant, "version": record.version, "status": record.status.value,
             "reason": record.reason, **record.metrics}  # fmt: skip
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}) + "\n")
    return entry


def build_learner(config: ServeConfig, store: ExperienceStore) -> TenantLearner:
    from lifelong.model.loading import load_model

    model, tokenizer, name = load_model(config.model)
    policy = Policy.for_config(model, tokenizer, name, config)
    initial = ensure_initial_adapter(policy, adapters_folder(config))
    probes = load_operator_probes(config.probes_file)
    return TenantLearner(config.learning, policy, store, adapters_folder(config), initial, probes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the learning worker of `lifelong serve`")
    parser.add_argument("store", type=Path, help="the serving folder (holds serve.json)")
    args = parser.parse_args(argv)
    config = ServeConfig.from_dict(json.loads((args.store / "serve.json").read_text()))
    parent = os.getppid()
    os.nice(config.learner.nice)
    torch.set_num_threads(config.learner.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One worker per store: a worker orphaned by a kill -9 of its server must not race a new one.
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

    hf_logging.set_verbosity_error()
    store = ExperienceStore(config.database_location)
    learner = build_learner(config, store)
    if config.learner.pause_while_answering:
        flag = AnsweringFlag(config.store / FLAG_FILE)
        pause_while_answering(learner.policy.model, flag, config.learner.max_pause_s)
    log = config.store / "learner.jsonl"
    with open(log, "a") as f:
        f.write(json.dumps({"time": time.time(), "event": "ready", "model": learner.policy.name}) + "\n")
    print("learner ready", flush=True)
    while os.getppid() == parent:
        if not learn_once(learner, config, log):
            time.sleep(config.learner.poll_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving while learning: an OpenAI-compatible server that improves from its users' feedback.

`lifelong serve` answers `/v1/chat/completions` like any OpenAI-compatible server, stores every
request, completion and piece of feedback before acknowledging it, and learns from the feedback in
a separate low-priority process. Each tenant (API key) has its own adapters; a new version goes live
only after the gate passes it, and is swapped in between requests. See server.py for the layout.
"""

from lifelong.serve.config import GateConfig, LearnerConfig, ServeConfig, TenantKey
from lifelong.serve.gate import AdapterGate, Candidate, GateDecision, Probe, ProbeGate
from lifelong.serve.server import BackgroundServer, Server, run_server
from lifelong.serve.store import ServeStore

__all__ = [
    "AdapterGate",
    "BackgroundServer",
    "Candidate",
    "GateConfig",
    "GateDecision",
    "LearnerConfig",
    "Probe",
    "ProbeGate",
    "ServeConfig",
    "ServeStore",
    "Server",
    "TenantKey",
    "run_server",
]

"""Serving while learning: an OpenAI-compatible server that improves from its users' feedback.

`lifelong serve` answers `/v1/chat/completions` like any OpenAI-compatible server, stores every
request, completion and piece of feedback in the experience store before acknowledging it, and a
worker process learns from the feedback through the runtime's one learning core (loop/tenants.py):
the same learners, guard, rollback and checkpoints as `lifelong run`. Each tenant (API key) has its
own adapters; a new version goes live only after the guard passes it, and is swapped in between
requests. serve/ itself holds HTTP, the wire protocol, keys and tenancy, and the engine that swaps
adapters. See server.py for the layout.
"""

from lifelong.serve.config import LearnerConfig, ServeConfig, TenantKey
from lifelong.serve.server import BackgroundServer, Server, run_server

__all__ = ["BackgroundServer", "LearnerConfig", "ServeConfig", "Server", "TenantKey", "run_server"]

"""The answering side: one model, every tenant's adapter swapped in between requests.

`Engine` answers one request at a time under its lock. Before each request it copies the tenant's
live adapter (from the AdapterBank, adapters.py) into the model when another tenant's, or an older
version, is loaded. So a request runs entirely with one adapter version, new versions take effect
between requests (as vLLM's LoRA hot-loading does), and no tenant ever answers with another's
weights. Copying a rank-16 adapter of the 135M model (~5M numbers) takes milliseconds. Plain chat
(`gen.protocol` False) goes through `Policy.chat`, whose replies can stream token by token.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import torch

from lifelong.model.adapters import load_adapter
from lifelong.model.policy import GenerationConfig, Policy, TextFn
from lifelong.serve.adapters import AdapterBank
from lifelong.serve.answering import AnsweringFlag
from lifelong.types import Completion


class Engine:
    """Answers with the tenant's adapter; one request at a time (2 CPU cores have no room for more)."""

    def __init__(self, policy: Policy, bank: AdapterBank, answering: AnsweringFlag | None = None) -> None:
        self.policy = policy
        self.bank = bank
        self.answering = answering  # raised while generating: the learning worker pauses (answering.py)
        self.lock = threading.Lock()
        self._applied: tuple[str, int] | None = None

    def generate(
        self,
        tenant: str,
        prompt_ids: Sequence[int],
        gen: GenerationConfig,
        n: int = 1,
        seed: int | None = None,
        on_start: Callable[[int], None] | None = None,
        on_text: TextFn | None = None,
        bare_ids: Sequence[int] | None = None,
    ) -> tuple[list[Completion], int]:
        """n completions of one prompt with the tenant's live adapter; returns them and its version.
        `on_start(version)` is called once that version is loaded, just before generating;
        `on_text(choice, piece)` streams plain replies as they grow (protocol replies never stream).
        `bare_ids`: the prompt without its recalled memory (`Policy.chat`'s `bare`)."""
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        contexts = [list(prompt_ids)] * n
        bare = None if bare_ids is None else [list(bare_ids)] * n
        with self.lock:
            live = self.bank.get(tenant)
            if self._applied != (tenant, live.version):
                load_adapter(self.policy, live.tensors)
                self._applied = (tenant, live.version)
            if on_start is not None:
                on_start(live.version)
            with self.answering.answering() if self.answering is not None else contextlib.nullcontext():
                if gen.protocol:
                    completions = self.policy.respond(contexts, gen, generator, bare)
                else:
                    completions = self.policy.chat(contexts, gen, generator, on_text, bare)
        return completions, live.version

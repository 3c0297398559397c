"""Scale-out on existing engines: the same runtime loop with rollout workers on Ray, sampling on vLLM.

Nothing here is a second copy of the algorithm. The `Runtime` (act -> store -> learn -> guard) is
the single loop; this package only swaps its `Actor`, the thing that turns jobs into episodes:

- `RayActor` fans jobs out to rollout-worker actors that hold their own copy of the model and
  receive the learner's adapter weights by version; it may sample the next step ahead of time,
  bounded by `max_staleness` (see `ray_actor`).
- `run_on_ray` runs the whole `Runtime` inside a Ray learner actor with a `RayActor` (`ray_run`).
- `VLLMActor` samples with vLLM and hot-loads the adapters by version (`vllm_actor`, GPU only).

Ray and vLLM are optional: they are imported only when these modes are asked for.
"""

from __future__ import annotations

from lifelong.scale.sync import StalenessError, check_staleness, within_staleness

__all__ = ["StalenessError", "check_staleness", "within_staleness"]

"""Load test of `lifelong serve` on loopback: latency, time to first token and throughput, learning off and on.

Each phase starts `lifelong serve` on 127.0.0.1 with a fresh store and drives it with a bounded load
(`--requests` requests, `--phase-timeout` seconds at most) through the official openai client. By
default requests arrive open-loop at an even rate set to `--utilization` (0.5) of the capacity
measured during the first phase's warm-up, so the server has the idle gaps real traffic has;
`--rate` fixes the rate, `--concurrency N` runs N closed-loop clients instead. With learning on,
every answer gets a rating (a fixed pseudo-random thumbs up/down, so the learner does its full work:
policy-gradient steps, the gate's probes, an atomic checkpoint, a hot swap) and measurement starts
only once the learner process has loaded its model. Phases alternate off/on `--rounds` times so that
drift in the machine's load hits both alike. Every request streams (`stream: true`): latency is the
time to the last event, time to first token (TTFT) the time to the first content delta.

    python benchmarks/serve_load.py                     # the embedded SmolLM2-135M, a readable table
    python benchmarks/serve_load.py --json              # ...and a JSON object as the last line
    python benchmarks/serve_load.py --model PATH --requests 20 --concurrency 1

Target (issue 18): p50 latency with learning on is at most 1.10x the p50 with learning off; the
on/off ratio of the TTFT p50 is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

KEY = "sk-bench"
PROMPTS = [
    "What is {a} + {b}?",
    "Name a fruit that is {c}.",
    "Give one word that rhymes with {w}.",
    "What is the capital of {country}?",
]
FILL: dict[str, list[Any]] = {
    "a": [3, 7, 12, 21],
    "b": [4, 9, 5, 8],
    "c": ["red", "yellow", "green", "orange"],
    "w": ["cat", "sun", "tree", "light"],
    "country": ["France", "Italy", "Japan", "Spain"],
}


def prompt(i: int) -> str:
    k = i % 4
    return PROMPTS[i % len(PROMPTS)].format(**{name: values[k] for name, values in FILL.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Phase:
    mode: str  # "off" | "on"
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)  # time to the first content delta
    tokens: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    rounds: int = 0  # learning rounds finished during the phase (kept or refused)
    kept: int = 0
    live_version: int = 0  # adapter version serving at the end


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


class ServerProcess:
    def __init__(self, args: argparse.Namespace, learn: bool, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.store = folder / f"store-{'on' if learn else 'off'}-{time.time_ns()}"
        config = folder / "serve-config.json"
        config.write_text(json.dumps(serve_settings(args)))
        cmd = [sys.executable, "-m", "lifelong.cli", "serve", "--port", str(self.port), "--store", str(self.store)]
        cmd += ["--key", f"bench={KEY}", "--config", str(config)]
        if args.model:
            cmd += ["--model", args.model]
        if not learn:
            cmd.append("--no-learn")
        self.log = open(folder / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

    def wait_ready(self, learner: bool, timeout: float) -> None:
        deadline = time.time() + timeout
        health = self.url.removesuffix("/v1") + "/health"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"lifelong serve exited ({self.proc.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(health, timeout=5) as r:
                    up = r.status == 200
            except OSError:
                up = False
            ready = not learner or (
                (self.store / "learner.jsonl").is_file() and "ready" in (self.store / "learner.jsonl").read_text()
            )
            if up and ready:
                return
            time.sleep(0.5)
        raise SystemExit(f"lifelong serve was not ready in {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def serve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The --config of each server: when the worker learns (`learner`) and how (`learning`)."""
    learner: dict[str, Any] = {"min_feedback": args.learn_every, "max_wait_s": 5.0}
    learner |= {"threads": args.learner_threads, "nice": args.learner_nice}
    return {"threads": args.threads, "learner": learner, "learning": {"steps_per_round": args.steps_per_round}}


def run_phase(args: argparse.Namespace, learn: bool, folder: Path) -> Phase:
    phase = Phase("on" if learn else "off")
    server = ServerProcess(args, learn, folder)
    try:
        server.wait_ready(learn, args.start_timeout)
        client = openai.OpenAI(api_key=KEY, base_url=server.url, max_retries=0, timeout=args.phase_timeout)
        model = client.models.list().data[0].id

        def one(i: int) -> None:
            t0 = time.perf_counter()
            first, tokens, rid = None, 0, ""
            try:
                for chunk in client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt(i)}],
                    max_tokens=args.max_tokens,
                    temperature=1.0,
                    seed=i,
                    stream=True,
                    stream_options={"include_usage": True},
                ):
                    rid = chunk.id
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            except openai.OpenAIError:
                phase.errors += 1
                return
            if i >= 0:  # warm-up requests (negative i) are not measured
                phase.latencies.append(time.perf_counter() - t0)
                phase.ttft.append(first if first is not None else phase.latencies[-1])  # an empty reply: its end
                phase.tokens.append(tokens)
            if learn:  # a rating for every answer, off the clock
                up = zlib.crc32(rid.encode()) % 2 == 0
                client.post("/feedback", body={"completion_id": rid, "rating": "up" if up else "down"}, cast_to=object)

        warm = time.perf_counter()
        for i in range(-args.warmup, 0):
            one(i)
        if args.rate is None and args.concurrency is None and args.warmup:
            # open loop at the chosen utilisation of the service time measured now (first phase only)
            args.rate = args.utilization * args.warmup / (time.perf_counter() - warm)
        t0 = time.perf_counter()
        deadline = time.time() + args.phase_timeout
        if args.rate:  # open loop: arrivals at a fixed rate, whether or not earlier ones are done
            threads = []
            for i in range(args.requests):
                time.sleep(max(0.0, t0 + i / args.rate - time.perf_counter()))
                if time.time() > deadline:
                    break
                threads.append(threading.Thread(target=one, args=(i,)))
                threads[-1].start()
        else:  # closed loop: each client sends its next request when the last one is answered
            counter = iter(range(args.requests))
            lock = threading.Lock()

            def worker() -> None:
                while time.time() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    one(i)

            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            for t in threads:
                t.start()
        for t in threads:
            t.join()
        phase.seconds = time.perf_counter() - t0
        if learn:
            records = client.get("/adapters", cast_to=object)["data"]  # type: ignore[index]
            phase.rounds = len(records)
            phase.kept = sum(r["status"] == "live" for r in records)
            phase.live_version = int((client.models.list().data[0].model_extra or {})["adapter_version"])
    finally:
        server.stop()
    return phase


def summary(phases: list[Phase]) -> dict[str, Any]:
    lat = [x for p in phases for x in p.latencies]
    ttft = [x for p in phases for x in p.ttft]
    tokens = [x for p in phases for x in p.tokens]
    seconds = sum(p.seconds for p in phases)
    return {
        "requests": len(lat),
        "errors": sum(p.errors for p in phases),
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        # adapters that learned may answer shorter or longer: latency per completion token compares like with like
        "p50_s_per_token": percentile([x / max(n, 1) for x, n in zip(lat, tokens, strict=True)], 50),
        "requests_per_s": len(lat) / seconds if seconds else 0.0,
        "tokens_per_s": sum(tokens) / seconds if seconds else 0.0,
        "tokens_per_request": statistics.fmean(tokens) if tokens else 0.0,
        "learning_rounds": sum(p.rounds for p in phases),
        "versions_kept": sum(p.kept for p in phases),
        "live_version_at_end": [p.live_version for p in phases],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Hugging Face model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--requests", type=int, default=40, help="measured requests per phase")
    parser.add_argument("--utilization", type=float, default=0.5, help="open loop: share of capacity")
    parser.add_argument("--rate", type=float, help="open loop at this many requests per second instead")
    parser.add_argument("--concurrency", type=int, help="closed loop instead: clients sending back to back")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests at the start of a phase")
    parser.add_argument("--max-tokens", type=int, default=16, help="answer budget of each request")
    parser.add_argument("--rounds", type=int, default=1, help="off/on phase pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--learner-threads", type=int, default=1, help="torch threads of the learner")
    parser.add_argument("--learner-nice", type=int, default=19, help="CPU priority of the learner (19 = lowest)")
    parser.add_argument("--learn-every", type=int, default=4, help="ratings that start a learning round")
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--phase-timeout", type=float, default=600.0, help="seconds a phase may take at most")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args(argv)

    off: list[Phase] = []
    on: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        for r in range(args.rounds):
            for learn in (False, True):
                print(f"round {r + 1}/{args.rounds}: learning {'on' if learn else 'off'} ...", file=sys.stderr)
                (on if learn else off).append(run_phase(args, learn, Path(tmp)))
    result: dict[str, Any] = {"off": summary(off), "on": summary(on)}
    result["p50_ratio"] = result["on"]["p50_s"] / result["off"]["p50_s"]
    result["p99_ratio"] = result["on"]["p99_s"] / result["off"]["p99_s"]
    result["ttft_p50_ratio"] = result["on"]["ttft_p50_s"] / result["off"]["ttft_p50_s"]
    result["ttft_p99_ratio"] = result["on"]["ttft_p99_s"] / result["off"]["ttft_p99_s"]
    result["p50_per_token_ratio"] = result["on"]["p50_s_per_token"] / result["off"]["p50_s_per_token"]
    result["throughput_ratio"] = result["on"]["requests_per_s"] / result["off"]["requests_per_s"]
    result["target_p50_ratio"] = 1.10
    result["config"] = {k: v for k, v in vars(args).items() if k != "json"} | {"cpus": os.cpu_count()}
    result["config"]["load"] = "closed loop" if args.concurrency else f"open loop, {args.rate:.3f} requests/s"

    print(f"{'learning':>8} {'requests':>8} {'errors':>6} {'p50 s':>7} {'p99 s':>7} {'TTFT p50':>8} {'TTFT p99':>8} "
          f"{'req/s':>6} {'tok/s':>6} {'tok/req':>7} {'rounds':>6} {'kept':>5}")  # fmt: skip
    for mode in ("off", "on"):
        s = result[mode]
        print(
            f"{mode:>8} {s['requests']:>8} {s['errors']:>6} {s['p50_s']:>7.3f} {s['p99_s']:>7.3f} "
            f"{s['ttft_p50_s']:>8.3f} {s['ttft_p99_s']:>8.3f} "
            f"{s['requests_per_s']:>6.2f} {s['tokens_per_s']:>6.1f} {s['tokens_per_request']:>7.1f} "
            f"{s['learning_rounds']:>6} {s['versions_kept']:>5}"
        )
    print(f"load: {result['config']['load']}")
    verdict = "ok" if result["p50_ratio"] <= result["target_p50_ratio"] else "over target"
    print(
        f"p50 on/off = {result['p50_ratio']:.3f} (target <= {result['target_p50_ratio']:.2f}: {verdict}); "
        f"p99 on/off = {result['p99_ratio']:.3f}; "
        f"TTFT p50 on/off = {result['ttft_p50_ratio']:.3f}; "
        f"p50 per token on/off = {result['p50_per_token_ratio']:.3f}; "
        f"throughput on/off = {result['throughput_ratio']:.3f}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

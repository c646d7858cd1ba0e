"""`halo-sql calibrate --model M`: measure a backend and store its cost-model profile.

    halo-sql calibrate --model /models/qwen                 # vLLM, stored in the profile dir
    halo-sql calibrate --backend sim --out sim.json         # the sim (answers instantly)
    python -m halo_sql.optimizer.calibrate --model M        # the same without the CLI

What it measures, on the real engine:
- model load: starting the backend and answering one request;
- prefill throughput: two rounds of distinct prompts (no shared prefix, one output token) of two
  lengths; seconds per prompt token is the slope between them, so fixed costs cancel out;
- decode step time versus batch size: batches of 1..32 distinct short prompts asked for many
  output tokens; a line through (batch size, time per output token) gives the step time at one
  sequence and its growth per extra sequence;
- KV-cache capacity and block size, read from the engine;
- the average answer length of free-text requests.
The profile is JSON (`BackendProfile`); the optimizer finds it by backend and model name.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from halo_sql.llm.base import Backend, DecodingParams, LLMRequest, OutputSpec
from halo_sql.optimizer.profile import BackendProfile, profile_path

_WORDS = ["order", "shipment", "refund", "customer", "package", "parcel", "courier", "invoice", "warranty", "return", "kettle", "lamp", "chair", "desk", "toaster", "delay", "damage", "support", "answer", "replace", "quality", "price", "colour", "size", "weight"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or hub id (optional for sim)")
    parser.add_argument("--backend", choices=("vllm", "sim"), default=None,
                        help="backend to measure (default: vllm when --model is given, else sim)")
    parser.add_argument("--model-option", dest="model_options", action="append", default=[],
                        metavar="KEY=VALUE", help="engine option, as for CREATE MODEL (repeatable)")
    parser.add_argument("--out", help="where to write the profile (default: the profile directory)")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller rounds")


def run(args: argparse.Namespace) -> int:
    from halo_sql.llm.registry import ModelSpec, backend_for

    backend_name = args.backend or ("vllm" if args.model else "sim")
    options: dict[str, Any] = {}
    for item in args.model_options:
        key, _, value = str(item).partition("=")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    spec = ModelSpec("calibrate", backend_name, args.model, options)
    began = time.perf_counter()
    backend = backend_for(spec)
    _generate(backend, [_request(["warm", "up"], 1)])
    load = time.perf_counter() - began
    profile = measure(backend, quick=args.quick)
    profile = replace(
        profile, backend=backend_name, model=args.model, model_load_s=round(load, 3),
        name=f"{backend_name}:{Path(args.model).name if args.model else 'default'}",
    )
    out = Path(args.out) if args.out else profile_path(backend_name, args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profile.to_json())
    print(f"profile written to {out}")
    for key, value in asdict(profile).items():
        if key not in ("note",):
            print(f"  {key:<24}{value}")
    return 0


def measure(backend: Backend, *, quick: bool = False) -> BackendProfile:
    """Measure `backend` (already started) and return its profile."""
    rng = random.Random(7)
    base = BackendProfile()
    rounds = 16 if quick else 48
    short, long = (32, 160) if quick else (64, 512)
    long = min(long, max(short + 16, backend.context_window // 2))
    times = []
    tokens = []
    for length in (short, long):
        requests = [_request(_words(rng, length), 1) for _ in range(rounds)]
        seconds, responses = _timed(backend, requests)
        # Random words share no prefix, so a backend that does not report cached tokens
        # (None) has computed them all.
        computed = sum(r.prompt_tokens - (r.cached_prompt_tokens or 0) for r in responses)
        times.append(seconds)
        tokens.append(computed)
    per_token = max((times[1] - times[0]) / max(tokens[1] - tokens[0], 1), 1e-9)
    overhead = max(0.0, (times[0] - per_token * tokens[0]) / rounds)

    steps = []
    output = 16 if quick else 48
    for batch in (1, 4, 16) if quick else (1, 4, 16, 32):
        requests = [_request(_words(rng, 8), output, text=True) for _ in range(batch)]
        seconds, responses = _timed(backend, requests)
        produced = max((r.output_tokens for r in responses), default=1) or 1
        prefill = per_token * sum(r.prompt_tokens for r in responses)
        steps.append((batch, max(seconds - prefill, 1e-9) / produced))
    slope, intercept = _line([b for b, _ in steps], [s for _, s in steps])

    text = [_request(_words(rng, 12), 64, text=True) for _ in range(8)]
    _, answers = _timed(backend, text)
    kv, block = _cache_shape(backend, base)
    return replace(
        base,
        measured=True,
        note="Measured by `halo-sql calibrate`.",
        prefill_tokens_per_s=round(1.0 / per_token, 1),
        decode_step_s=round(max(intercept + slope, 1e-6), 6),
        decode_step_per_seq_s=round(max(slope, 0.0), 8),
        kv_cache_tokens=kv,
        block_size=block,
        request_overhead_s=round(overhead, 6),
        text_output_tokens=round(sum(a.output_tokens for a in answers) / len(answers), 1),
        context_window=int(backend.context_window),
    )


def _words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(_WORDS) for _ in range(count)]


def _request(words: list[str], max_tokens: int, *, text: bool = False) -> LLMRequest:
    # A random first word keeps prompts from sharing a cached prefix.
    prompt = f"{random.random():.12f} " + " ".join(words)
    return LLMRequest(prompt, OutputSpec.text(), DecodingParams(max_tokens=max_tokens))


def _generate(backend: Backend, requests: Sequence[LLMRequest]) -> list[Any]:
    return list(backend.generate(list(requests)))


def _timed(backend: Backend, requests: Sequence[LLMRequest]) -> tuple[float, list[Any]]:
    began = time.perf_counter()
    responses = _generate(backend, requests)
    return time.perf_counter() - began, responses


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y over x (x shifted so intercept is at x = 1)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return slope, my - slope * mx


def _cache_shape(backend: Backend, base: BackendProfile) -> tuple[int, int]:
    """KV-cache capacity in tokens and block size, read from the engine where it says."""
    cache = getattr(backend, "_cache", None)  # the sim's prefix cache
    if cache is not None and hasattr(cache, "capacity_blocks"):
        return int(cache.capacity_blocks * cache.block_size), int(cache.block_size)
    llm = getattr(backend, "_llm", None)
    engine = getattr(llm, "llm_engine", None)
    config = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    config = config or getattr(engine, "cache_config", None)
    block = int(getattr(config, "block_size", None) or base.block_size)
    blocks = getattr(config, "num_gpu_blocks", None)
    if blocks:
        return int(blocks) * block, block
    return base.kv_cache_tokens, block


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halo-sql calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())

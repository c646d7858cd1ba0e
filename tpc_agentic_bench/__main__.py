"""Command line: `python -m tpc_agentic_bench run [--quick] [--workloads W1,W2] [--queries N]
[--backend vllm|sim|openai] [--model DIR] [--base-url URL --served-model NAME] [--json OUT]
[--plot OUT.png] [--verbose]` (see README.md).

The table goes to stdout, the progress bar to stderr. The exit status is 1 when a query failed
or systems disagreed on an answer (greedy decoding must give every system the same answers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    from tpc_agentic_bench.systems import ABLATIONS
    from tpc_agentic_bench.workloads import AGENT_WORKLOADS

    parser = argparse.ArgumentParser(prog="python -m tpc_agentic_bench")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run workloads under every system and compare them")
    run.add_argument("--quick", action="store_true",
                     help="smoke-test size: TPC-H SF 0.01 and 4 queries per workload")
    run.add_argument("--workloads",
                     help="comma-separated workload keys (default: all of W1..W6; --scaling: "
                          "W2,W5; --online: W2; agent "
                          f"variants: {', '.join(AGENT_WORKLOADS)})")
    run.add_argument("--agents", action="store_true",
                     help="also run the agent-workflow variants "
                          f"{', '.join(AGENT_WORKLOADS)} after the selected workloads")
    run.add_argument("--queries", type=int, help="queries per workload (default 4 quick, 16 full)")
    run.add_argument("--scale", type=float, help="TPC-H scale factor (default 0.01 quick, 0.1 full)")
    run.add_argument("--backend", choices=("vllm", "sim", "openai"), default="vllm")
    run.add_argument("--model", help="default model directory (vllm default: the tiny model, "
                                     "written to <cache>/tiny-model)")
    run.add_argument("--base-url", help="openai backend: the server, e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--served-model", help="openai backend: the served model name (default: "
                                            "the server's only model); --large-model names W4's")
    run.add_argument("--api", choices=("chat", "completions"),
                     help="openai backend: which endpoint (default chat)")
    run.add_argument("--api-key-env", help="openai backend: environment variable holding the key")
    run.add_argument("--large-model", help="W4's large model (vllm default: a larger tiny model)")
    run.add_argument("--dtype", help="vLLM weights and activations (default float32: greedy "
                                     "answers equal across systems; bfloat16 is faster on CPU)")
    run.add_argument("--replicas", type=int,
                     help="run the default model on N engine replicas, Ray actors on a local Ray "
                          "instance (replicas => N, cluster => 'ray'; vllm and sim backends)")
    run.add_argument("--systems",
                     help="comma-separated systems (default: naive,per_query,halo,vllm-async; "
                          "without --quick also langgraph and the ablations "
                          f"{', '.join(ABLATIONS)})")
    run.add_argument("--repeat", type=int, default=1,
                     help="runs per (workload, system), each from a cold cache; the median wall "
                          "time is reported (default 1)")
    run.add_argument("--cache-dir", help="where TPC-H data and tiny models are cached "
                                         "(default $HALO_CACHE_DIR or ./.halo_cache)")
    run.add_argument("--json", help="write the JSON report here")
    run.add_argument("--plot", help="write the PNG chart here")
    run.add_argument("--record", action="store_true",
                     help="also write .json, .png and .txt into tpc_agentic_bench/results/")
    run.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    run.add_argument("--verbose", action="store_true",
                     help="show the LLM engine's own logging (vLLM INFO/WARNING lines)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true",
                      help="cost growth: W2 and W5 (or --workloads) at --sizes queries under halo "
                           "and vllm-async (or --systems): wall time, planning time, peak RSS")
    mode.add_argument("--online", action="store_true",
                      help="Poisson arrivals of W2's (or --workloads) queries at --rates: "
                           "throughput and p50/p99 latency, halo vs vllm-async (or --systems)")
    run.add_argument("--sizes", default="16,64,256,1024",
                     help="batch sizes of --scaling (default 16,64,256,1024)")
    run.add_argument("--rates", default="0.5,1,2,4,8",
                     help="arrival rates of --online in queries/s (default 0.5,1,2,4,8)")
    run.add_argument("--seed", type=int, default=0, help="seed of the --online arrivals")
    run.add_argument("--warm-batch", type=int, default=32,
                     help="queries of each system's untimed batch warm-up (0: the whole batch; "
                          "default 32)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(parser, args)
    # A polite kill (SIGTERM) unwinds like Ctrl-C, so the engines and vLLM servers the run
    # started are stopped on the way out.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(parser, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # Before any engine starts: a bounded KV cache on CPU, and the engine's logging off
    # unless --verbose (halo_sql/llm/logs.py).
    from halo_sql.llm.logs import quiet_engine_logs

    quiet_engine_logs(verbose=args.verbose)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tpc_agentic_bench.harness import (
        FULL_QUERIES,
        FULL_SCALE,
        QUICK_QUERIES,
        QUICK_SCALE,
        BenchConfig,
        default_system_names,
        run_benchmark,
    )
    from tpc_agentic_bench.modes import (
        ONLINE_SYSTEMS,
        ONLINE_WORKLOAD,
        SCALING_SYSTEMS,
        SCALING_WORKLOADS,
    )
    from tpc_agentic_bench.progress import Progress
    from tpc_agentic_bench.report import format_report, write_json, write_plot
    from tpc_agentic_bench.systems import ablations_supported

    if args.systems:
        systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    elif args.scaling:
        systems = SCALING_SYSTEMS
    elif args.online:
        systems = ONLINE_SYSTEMS
    else:
        systems = default_system_names(args.quick, ablations_supported())
    from tpc_agentic_bench.systems import make_system
    from tpc_agentic_bench.workloads import AGENT_WORKLOADS, ALL_WORKLOADS, WORKLOADS

    if args.workloads is None:
        args.workloads = (",".join(SCALING_WORKLOADS) if args.scaling
                          else ONLINE_WORKLOAD if args.online else ",".join(WORKLOADS))

    workloads = tuple(k.strip().upper() for k in args.workloads.split(",") if k.strip())
    if args.agents:
        workloads += tuple(k for k in AGENT_WORKLOADS if k not in workloads)
    unknown = [k for k in workloads if k not in ALL_WORKLOADS]
    if unknown or not workloads:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(ALL_WORKLOADS)}")
    try:
        for name in systems:
            make_system(name)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dtype and args.backend != "vllm":
        parser.error("--dtype applies to the vllm backend only")
    if args.replicas is not None and (args.replicas < 1 or args.backend == "openai"):
        parser.error("--replicas must be at least 1, on the vllm or sim backend (an openai "
                     "model's replicas are its servers)")
    if (args.queries is not None and args.queries < 1) or args.repeat < 1:
        parser.error("--queries and --repeat must be at least 1")
    model_options: dict[str, str] = {"dtype": args.dtype} if args.dtype else {}
    if args.backend == "openai":
        if not args.base_url:
            parser.error("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        model_options["base_url"] = args.base_url
        if args.api:
            model_options["api"] = args.api
        if args.api_key_env:
            model_options["api_key_env"] = args.api_key_env
    config = BenchConfig(
        backend=args.backend,
        model=args.served_model or args.model,
        model_options=model_options,
        large_model=args.large_model,
        scale=args.scale if args.scale is not None else (QUICK_SCALE if args.quick else FULL_SCALE),
        queries=args.queries or (QUICK_QUERIES if args.quick else FULL_QUERIES),
        workloads=workloads,
        systems=systems,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        quick=args.quick,
        warm_batch=args.warm_batch,
        repeat=args.repeat,
        replicas=args.replicas,
    )
    progress = Progress(enabled=not args.no_progress)
    if args.scaling or args.online:
        return _run_mode(args, parser, config, progress)
    report = run_benchmark(config, progress)
    text = format_report(report)
    print(text)

    outputs = []
    if args.json:
        outputs.append(write_json(report, args.json))
    if args.plot:
        outputs.append(write_plot(report, args.plot))
    if args.record:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = RESULTS_DIR / f"{stamp}-{config.backend}-{'quick' if config.quick else 'full'}"
        outputs.append(write_json(report, base.with_suffix(".json")))
        outputs.append(write_plot(report, base.with_suffix(".png")))
        base.with_suffix(".txt").write_text(text + "\n")
        outputs.append(base.with_suffix(".txt"))
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)
    return _status(report)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _numbers(text: str, what: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated numbers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        parser.error(f"{what} must be positive numbers, got {text!r}")
    return values


def _run_mode(args: argparse.Namespace, parser: argparse.ArgumentParser, config: Any,
              progress: Any) -> int:
    """--scaling or --online: their own table and JSON (`modes.py`)."""
    import dataclasses
    import json

    from tpc_agentic_bench.modes import format_online, format_scaling, run_online, run_scaling

    if args.scaling:
        sizes = [int(v) for v in _numbers(args.sizes, "--sizes", parser)]
        report = run_scaling(dataclasses.replace(config, queries=max(sizes)), sizes, progress)
        text = format_scaling(report)
    else:
        rates = _numbers(args.rates, "--rates", parser)
        report = run_online(config, rates, args.seed, progress)
        text = format_online(report)
    print(text)
    outputs = []
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        outputs.append(path)
    if args.record:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = RESULTS_DIR / f"{stamp}-{config.backend}-{report['mode']}"
        base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        base.with_suffix(".txt").write_text(text + "\n")
        outputs += [base.with_suffix(".json"), base.with_suffix(".txt")]
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)
    failed = [p for p in report["points"] if p.get("failed") or p.get("errors")]
    if failed:
        print(f"FAILED: {len(failed)} point(s) failed or had query errors", file=sys.stderr)
        return 1
    return 0


def _status(report: dict) -> int:
    """1 when any query failed or any system's answers differ from the reference's."""
    bad = [
        f"{w['key']} {r['name']}"
        for w in report["workloads"]
        for r in w["systems"]
        if r.get("failed")
        or (r.get("available") and (r.get("errors") or r.get("agreement", 1.0) < 1.0))
    ]
    if bad:
        print(f"FAILED: errors or disagreeing answers in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # vLLM spawns workers that re-import the main module
    sys.exit(main())

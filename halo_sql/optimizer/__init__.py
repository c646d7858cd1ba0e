"""The optimizer: a Cascades search over a statement's logical plan, priced by an LLM cost model.

    plan  = PlanBuilder(...).build(ast, sql)          # the planner's plan (halo_sql.logical)
    plan  = optimize(plan, context, settings)         # the cheapest equivalent plan found

`optimize` inserts the plan into a memo (`memo.py`), fires the rules of `optimizer_rules/`
(`rules.py`, helpers in `functions.py`) from the tasks of `search.py`, prices every alternative
with `cost.py` (constants from a backend profile, statistics from `stats.py`), extracts the
cheapest plan and finishes it with the Python rules of `finalize.py`. DuckDB plans the SQL of
every `DuckDBQuery` itself (join order, scan pushdown): to this optimizer a DuckDBQuery is an
opaque leaf, and rules only move work across its boundary. See docs/optimizer.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from halo_sql.errors import ProgrammingError
from halo_sql.logical import plan as lp
from halo_sql.optimizer.cost import Cost, CostModel, OpEstimate, Required
from halo_sql.optimizer.finalize import finalize
from halo_sql.optimizer.functions import HELPERS
from halo_sql.optimizer.rules import Rule, load_registry
from halo_sql.optimizer.search import DEFAULT_TASK_BUDGET, Search, SearchStats
from halo_sql.optimizer.stats import NullContext, OptimizerContext, Statistics

__all__ = [
    "BATCH_DISABLED",
    "OptimizerReport",
    "OptimizerSettings",
    "estimate",
    "for_batch",
    "optimize",
    "rule_names",
]


@dataclass(frozen=True)
class OptimizerSettings:
    """What `SET disable_rules` / `SET enable_rules` / `SET optimizer_sample_rows` chose."""

    disabled: frozenset[str] = frozenset()
    enabled: frozenset[str] = frozenset()
    """Rules that are off by default (they change answers) switched on."""
    sample_rows: int | None = None
    """Rows asked of the model to estimate an LLM predicate's selectivity (None: the context's)."""
    task_budget: int = DEFAULT_TASK_BUDGET
    batch: bool = False
    """Planning one query of a batch (`for_batch`)."""

    def check(self) -> None:
        known = set(rule_names())
        unknown = sorted((self.disabled | self.enabled) - known)
        if unknown:
            raise ProgrammingError(
                f"unknown optimizer rule(s) {', '.join(unknown)} "
                f"(rules: {', '.join(sorted(known))})"
            )

    @property
    def all_off(self) -> bool:
        return set(rule_names()) <= self.disabled


@dataclass
class OptimizerReport:
    """What the optimizer decided, for EXPLAIN: estimates per operator of the chosen plan."""

    estimates: dict[lp.PlanNode, OpEstimate] = field(default_factory=dict)
    total: Cost = field(default_factory=Cost)
    rules: tuple[str, ...] = ()
    """Rules whose rewrites are part of the chosen plan."""
    groups: int = 0
    expressions: int = 0
    search: SearchStats = field(default_factory=SearchStats)
    sampled_requests: int = 0
    seconds: float = 0.0
    models: tuple[str, ...] = ()
    profiles: dict[str, str] = field(default_factory=dict)
    """Model -> the profile its requests were priced with."""
    placements: dict[str, str] = field(default_factory=dict)
    """Model -> where its engines run, for models on replicas (halo_sql.llm.replicas); models
    not named here run on one engine in this process."""


BATCH_DISABLED = frozenset(
    {"push_filter_into_input", "push_limit_into_input", "prune_input_columns", "push_llm_filter_into_input"}
)
"""Rules that specialise a named input to one query. In a batch, equal sub-plans of different
queries run once (the executor's SubplanCache) and identical requests of different queries are
sent once (the batching runtime). When every LLM call of a query is deterministic (temperature
0), a query's own, narrowed copy of a CTE never asks the model more than the shared copy: the
requests of all the narrowed copies are a subset of the shared copy's, each sent once. Then these
rules stay on. Otherwise (sampled answers, agents with tools) they are off and the sub-plans stay
equal, so the queries share one run."""


def for_batch(settings: OptimizerSettings) -> OptimizerSettings:
    """The settings for planning one query of a batch (see BATCH_DISABLED)."""
    return replace(settings, batch=True)


def _shared_answers(root: lp.PlanNode) -> bool:
    """Every model request of the plan is deterministic, so a batch sends each once."""
    for node in root.walk():
        if isinstance(node, lp.AgentCall):
            return False
        calls = [node.call] if isinstance(node, lp.LLMFilter | lp.LLMMap) else []
        if isinstance(node, lp.DuckDBQuery):
            calls += [udf.call for udf in node.udfs]
        if any(call.params.temperature != 0 for call in calls):
            return False
    return True


def rule_names() -> tuple[str, ...]:
    """Every rule name, in registry order (rule files, then rules written in Python)."""
    return load_registry().names


def rules_in_force(settings: OptimizerSettings) -> tuple[Rule, ...]:
    return tuple(
        rule
        for rule in load_registry().rules
        if rule.name not in settings.disabled
        and (not rule.off_by_default or rule.name in settings.enabled)
    )


def optimize(
    plan: lp.StatementPlan,
    context: OptimizerContext | None = None,
    settings: OptimizerSettings | None = None,
) -> lp.StatementPlan:
    """The cheapest plan equivalent to `plan` that the rules in force can reach.

    Plans without LLM operators are returned as they are: DuckDB optimizes them itself.
    """
    settings = settings or OptimizerSettings()
    settings.check()
    if settings.batch and not _shared_answers(plan.root):
        settings = replace(settings, disabled=settings.disabled | BATCH_DISABLED)
    began = time.perf_counter()
    base: OptimizerContext = context or NullContext()
    if settings.sample_rows is not None:
        base = _WithSampleRows(base, settings.sample_rows)  # type: ignore[assignment]
    context = base
    if _plain(plan.root):
        return plan
    try:
        return _optimize(plan, context, settings, began)
    except Exception as exc:  # the planner's plan is correct: never fail a statement here
        if os.environ.get("HALO_OPTIMIZER_STRICT"):
            raise
        return replace(plan, notes=(*plan.notes, f"optimizer skipped ({type(exc).__name__}: {exc})"))


def _optimize(
    plan: lp.StatementPlan, context: OptimizerContext, settings: OptimizerSettings, began: float
) -> lp.StatementPlan:
    stats = Statistics(context)
    if stats.sample_rows and _llm_predicates(plan.root) < 2:
        stats.sample_rows = 0  # the choice of plan does not depend on selectivities
    stats.prefetch(_llm_sources(plan.root))
    search = Search(rules_in_force(settings), HELPERS, CostModel(stats), task_budget=settings.task_budget)
    root = search.optimize(plan.root)
    chosen, built = search.extract(root, Required())
    estimates: dict[lp.PlanNode, OpEstimate] = {}
    lineage: set[str] = set()
    for expr, req, _winner in search.winner_tree(root, Required()):
        estimates.setdefault(built[(expr.group, req)], search.local(expr, req))
        lineage |= expr.lineage
    share = "share_identical_subplans" not in settings.disabled
    final, translate = finalize(chosen, share=share)
    if share and final != chosen and _shared(chosen, final):
        lineage.add("share_identical_subplans")
    report = OptimizerReport(
        estimates={translate.get(n, n): e for n, e in estimates.items()},
        total=search.memo.group(root).winners[Required()].cost,
        rules=tuple(sorted(lineage)),
        groups=len(search.memo.groups),
        expressions=search.memo.expression_count,
        search=search.stats,
        sampled_requests=stats.sampled_requests,
        models=tuple(sorted({n.call.model for n in final.walk() if isinstance(n, lp.LLMFilter | lp.LLMMap)})),
    )
    for model in report.models:
        profile = context.profile(model)
        kind = "calibrated" if profile.measured else "shipped"
        report.profiles[model] = f"{profile.backend} profile {profile.name!r} ({kind})"
        where = getattr(context, "placement", None)
        text = where(model) if callable(where) else None
        if text:
            report.placements[model] = text
    report.seconds = time.perf_counter() - began
    return replace(plan, root=final, optimizer=report)


def estimate(plan: lp.PlanNode, context: OptimizerContext | None = None) -> Cost:
    """The cost model's price of `plan` exactly as given (no rules): for comparing plans."""
    stats = Statistics(context or NullContext())
    stats.sample_rows = 0
    search = Search((), HELPERS, CostModel(stats))
    root = search.optimize(plan)
    cost: Cost = search.memo.group(root).winners[Required()].cost
    return cost


def _shared(before: lp.PlanNode, after: lp.PlanNode) -> bool:
    def names(node: lp.PlanNode) -> set[str]:
        return {i.name for n in node.walk() if isinstance(n, lp.DuckDBQuery) for i in n.inputs}

    return len(names(after)) < len(names(before))


def _llm_sources(root: lp.PlanNode) -> dict[str, set[tuple[str, ...]]]:
    """Relational source SQL -> argument column sets of the LLM operators above it."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for node in root.walk():
        if not isinstance(node, lp.LLMFilter | lp.LLMMap):
            continue
        below = node.child
        while isinstance(below, lp.LLMFilter | lp.LLMMap | lp.SQLFilter | lp.Project | lp.Limit):
            below = below.child
        if isinstance(below, lp.DuckDBQuery) and not below.inputs and not below.udfs:
            out.setdefault(below.sql, set()).add(node.arguments)
    return out


def _plain(root: lp.PlanNode) -> bool:
    return isinstance(root, lp.DuckDBQuery) and not root.inputs and not root.udfs


def _llm_predicates(root: lp.PlanNode) -> int:
    count = 0
    for node in root.walk():
        if isinstance(node, lp.LLMFilter) or isinstance(node, lp.SQLFilter) and "__llm_" in node.predicate:
            count += 1
    return count


class _WithSampleRows:
    """A context with another sample size (SET optimizer_sample_rows)."""

    def __init__(self, base: OptimizerContext, sample_rows: int) -> None:
        self._base = base
        self.sample_rows = sample_rows

    def __getattr__(self, name: str) -> object:
        return getattr(self._base, name)


def parse_rule_list(value: str | Iterable[str]) -> frozenset[str]:
    """'a, b' -> {'a', 'b'} (names are case-insensitive; empty items ignored)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return frozenset(i.strip().lower() for i in items if i.strip())

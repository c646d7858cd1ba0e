"""The cost model: what a plan costs in model work (prefill, decode, cache) and seconds.

For an LLM operator that processes `r` rows (after early stop, see below):

    requests  = r · live · distinct          (NULL slots send nothing; equal prompts go once)
    prompt    = requests · tokens_per_prompt
    cached    = (requests - 1) · cached_prefix (static prefix + sorted-neighbour sharing, whole
                blocks only; 0 when an identical call below already answered every request)
    prefill   = (prompt - cached) / prefill_tokens_per_s
              + requests · ½·L·(L+1) · attention_token_step_s     (L = computed tokens/request)
    decode    = waves · output_tokens · decode_step(batch),  batch = min(max_batch,
                KV-cache tokens / (prompt + output tokens), requests),  waves = requests / batch
    seconds   = prefill + decode + requests · request_overhead + calls · call_overhead

Relational operators cost a few nanoseconds per cell, so among plans with equal model work the
one that moves less data wins (pushdowns into DuckDB, pruned columns).

Early stop: a plan is costed for a *required* number of output rows (`need`, None = all). A
LIMIT needs `n`; a filter passes `need / selectivity` down; a map or projection passes `need`;
the operators work in batches, so what they process is `need` rounded up to their batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from sqlglot import exp

from halo_sql.llm.base import OutputKind
from halo_sql.logical import plan as lp
from halo_sql.logical.llm_call import LLMCall
from halo_sql.logical.sqlexpr import row_local_select
from halo_sql.optimizer import sqltools
from halo_sql.optimizer.memo import GroupRef, Memo
from halo_sql.optimizer.profile import BackendProfile
from halo_sql.optimizer.stats import AggregateStats, PromptStats, Statistics

DEFAULT_ROWS = 1000.0
"""Rows assumed for a relation whose size the optimizer cannot ask DuckDB for."""
DEFAULT_PREDICATE_SELECTIVITY = 1 / 3
DUCKDB_CELL_S = 2e-9
ARROW_CELL_S = 1e-9
BATCH_FILTER_ROW_S = 5e-7
BATCH_FILTER_CALL_S = 2e-4
LLM_BATCH_ROWS = 1024
"""Rows an LLM operator turns into prompts per runtime call (PhysicalSettings.llm_batch_rows)."""
HINT_CHUNK_ROWS = 8
"""Smallest chunk of an LLM filter with a limit hint."""
CHARS_PER_TOKEN = 4.0
"""Characters per token of English text (estimates the tokens of aggregated items)."""
OPERATOR_S = 1e-6
"""Fixed cost of an operator: among plans doing the same work, fewer operators win."""
SQL_CHAR_S = 1e-9
"""Per character of SQL DuckDB parses and plans: breaks ties towards simpler SQL."""


@dataclass(frozen=True)
class Cost:
    """Additive cost of a plan or an operator."""

    seconds: float = 0.0
    requests: float = 0.0
    prompt_tokens: float = 0.0
    cached_tokens: float = 0.0
    output_tokens: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.seconds + other.seconds,
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
        )

    @property
    def computed_tokens(self) -> float:
        """Prompt tokens the model actually prefilled (not served from the prefix cache)."""
        return self.prompt_tokens - self.cached_tokens


ZERO = Cost()


@dataclass(frozen=True)
class Required:
    """Required physical properties of a group's plan: how many output rows the consumer pulls
    (None: all of them). Winners are kept per (group, Required)."""

    need: int | None = None


@dataclass
class LogicalProps:
    """Properties every plan of a group shares."""

    columns: tuple[str, ...] | None
    rows: float
    source: str | None = None
    """SQL of the relational source at the bottom of this group's operator chain (sampling)."""
    llm_columns: dict[str, tuple[LLMCall, tuple[str, ...]]] = field(default_factory=dict)
    """Columns holding an LLM call's answers (an equal call above is answered from memo)."""
    llm_columns_by_call: dict[tuple[LLMCall, tuple[str, ...]], str] = field(default_factory=dict)
    predicates: frozenset[str] = frozenset()
    """Relational predicates every row already satisfies (a filter repeating one is a no-op)."""


@dataclass(frozen=True)
class OpEstimate:
    """What the cost model expects of one operator (EXPLAIN prints it)."""

    rows: float
    """Rows it outputs under its required properties."""
    processed: float
    """Rows it reads (and, for LLM operators, turns into requests before deduplication)."""
    cost: Cost
    note: str = ""


class CostModel:
    """Derives logical properties and costs group expressions (see the module docstring)."""

    def __init__(self, stats: Statistics) -> None:
        self.stats = stats

    # -- logical properties ----------------------------------------------------------------
    def derive(self, node: lp.PlanNode, memo: Memo) -> LogicalProps:
        if isinstance(node, lp.DuckDBQuery):
            return self._derive_query(node, memo)
        child = self._child(node, memo)
        if isinstance(node, lp.LLMFilter):
            sel = self.stats.llm_selectivity(node.call, child.source, node.arguments)
            return _like(child, rows=child.rows * sel)
        if isinstance(node, lp.LLMMap):
            props = _like(child, columns=_plus(child.columns, node.output_column))
            key = (node.call, node.arguments)
            props.llm_columns = {**child.llm_columns, node.output_column: key}
            props.llm_columns_by_call = {key: node.output_column, **child.llm_columns_by_call}
            return props
        if isinstance(node, lp.SQLFilter):
            if node.predicate in child.predicates:
                return _like(child)
            rows = child.rows * self.sql_selectivity(node.predicate, child)
            source = child.source
            columns = sqltools.predicate_columns(node.predicate) or set()
            if source is not None and not columns & set(child.llm_columns):
                # The filtered rows are still a relational query: later estimates see them.
                source = sqltools.wrap_where(source, node.predicate)
            return _like(child, rows=rows, source=source, predicates=child.predicates | {node.predicate})
        if isinstance(node, lp.Project):
            props = _like(child, columns=tuple(node.columns))
            props.llm_columns = {c: k for c, k in child.llm_columns.items() if c in node.columns}
            props.llm_columns_by_call = {k: c for c, k in props.llm_columns.items()}
            return props
        if isinstance(node, lp.Limit):
            return _like(child, rows=min(float(node.count), child.rows))
        return _like(child)

    def _derive_query(self, node: lp.DuckDBQuery, memo: Memo) -> LogicalProps:
        columns = sqltools.output_columns(node.sql)
        if not node.inputs and not node.udfs:
            if columns is None:
                columns = self.stats.columns(node.sql)
            rows = self.stats.row_count(node.sql)
            return LogicalProps(columns, float(rows) if rows is not None else DEFAULT_ROWS, node.sql)
        if not node.inputs:
            # LLM functions DuckDB evaluates itself only in the output: the rows are those of
            # the query with each call replaced by NULL, which DuckDB can count.
            counted = sqltools.without_output_functions(node.sql, [u.name for u in node.udfs])
            rows = self.stats.row_count(counted) if counted is not None else None
            if rows is not None:
                return LogicalProps(columns, float(rows), None)
        inputs = [memo.group(i.plan.group).logical for i in node.inputs if isinstance(i.plan, GroupRef)]
        if len(inputs) == 1 and not node.udfs:
            local = self._row_local_rows(node, inputs[0])
            if local is not None:
                return LogicalProps(columns, local, None)
        base = max((p.rows for p in inputs), default=DEFAULT_ROWS)
        return LogicalProps(columns, _shape_rows(node.sql, base), None)

    def _row_local_rows(self, node: lp.DuckDBQuery, below: LogicalProps) -> float | None:
        """Rows of a row-local SELECT over one input (a step of a CTE chain): the input's rows
        times the selectivity of its WHERE, estimated like a SQLFilter over the input."""
        tree = row_local_select(node.sql, node.inputs[0].name)
        if tree is None:
            return None
        where = tree.args.get("where")
        if where is None:
            return below.rows
        predicate = where.this.copy().transform(
            lambda n: exp.column(exp.to_identifier(n.name, quoted=True))
            if isinstance(n, exp.Column)
            else n
        )
        return below.rows * self.sql_selectivity(predicate.sql("duckdb"), below)

    def _child(self, node: lp.PlanNode, memo: Memo) -> LogicalProps:
        (child,) = node.children
        assert isinstance(child, GroupRef)
        props: LogicalProps = memo.group(child.group).logical
        return props

    def sql_selectivity(self, predicate: str, child: LogicalProps) -> float:
        """Exact over a relational source; by output type over LLM answers; else 1/3."""
        columns = sqltools.predicate_columns(predicate) or set()
        llm = [child.llm_columns[c] for c in columns if c in child.llm_columns]
        if not llm and child.source is not None:
            value = self.stats.filter_selectivity(child.source, predicate)
            if value is not None:
                return max(value, 1e-6)
        if len(llm) == 1:
            call = llm[0][0]
            if call.output.kind is OutputKind.CHOICE and call.output.labels:
                return 1.0 / len(call.output.labels)
            if call.output.kind is OutputKind.BOOLEAN:
                return 0.5
        return DEFAULT_PREDICATE_SELECTIVITY

    # -- required properties ----------------------------------------------------------------
    def child_required(
        self, node: lp.PlanNode, required: Required, memo: Memo, group: int
    ) -> tuple[Required, ...]:
        """What each child must deliver for `node` (in `group`) to deliver `required`."""
        if isinstance(node, lp.DuckDBQuery):
            return tuple(Required() for _ in node.inputs)  # inputs are materialized whole
        child = self._child(node, memo)
        pulled = self._pulled(node, required, child, memo.group(group).logical)
        return (Required(_round_need(pulled, child.rows) if pulled is not None else None),)

    def _pulled(
        self, node: lp.PlanNode, required: Required, child: LogicalProps, own: LogicalProps
    ) -> float | None:
        """Rows `node` pulls from its child to deliver `required` (None: all of them).

        Operators work in batches: an LLM map answers whole slices of 1024 rows, an LLM filter
        too unless a limit hint makes it work in small chunks sized by the selectivity.
        """
        need = required.need
        if isinstance(node, lp.Limit):
            return float(node.count if need is None else min(need, node.count))
        if need is None:
            return None
        if isinstance(node, lp.LLMFilter | lp.SQLFilter):
            sel = own.rows / child.rows if child.rows > 0 else 1.0
            wanted = need / max(sel, 1e-3)
            if isinstance(node, lp.LLMFilter):
                chunk = HINT_CHUNK_ROWS if node.limit_hint is not None else LLM_BATCH_ROWS
                wanted = _ceil_to(wanted, chunk)
            return min(wanted, child.rows)
        if isinstance(node, lp.LLMMap):
            return min(_ceil_to(need, LLM_BATCH_ROWS), child.rows)
        return min(float(need), child.rows)

    # -- local cost -------------------------------------------------------------------------
    def local(self, node: lp.PlanNode, required: Required, memo: Memo, group: int) -> OpEstimate:
        own: LogicalProps = memo.group(group).logical
        rows_out = own.rows if required.need is None else min(own.rows, float(required.need))
        width = len(own.columns) if own.columns is not None else 8
        if isinstance(node, lp.DuckDBQuery):
            inputs = 0.0
            for named in node.inputs:
                if isinstance(named.plan, GroupRef):
                    p = memo.group(named.plan.group).logical
                    inputs += p.rows * (len(p.columns) if p.columns else 8)
            seconds = (own.rows * width + inputs) * DUCKDB_CELL_S + len(node.sql) * SQL_CHAR_S
            udf_cost, note = self._udf_cost(node, own) if node.udfs else (ZERO, "")
            return OpEstimate(rows_out, own.rows, Cost(seconds + OPERATOR_S) + udf_cost, note)
        child = self._child(node, memo)
        pulled = self._pulled(node, required, child, own)
        processed = child.rows if pulled is None else pulled
        estimate = self._local_unary(node, child, processed, rows_out, width)
        return replace(estimate, cost=estimate.cost + Cost(OPERATOR_S))

    def _local_unary(
        self, node: lp.PlanNode, child: LogicalProps, processed: float, rows_out: float, width: int
    ) -> OpEstimate:
        if isinstance(node, lp.LLMFilter | lp.LLMMap):
            key = (node.call, node.arguments)
            if key in child.llm_columns_by_call:
                # An identical call below answered these rows: the statement's memo serves them.
                return OpEstimate(rows_out, processed, Cost(processed * ARROW_CELL_S), "memo")
            cost = self.llm_cost(node.call, node.arguments, child, processed)
            return OpEstimate(rows_out, processed, cost, self.placement_note(node.call.model))
        if isinstance(node, lp.AgentCall):
            return self._agent_estimate(node, processed, rows_out)
        if isinstance(node, lp.SQLFilter):
            batches = max(1.0, math.ceil(processed / 2048))
            seconds = processed * BATCH_FILTER_ROW_S + batches * BATCH_FILTER_CALL_S
            return OpEstimate(rows_out, processed, Cost(seconds))
        if isinstance(node, lp.Project):
            # Dropping columns is free (Arrow slices); narrower rows make everything above cheaper.
            return OpEstimate(rows_out, processed, Cost(processed * width * ARROW_CELL_S))
        return OpEstimate(rows_out, processed, ZERO)

    def _agent_estimate(self, node: lp.AgentCall, rows: float, rows_out: float) -> OpEstimate:
        """Agent runs: `expected_steps` replies per row (the agent's `steps_hint`, else half of
        `max_steps`), each one request of a batched step. A step's prompt is the instructions,
        the tool list and the input row, plus one tool observation per earlier step; everything
        but the newest observation was the previous step's prompt, so it is a cached prefix."""
        agent = node.agent
        model = agent.model or ""
        count = self.stats._counter(model) if model else (lambda text: max(1, len(text) // 4))
        tools = " ".join(f"{t.name}: {getattr(t, 'description', '')}" for t in node.tools)
        base = float(count(f"{agent.instructions}\n{tools}")) + 24.0 * len(node.input_columns)
        steps = agent.expected_steps
        observation = 64.0
        prompt = PromptStats(
            prompt_tokens=base + observation * (steps - 1) / 2,
            cached_tokens=base * 0.5 + observation * max(0.0, steps - 2) / 2,
            output_tokens=float(min(agent.max_tokens, 96)),
            static_tokens=base * 0.5,
        )
        profile = self.stats.context.profile(model) if model else BackendProfile()
        cost = request_cost(rows * steps, prompt, profile)
        note = f"agent {agent.name}: ~{steps:g} steps per row"
        where = self.placement_note(model) if model else ""
        return OpEstimate(rows_out, rows, cost, f"{note}, {where}" if where else note)

    def placement_note(self, model: str) -> str:
        """Where a model's requests go, for EXPLAIN: '' on one engine, else e.g.
        'on 2 replicas by prefix affinity'."""
        profile = self.stats.context.profile(model)
        if profile.replicas <= 1:
            return ""
        how = "prefix affinity" if profile.routing == "prefix" else "round robin"
        return f"on {profile.replicas} replicas by {how}"

    def llm_cost(
        self, call: LLMCall, args: tuple[str, ...], child: LogicalProps, rows: float
    ) -> Cost:
        """Cost of asking `call` about `rows` rows of `child`."""
        arg = self.stats.op_stats(call, child.source, args)
        requests = rows * arg.live_fraction * arg.distinct_fraction if args else min(rows, 1.0)
        if requests <= 0:
            return ZERO
        prompt = self.stats.prompt_stats(call, child.source, args)
        profile = self.stats.context.profile(call.model)
        return request_cost(requests, prompt, profile)

    def _udf_cost(self, node: lp.DuckDBQuery, own: LogicalProps) -> tuple[Cost, str]:
        """LLM functions DuckDB calls itself: one request per row; aggregates per group chunk."""
        total = ZERO
        notes = []
        for udf in node.udfs:
            profile = self.stats.context.profile(udf.call.model)
            if udf.aggregate:
                groups = None if node.inputs else self.stats.aggregate_groups(node.sql, udf.name)
                if groups is None:
                    groups = AggregateStats(max(1, int(math.sqrt(own.rows))), 16.0, 16, 16 * 120.0, 16 * 120)
                cost, note = self.aggregate_cost(udf, groups)
                total = total + cost
                notes.append(f"{udf.name}: {note}")
                continue
            prompt = self.stats.prompt_stats(udf.call, None, ())
            total = total + request_cost(own.rows, prompt, profile)
        return total, "; ".join(notes)

    def aggregate_cost(self, udf: lp.LLMUdf, groups: AggregateStats) -> tuple[Cost, str]:
        """Cost of reducing `groups` with `udf`: one request per group when its items fit the
        budget (the context window, or the udf's chunk_tokens), else chunks reduced in rounds."""
        call = udf.call
        profile = self.stats.context.profile(call.model)
        count = self.stats._counter(call.model)
        overhead = count(call.template.instruction_text()) + 8
        fits = max(64, profile.context_window - call.params.max_tokens - 64)
        budget = fits if udf.chunk_tokens is None else max(64, min(udf.chunk_tokens, fits))
        room = max(16, budget - overhead)
        answer = min(float(call.params.max_tokens), profile.text_output_tokens)
        items = max(groups.items, 1.0)
        tokens = groups.chars / CHARS_PER_TOKEN + 3 * items
        total = ZERO
        rounds = 0
        chunks_first = 1
        while True:
            rounds += 1
            chunks = max(1, math.ceil(tokens / room))
            if rounds == 1:
                chunks_first = chunks
            per_request = min(tokens, room) + overhead
            cached = float(overhead // profile.block_size * profile.block_size)
            total = total + request_cost(
                groups.groups * chunks, PromptStats(per_request, cached, answer), profile
            )
            if chunks == 1 or rounds >= 8:
                break
            tokens = chunks * (answer + 3)
        if rounds == 1:
            return total, f"{groups.groups} groups of ~{items:.0f} items: one call per group"
        return total, (
            f"{groups.groups} groups of ~{items:.0f} items: hierarchical, "
            f"{chunks_first} chunks per group, {rounds} rounds"
        )


def request_cost(requests: float, prompt: PromptStats, profile: BackendProfile) -> Cost:
    """Prefill, decode and overheads of `requests` requests shaped like `prompt`.

    Placement: on R replicas (`profile.replicas`) the requests split evenly and the replicas
    run side by side (prefill and decode divided by R), and each replica computes the shared
    prefix once. Prefix-affinity routing keeps requests that share more than the static prefix
    (sorted neighbours, a row's later steps) on one replica; round-robin sends such a pair to
    the same replica only one time in R, so only 1/R of that extra sharing stays cached.
    """
    replicas = max(1, min(profile.replicas, math.ceil(requests)))
    cached_each = prompt.cached_tokens
    if replicas > 1 and profile.routing == "round_robin" and prompt.static_tokens is not None:
        static = min(prompt.static_tokens, cached_each)
        cached_each = static + (cached_each - static) / replicas
    prompt_tokens = requests * prompt.prompt_tokens
    cached = max(0.0, requests - replicas) * cached_each
    computed = prompt_tokens - cached
    per_request = prompt.prompt_tokens - cached_each
    prefill = computed / (profile.prefill_tokens_per_s * replicas)
    attention = (
        requests * 0.5 * per_request * (per_request + 1) * profile.attention_token_step_s / replicas
    )
    per_seq = prompt.prompt_tokens + prompt.output_tokens
    each = requests / replicas
    batch = max(1.0, min(float(profile.max_batch), profile.kv_cache_tokens / max(per_seq, 1.0), each))
    waves = math.ceil(each / batch)
    decode = waves * prompt.output_tokens * profile.decode_step(batch)
    calls = math.ceil(requests / LLM_BATCH_ROWS)
    seconds = (
        prefill + attention + decode + requests * profile.request_overhead_s
        + calls * profile.call_overhead_s
    )
    return Cost(seconds, requests, prompt_tokens, cached, requests * prompt.output_tokens)


def _like(base: LogicalProps, **changes: Any) -> LogicalProps:
    props = LogicalProps(
        base.columns,
        base.rows,
        base.source,
        dict(base.llm_columns),
        dict(base.llm_columns_by_call),
        base.predicates,
    )
    for key, value in changes.items():
        setattr(props, key, value)
    return props


def _plus(columns: tuple[str, ...] | None, extra: str) -> tuple[str, ...] | None:
    return None if columns is None else (*columns, extra)


def _ceil_to(value: float, granularity: int) -> float:
    return float(math.ceil(value / granularity) * granularity)


def _round_need(value: float, rows: float) -> int | None:
    """Needs at or above the input size are 'all' (None): fewer distinct winners."""
    if value >= rows:
        return None
    return max(1, math.ceil(value))


def _shape_rows(sql: str, base: float) -> float:
    """Rows of a query over inputs, from its shape (it cannot run before its inputs exist)."""
    tree = sqltools.parse(sql)
    if tree is None:
        return base
    from sqlglot import exp

    rows = base
    select = tree if isinstance(tree, exp.Select) else None
    if select is not None:
        if select.args.get("where"):
            rows *= DEFAULT_PREDICATE_SELECTIVITY
        if select.args.get("group"):
            rows = max(1.0, math.sqrt(rows))
        elif any(isinstance(n, exp.AggFunc) for p in select.expressions for n in p.walk()):
            rows = 1.0
        limit = select.args.get("limit")
        if limit is not None and isinstance(limit.expression, exp.Literal):
            count = sqltools._literal_int(limit.expression)
            if count is not None:
                rows = min(rows, float(count))
    return rows

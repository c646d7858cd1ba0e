"""Named Python functions that rule files call in `where` conditions and `replace` terms.

Every helper takes the rule context first (the memo's groups and the statement's statistics),
then the rule's arguments. A replacement helper returns None to decline (the rule does not fire).

    >>> uses_column(None, '"__llm_1" = \\'spam\\'', "__llm_1")
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa
from sqlglot import exp

from halo_sql.logical import plan as lp
from halo_sql.logical.sqlexpr import row_local_select
from halo_sql.optimizer import sqltools
from halo_sql.optimizer.memo import GroupRef
from halo_sql.optimizer.rules import RuleContext

HELPERS: dict[str, Callable[..., Any]] = {}


def helper(function: Callable[..., Any]) -> Callable[..., Any]:
    HELPERS[function.__name__] = function
    return function


# -- small conditions --------------------------------------------------------------------------


@helper
def uses_column(ctx: RuleContext | None, predicate: str, column: str) -> bool:
    """The predicate reads `column` (unparsable predicates count as reading everything)."""
    columns = sqltools.predicate_columns(predicate)
    return columns is None or column in columns


@helper
def contains(ctx: RuleContext, items: tuple[Any, ...], item: Any) -> bool:
    return item in items


@helper
def movable(ctx: RuleContext, predicate: str) -> bool:
    """The predicate can run anywhere its columns exist (no subquery, volatile or LLM function)."""
    return sqltools.movable_predicate_sql(predicate)


@helper
def smaller(ctx: RuleContext, a: int, b: int) -> int:
    return min(a, b)


@helper
def wrap_where(ctx: RuleContext, sql: str, predicate: str) -> str:
    return sqltools.wrap_where(sql, predicate)


@helper
def wrap_limit(ctx: RuleContext, sql: str, count: int) -> str:
    return sqltools.wrap_limit(sql, count)


@helper
def narrow_select(ctx: RuleContext, sql: str, columns: tuple[str, ...]) -> str | None:
    return sqltools.narrow_select(sql, columns)


# -- projection pruning --------------------------------------------------------------------------


def _columns(ctx: RuleContext, ref: Any) -> tuple[str, ...] | None:
    if isinstance(ref, GroupRef):
        columns: tuple[str, ...] | None = ctx.logical(ref.group).columns
        return columns
    return None


@helper
def needed_below(ctx: RuleContext, columns: tuple[str, ...], node: lp.PlanNode) -> tuple[str, ...] | None:
    """Columns `node`'s child must provide so that `node` can output `columns`, in the child's
    column order; None when that is every column of the child (nothing to prune)."""
    (child,) = node.children
    available = _columns(ctx, child)
    if available is None:
        return None
    wanted = set(columns)
    if isinstance(node, lp.SQLFilter):
        read = sqltools.predicate_columns(node.predicate)
        if read is None:
            return None
        wanted |= read
    elif isinstance(node, lp.LLMFilter):
        wanted |= set(node.arguments)
    elif isinstance(node, lp.LLMMap):
        wanted.discard(node.output_column)
        wanted |= set(node.arguments)
    kept = tuple(c for c in available if c in wanted)
    if len(kept) == len(available) or not kept:
        return None
    return kept


# -- across the DuckDB boundary ------------------------------------------------------------------


def _uses(ctx: RuleContext, query: lp.DuckDBQuery) -> dict[str, sqltools.InputUse]:
    """What `query` needs of each of its named inputs (cached per search)."""
    cache: dict[Any, Any] = _cache(ctx, "input_uses")
    columns: dict[str, tuple[str, ...]] = {}
    for named in query.inputs:
        cols = _columns(ctx, named.plan)
        if cols is None:
            return {}
        columns[named.name] = cols
    key = (query.sql, tuple(sorted(columns.items())))
    if key not in cache:
        stats = ctx.stats
        lookup = stats.table_columns if stats is not None else (lambda name: None)
        cache[key] = sqltools.input_uses(query.sql, columns, lookup) or {}
    uses: dict[str, sqltools.InputUse] = cache[key]
    return uses


def _cache(ctx: RuleContext, name: str) -> dict[Any, Any]:
    return ctx.cache.setdefault(name, {})


def _group_nodes(ctx: RuleContext, ref: lp.PlanNode) -> list[lp.PlanNode]:
    return ctx.exprs(ref.group) if isinstance(ref, GroupRef) else [ref]


def _rewrite_inputs(
    query: lp.DuckDBQuery, change: Callable[[lp.NamedInput], lp.PlanNode | None]
) -> lp.DuckDBQuery | None:
    inputs = []
    changed = False
    for named in query.inputs:
        plan = change(named)
        if plan is None:
            inputs.append(named)
        else:
            inputs.append(lp.NamedInput(named.name, plan))
            changed = True
    return replace(query, inputs=tuple(inputs)) if changed else None


@helper
def filter_inputs(ctx: RuleContext, query: lp.DuckDBQuery) -> lp.DuckDBQuery | None:
    """`query` with the conditions it places on each named input applied to the input's plan."""
    uses = _uses(ctx, query)

    def change(named: lp.NamedInput) -> lp.PlanNode | None:
        use = uses.get(named.name)
        if use is None or not use.predicates:
            return None
        present = {n.predicate for n in _group_nodes(ctx, named.plan) if isinstance(n, lp.SQLFilter)}
        if isinstance(named.plan, GroupRef):
            present |= ctx.logical(named.plan.group).predicates
        fresh = [p for p in use.predicates if p not in present]
        if not fresh:
            return None
        plan = named.plan
        for predicate in fresh:  # one filter per conjunct: each is known as applied below
            plan = lp.SQLFilter(plan, predicate)
        return plan

    return _rewrite_inputs(query, change)


@helper
def limit_inputs(ctx: RuleContext, query: lp.DuckDBQuery) -> lp.DuckDBQuery | None:
    """`query` with a LIMIT that only reads an input's first rows applied to the input's plan."""
    uses = _uses(ctx, query)

    def change(named: lp.NamedInput) -> lp.PlanNode | None:
        use = uses.get(named.name)
        if use is None or use.limit is None:
            return None
        if use.order:
            return _top_n_below(ctx, named.plan, use.limit, use.order, use.order_where)
        for node in _group_nodes(ctx, named.plan):
            if isinstance(node, lp.Limit) and node.count <= use.limit:
                return None
        return lp.Limit(named.plan, use.limit)

    return _rewrite_inputs(query, change)


def _top_n_below(
    ctx: RuleContext, ref: lp.PlanNode, count: int, order: tuple[str, ...],
    where: tuple[str, ...] = (),
) -> lp.PlanNode | None:
    """The input's plan answering only its first `count` rows in `order` (among those meeting
    `where`): for a chain of LLM maps and projections (one output row per input row) over a
    relational source that has the columns, the top-N runs in the source's SQL, before any
    model work."""
    search = ctx.search
    if search is None or not isinstance(ref, GroupRef):
        return None
    plan = search.memo.first_plan(ref.group)
    chain: list[lp.PlanNode] = []
    node = plan
    while isinstance(node, lp.Project | lp.LLMMap):
        chain.append(node)
        node = node.child
    if not isinstance(node, lp.DuckDBQuery) or node.inputs or node.udfs:
        return None
    columns = sqltools.output_columns(node.sql) or (ctx.stats.columns(node.sql) if ctx.stats else None)
    keys = sqltools.order_columns(order)
    if keys is None:
        return None
    for condition in where:
        read = sqltools.predicate_columns(condition)
        if read is None:
            return None
        keys |= read
    if columns is None or not keys <= set(columns):
        return None  # an ORDER BY on an LLM answer needs every answer first
    source = node.sql
    for condition in where:
        source = sqltools.wrap_where(source, condition)
    sql = sqltools.top_n(source, order, count)
    if node.sql == sql or node.sql.endswith(sql[sql.rindex(" ORDER BY "):]):
        return None  # already the top-N
    rebuilt: lp.PlanNode = replace(node, sql=sql)
    for op in reversed(chain):
        rebuilt = replace(op, child=rebuilt)  # type: ignore[call-arg]
    return rebuilt


@helper
def prune_inputs(ctx: RuleContext, query: lp.DuckDBQuery) -> lp.DuckDBQuery | None:
    """`query` with each input projected on the columns the query reads (the query's text
    becomes the version without the columns its CTEs and derived tables never use)."""
    uses = _uses(ctx, query)

    def change(named: lp.NamedInput) -> lp.PlanNode | None:
        use = uses.get(named.name)
        available = _columns(ctx, named.plan)
        if use is None or use.columns is None or available is None:
            return None
        kept = tuple(c for c in available if c in use.columns) or available[:1]
        if len(kept) == len(available):
            return None
        return lp.Project(named.plan, kept)

    changed = _rewrite_inputs(query, change)
    if changed is None:
        return None
    pruned = next((u.pruned_sql for u in uses.values() if u.pruned_sql), None)
    return replace(changed, sql=pruned) if pruned else None


@helper
def llm_filter_into_input(
    ctx: RuleContext, node: lp.LLMFilter, query: lp.DuckDBQuery
) -> lp.DuckDBQuery | None:
    """`LLMFilter[f(a)](DuckDBQuery(row-local SELECT CAST(n.c AS TEXT) AS a ... FROM n, n := X))`
    as `DuckDBQuery(same SQL, n := LLMFilter[f(c)](X))`: the filter runs on the input's rows,
    where later rules can move it below the input's LLM maps. A row-local SELECT keeps one row
    per input row, so filtering before it keeps the same rows. The input column must already be
    VARCHAR (an LLM answer of text or a label, or a VARCHAR column of the relational source), so
    the prompt is the same."""
    if len(query.inputs) != 1 or query.udfs:
        return None
    named = query.inputs[0]
    if not isinstance(named.plan, GroupRef):
        return None
    tree = row_local_select(query.sql, named.name)
    if tree is None:
        return None
    alias = tree.args["from_"].this.alias_or_name
    projections = {p.alias_or_name: p.unalias() for p in tree.expressions}
    below = ctx.logical(named.plan.group)
    arguments = []
    for argument in node.arguments:
        value = projections.get(argument)
        if isinstance(value, exp.Cast) and value.to.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT):
            value = value.this
        if not isinstance(value, exp.Column) or value.table != alias:
            return None
        if not _is_varchar(ctx, below, value.name):
            return None
        arguments.append(value.name)
    moved = replace(node, child=named.plan, arguments=tuple(arguments))
    return replace(query, inputs=(lp.NamedInput(named.name, moved),))


def _is_varchar(ctx: RuleContext, props: Any, column: str) -> bool:
    if column in props.llm_columns:
        call = props.llm_columns[column][0]
        return bool(pa.types.is_string(call.arrow_type))
    stats = ctx.stats
    if props.source is None or stats is None:
        return False
    types = stats.column_types(props.source)
    return types is not None and types.get(column) == "VARCHAR"


# -- identical LLM calls -------------------------------------------------------------------------


@helper
def merge_identical_maps(ctx: RuleContext, query: lp.DuckDBQuery) -> lp.DuckDBQuery | None:
    """`query` with an LLM map that repeats a map below it (same call, same argument columns)
    removed from an input's operator chain; references to its column read the first map's."""
    search = ctx.search
    if search is None:
        return None
    renames: dict[str, str] = {}

    def change(named: lp.NamedInput) -> lp.PlanNode | None:
        if not isinstance(named.plan, GroupRef):
            return None
        plan = search.memo.first_plan(named.plan.group)
        rewritten = _drop_repeated_maps(plan, renames)
        return rewritten if rewritten is not plan else None

    changed = _rewrite_inputs(query, change)
    if changed is None or not renames:
        return None
    sql = sqltools.rename_columns(changed.sql, renames)
    return replace(changed, sql=sql) if sql is not None else None


def _drop_repeated_maps(plan: lp.PlanNode, renames: dict[str, str]) -> lp.PlanNode:
    """The unary chain `plan` without maps repeating a map below them (renames filled in)."""
    chain: list[lp.PlanNode] = []
    node = plan
    while isinstance(node, lp.LLMMap | lp.LLMFilter | lp.SQLFilter | lp.Project | lp.Limit):
        chain.append(node)
        node = node.children[0]
    seen: dict[tuple[Any, ...], str] = {}
    local: dict[str, str] = {}
    rebuilt: lp.PlanNode = node
    for op in reversed(chain):
        if isinstance(op, lp.LLMMap):
            args = tuple(local.get(a, a) for a in op.arguments)
            key = (op.call, args)
            if key in seen:
                local[op.output_column] = seen[key]
                continue
            seen[key] = op.output_column
            rebuilt = replace(op, child=rebuilt, arguments=args)
        elif isinstance(op, lp.LLMFilter):
            rebuilt = replace(op, child=rebuilt, arguments=tuple(local.get(a, a) for a in op.arguments))
        elif isinstance(op, lp.SQLFilter):
            predicate = op.predicate
            if local:
                renamed = sqltools.rename_columns(f"SELECT 1 WHERE {predicate}", local)
                if renamed is None:
                    return plan
                predicate = renamed.split(" WHERE ", 1)[1]
            rebuilt = replace(op, child=rebuilt, predicate=predicate)
        elif isinstance(op, lp.Project):
            columns: list[str] = []
            for c in op.columns:
                c = local.get(c, c)
                if c not in columns:
                    columns.append(c)
            rebuilt = replace(op, child=rebuilt, columns=tuple(columns))
        else:
            rebuilt = replace(op, child=rebuilt)  # type: ignore[call-arg]
    if not local:
        return plan
    renames.update(local)
    return rebuilt


# -- rules that change answers (off unless SET enable_rules names them) ---------------------------


@helper
def finer_agg_chunks(ctx: RuleContext, query: lp.DuckDBQuery) -> lp.DuckDBQuery | None:
    """`query` with its LLM_AGG reducing in smaller chunks when the cost model prices that lower
    (attention grows with the square of a prompt's length; more, shorter requests batch well)."""
    from halo_sql.llm.base import OutputKind
    from halo_sql.logical.llm_call import LLMFunction

    stats = ctx.stats
    search = ctx.search
    if stats is None or search is None or query.inputs:
        return None
    model = search.cost_model
    udfs = list(query.udfs)
    changed = False
    for i, udf in enumerate(udfs):
        if not udf.aggregate or udf.call.function is not LLMFunction.AGG or udf.chunk_tokens:
            continue
        if udf.call.output.kind is not OutputKind.TEXT:
            continue
        groups = stats.aggregate_groups(query.sql, udf.name)
        if groups is None:
            continue
        # The cheapest chunk size that splits the groups; the search compares it with one call.
        tokens = groups.max_chars / 4 + 3 * groups.max_items
        best, best_cost = None, float("inf")
        for budget in (2048, 1024, 512, 256):
            if tokens <= budget:
                continue
            candidate = replace(udf, chunk_tokens=budget)
            seconds = model.aggregate_cost(candidate, groups)[0].seconds
            if seconds < best_cost:
                best, best_cost = candidate, seconds
        if best is not None:
            udfs[i] = best
            changed = True
    return replace(query, udfs=tuple(udfs)) if changed else None


@helper
def text_after_first_slot(ctx: RuleContext, call: Any) -> bool:
    """Words of the call's template follow its first slot (rendered in place, rows share only
    the text before it)."""
    return bool(call.template.text_after_first_slot)


@helper
def values_last_call(ctx: RuleContext, call: Any) -> Any:
    """The call with its template in the values-last layout (instruction first, then the
    values as `name: value` lines)."""
    from halo_sql.parser.template import values_last

    return replace(call, template=values_last(call.template))


@helper
def prefix_order(ctx: RuleContext, call: Any, arguments: tuple[str, ...], child: Any) -> tuple[int, ...] | None:
    """Slot order putting the columns with the fewest distinct values first (longest shared
    prompt prefixes), for templates whose values follow the instruction as `name: value`
    lines; None when the order would not change."""
    template = call.template
    if not template.data_last or len(arguments) < 2 or not isinstance(child, GroupRef):
        return None
    stats = ctx.stats
    if stats is None:
        return None
    counts = stats.distinct_counts(ctx.logical(child.group).source, tuple(dict.fromkeys(arguments)))
    if not counts:
        return None
    order = tuple(sorted(range(len(arguments)), key=lambda i: (counts[arguments[i]], i)))
    return None if order == tuple(range(len(arguments))) else order


@helper
def reorder_slots(ctx: RuleContext, call: Any, order: tuple[int, ...]) -> Any:
    template = call.template
    texts = [p for p in template.parts if isinstance(p, str)]
    slots = template.slots
    parts = (*texts, *(slots[i] for i in order))
    return replace(call, template=replace(template, parts=parts))


@helper
def reorder_arguments(ctx: RuleContext, arguments: tuple[str, ...], order: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(arguments[i] for i in order)


SEMANTIC_JOIN_MAX_LABELS = 32
"""The label side of a semantic join must have at most this many distinct values."""


@helper
def classify_then_join(ctx: RuleContext, node: lp.LLMFilter) -> lp.PlanNode | None:
    """`LLMFilter[f(x, y)](pairs of X and Y)` as a hash join: each row of X classified among the
    distinct values of y (one request per distinct x: equal prompts are sent once), then DuckDB
    joins X's rows to Y's rows on label = y:

        DuckDBQuery(SELECT ... FROM __halo_sj AS l JOIN (<Y's rows>) AS r ON l.label = r.y,
                    __halo_sj := LLMMap[label = classify x among values of y](<X's rows>))

    The pairs' source must be two FROM items with no condition between them (`split_pairs`);
    the side with fewer distinct values (at most 32) gives the labels. None: not a join."""
    from halo_sql.llm.base import DecodingParams, OutputKind, OutputSpec
    from halo_sql.logical.llm_call import LLMFunction
    from halo_sql.parser.template import PromptTemplate, Slot

    call = node.call
    if call.output.kind is not OutputKind.BOOLEAN or len(node.arguments) != 2:
        return None
    if node.arguments[0] == node.arguments[1] or not isinstance(node.child, GroupRef):
        return None
    stats = ctx.stats
    if stats is None:
        return None
    sources = [
        n for n in ctx.exprs(node.child.group)
        if isinstance(n, lp.DuckDBQuery) and not n.inputs and not n.udfs
    ]
    best: tuple[int, int, sqltools.JoinSides, tuple[str, ...]] | None = None
    for source in sources:
        for classified in (0, 1):
            x, y = node.arguments[classified], node.arguments[1 - classified]
            sides = sqltools.split_pairs(source.sql, x, y)
            if sides is None:
                continue
            labels = stats.distinct_values(sides.right, y, SEMANTIC_JOIN_MAX_LABELS + 1)
            if labels is None or not 1 < len(labels) <= SEMANTIC_JOIN_MAX_LABELS:
                continue
            if best is None or len(labels) < len(best[3]):
                best = (classified, 0, sides, labels)
        if best is not None:
            break
    if best is None:
        return None
    classified, _, sides, labels = best
    x, y = node.arguments[classified], node.arguments[1 - classified]
    slots = call.template.slots
    x_slot, y_slot = slots[classified], slots[1 - classified]
    question = call.template.instruction_text().strip()
    template = PromptTemplate(
        (f"Which {y_slot.name} makes this true? {question}", Slot(x_slot.qualifier, x_slot.name)),
        data_last=True,
    )
    classify = replace(
        call,
        function=LLMFunction.CLASSIFY,
        template=template,
        output=OutputSpec.choice(labels),
        params=DecodingParams(32, call.params.temperature, call.params.seed),
    )
    label = f"__sj_{x}_{y}"
    name = f"__halo_sj_{x}_{y}"
    mapped = lp.LLMMap(lp.DuckDBQuery(sides.left), classify, (x,), label)
    picked = ", ".join(
        f'{"l" if c in sides.left_columns else "r"}.{sqltools.quote(c)} AS {sqltools.quote(c)}'
        for c in sides.columns
    )
    sql = (
        f"SELECT {picked} FROM {name} AS l JOIN ({sides.right}) AS r "
        f"ON l.{sqltools.quote(label)} = r.{sqltools.quote(y)}"
    )
    return lp.DuckDBQuery(sql, (lp.NamedInput(name, mapped),))

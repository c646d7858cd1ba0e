"""SQL-text rewrites across the DuckDB boundary (sqlglot, DuckDB dialect).

DuckDB plans the SQL of every `DuckDBQuery` itself (join order, scan pushdown); these helpers only
let rules move work *between* a DuckDBQuery and the plans of its named inputs:

    >>> wrap_where('SELECT a AS "t.a" FROM t', '"t.a" > 2')
    'SELECT * FROM (SELECT a AS "t.a" FROM t) AS __halo_f WHERE "t.a" > 2'
    >>> output_columns('SELECT a AS "t.a", CAST(b AS TEXT) AS "__arg_0" FROM t')
    ('t.a', '__arg_0')
    >>> narrow_select('SELECT a AS "t.a", b AS "t.b" FROM t', ('t.b',))
    'SELECT b AS "t.b" FROM t'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.pushdown_predicates import pushdown_predicates
from sqlglot.optimizer.pushdown_projections import pushdown_projections
from sqlglot.optimizer.qualify import qualify

from halo_sql.logical.sqlexpr import VOLATILE_FUNCTIONS, conjuncts, drop_unused_ctes

DIALECT = "duckdb"


@lru_cache(maxsize=4096)
def _parse(sql: str) -> exp.Expression | None:
    try:
        tree = sqlglot.parse_one(sql, read=DIALECT)
        return tree if isinstance(tree, exp.Expression) else None
    except SqlglotError:
        return None


def parse(sql: str) -> exp.Expression | None:
    """A fresh copy of the parsed statement (None if sqlglot cannot parse it)."""
    tree = _parse(sql)
    return tree.copy() if tree is not None else None


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def output_columns(sql: str) -> tuple[str, ...] | None:
    """Names of the columns a SELECT returns, when the text alone tells (no `*`)."""
    tree = _parse(sql)
    if not isinstance(tree, exp.Select):
        return None
    names = []
    for projection in tree.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            return None
        names.append(projection.alias_or_name)
    return tuple(names) if all(names) else None


def wrap_where(sql: str, predicate: str) -> str:
    """`sql` filtered by `predicate` (over its output columns); DuckDB pushes it into scans.
    A query this function already wrapped gets the predicate ANDed to its WHERE.

    >>> wrap_where(wrap_where("SELECT 1 AS a", "a > 0"), "a < 2")
    'SELECT * FROM (SELECT 1 AS a) AS __halo_f WHERE a > 0 AND a < 2'
    """
    tree = parse(sql)
    if (
        isinstance(tree, exp.Select)
        and len(tree.expressions) == 1
        and isinstance(tree.expressions[0], exp.Star)
        and isinstance((tree.args.get("from_") or tree.args.get("from") or exp.From()).this, exp.Subquery)
        and tree.args["from_" if "from_" in tree.args else "from"].this.alias == "__halo_f"
        and not any(tree.args.get(k) for k in ("joins", "group", "having", "order", "limit", "qualify"))
    ):
        condition = _parse(f"SELECT 1 WHERE {predicate}")
        where = condition.args.get("where") if condition is not None else None
        if where is not None:
            return tree.where(where.this.copy(), copy=False).sql(DIALECT)
    return f"SELECT * FROM ({sql}) AS __halo_f WHERE {predicate}"


def wrap_limit(sql: str, count: int) -> str:
    return f"SELECT * FROM ({sql}) AS __halo_l LIMIT {count}"


def narrow_select(sql: str, keep: tuple[str, ...]) -> str | None:
    """`sql` returning only the columns in `keep` (in its own order), or None when that would
    change its rows (DISTINCT, set operations, `*`) or leave no column."""
    tree = parse(sql)
    if not isinstance(tree, exp.Select) or tree.args.get("distinct"):
        return None
    names = output_columns(sql)
    if names is None:
        return None
    wanted = set(keep)
    kept = [p for p, n in zip(tree.expressions, names, strict=True) if n in wanted]
    if not kept or len(kept) == len(names):
        return None
    tree.set("expressions", kept)
    return tree.sql(DIALECT)


def predicate_columns(predicate: str) -> set[str] | None:
    """Column names a predicate reads (None if it cannot be parsed)."""
    tree = _parse(f"SELECT 1 WHERE {predicate}")
    if tree is None:
        return None
    where = tree.args.get("where")
    return {c.name for c in where.find_all(exp.Column)} if where is not None else set()


def is_movable_predicate(node: exp.Expr) -> bool:
    """True when a predicate may be evaluated anywhere its columns exist: no subquery, aggregate,
    window, volatile or unregistered (LLM) function, no parameter."""
    for n in node.walk():
        if isinstance(n, exp.Query | exp.AggFunc | exp.Window | exp.Placeholder | exp.Parameter):
            return False
        if isinstance(n, exp.Anonymous):
            return False  # our LLM functions are registered per query: not callable elsewhere
        if isinstance(n, exp.Rand) or (
            isinstance(n, exp.Func) and n.sql_name().lower() in VOLATILE_FUNCTIONS
        ):
            return False
    return True


def movable_predicate_sql(predicate: str) -> bool:
    tree = _parse(f"SELECT 1 WHERE {predicate}")
    where = tree.args.get("where") if tree is not None else None
    return where is not None and is_movable_predicate(where.this)


def rename_columns(sql: str, mapping: Mapping[str, str]) -> str | None:
    """`sql` with column references renamed (`__llm_3` -> `__llm_1`); None if unparsable."""
    tree = parse(sql)
    if tree is None:
        return None
    for column in list(tree.find_all(exp.Column)):
        if column.name in mapping:
            column.set("this", exp.to_identifier(mapping[column.name], quoted=True))
    return tree.sql(DIALECT)


def rename_tables(sql: str, mapping: Mapping[str, str]) -> str | None:
    """`sql` with table references renamed (aliases kept, so column references still bind)."""
    tree = parse(sql)
    if tree is None:
        return None
    for table in list(tree.find_all(exp.Table)):
        if table.name in mapping and not table.args.get("db"):
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name)))
            table.set("this", exp.to_identifier(mapping[table.name]))
    return tree.sql(DIALECT)


# -- what a query asks of its named inputs ---------------------------------------------------


@dataclass
class InputUse:
    """What a DuckDBQuery needs from one named input."""

    predicates: list[str] = field(default_factory=list)
    """Conditions every row the query reads from the input must satisfy (over its columns)."""
    limit: int | None = None
    """Only the input's first `limit` rows are ever read (in `order`, when it is given)."""
    order: tuple[str, ...] = ()
    """ORDER BY keys over the input's columns: the rows read are the input's first `limit`
    rows in this order (a top-N), not its first rows..."""
    order_where: tuple[str, ...] = ()
    """... among the rows satisfying these conditions (over the input's columns)."""
    columns: set[str] | None = None
    """Columns the query reads once unused columns of its CTEs and derived tables are dropped
    (None: all, or unknown)."""
    pruned_sql: str | None = None
    """The query with those unused columns dropped (sqlglot's projection pushdown): the text to
    run when the input is narrowed to `columns`."""


def input_uses(
    sql: str,
    inputs: Mapping[str, tuple[str, ...]],
    table_columns: Callable[[str], Mapping[str, str] | None],
) -> dict[str, InputUse] | None:
    """For each named input referenced exactly once, the predicates, limit and columns the query
    needs of it; None when the SQL cannot be analysed (it then keeps every row and column)."""
    tree = parse(sql)
    if tree is None or not isinstance(tree, exp.Query):
        return None
    names = dict(inputs)
    cte_names = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    schema: dict[str, object] = {}
    counts: dict[str, int] = {}
    for table in tree.find_all(exp.Table):
        name = table.name
        if not name or table.args.get("db") or table.args.get("catalog"):
            return None
        if name in names:
            counts[name] = counts.get(name, 0) + 1
            schema[name] = {c: "VARCHAR" for c in names[name]}
        elif name not in cte_names:
            columns = table_columns(name)
            if columns is None:
                return None
            schema[name] = dict(columns)
    if not counts:
        return {}
    try:
        qualified = qualify(
            tree,
            schema=schema,
            dialect=DIALECT,
            quote_identifiers=False,
            identify=False,
            validate_qualify_columns=True,
        )
        pushed = pushdown_predicates(qualified.copy())
        pruned = pushdown_projections(qualified.copy())
        pruned_sql = pruned.sql(DIALECT)
    except (SqlglotError, KeyError, ValueError, AttributeError):
        return None
    out: dict[str, InputUse] = {}
    for name, count in counts.items():
        if count != 1:
            continue
        use = InputUse()
        use.predicates = _predicates_on(pushed, name)
        use.limit = _limit_on(qualified, name)
        if use.limit is None:
            top = _top_n_on(qualified, name)
            if top is not None:
                use.limit, use.order, use.order_where = top
        use.columns = _columns_read(pruned, name)
        use.pruned_sql = pruned_sql
        out[name] = use
    return out


def _reference(tree: exp.Expression, name: str) -> exp.Table | None:
    for table in tree.find_all(exp.Table):
        if table.name == name:
            return table
    return None


def _predicates_on(tree: exp.Expression, name: str) -> list[str]:
    table = _reference(tree, name)
    if table is None:
        return []
    select = table.parent_select
    if select is None or table.parent is None:
        return []
    alias = table.alias_or_name
    from_ = select.args.get("from_") or select.args.get("from")
    in_from = from_ is not None and from_.this is table
    joins = select.args.get("joins") or []
    in_join = any(j.this is table for j in joins)
    if not (in_from or in_join):
        return []  # e.g. a table function argument
    for join in joins:
        side = (join.side or "").upper()
        if not side:
            continue
        # Rows of the input are only dropped safely where it is never null-extended.
        if not (in_from and side == "LEFT"):
            return []
    where = select.args.get("where")
    if where is None:
        return []
    out = []
    for conjunct in conjuncts(where.this):
        columns = list(conjunct.find_all(exp.Column))
        if not columns or any(c.table != alias for c in columns):
            continue
        if not is_movable_predicate(conjunct):
            continue
        moved = conjunct.copy().transform(
            lambda n: exp.column(exp.to_identifier(n.name, quoted=True))
            if isinstance(n, exp.Column)
            else n
        )
        out.append(moved.sql(DIALECT))
    return out


def _limit_on(tree: exp.Expression, name: str) -> int | None:
    """A LIMIT that only ever reads the first rows of `name` through plain projections."""
    table = _reference(tree, name)
    if table is None:
        return None
    ctes = {cte.alias_or_name: cte for cte in tree.find_all(exp.CTE)}
    cte_uses: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        if t.name in ctes:
            cte_uses[t.name] = cte_uses.get(t.name, 0) + 1
    source: exp.Expression = table
    while True:
        select = source.parent_select if isinstance(source, exp.Table) else source.parent_select
        if select is None or not _plain_select(select, allow_limit=True):
            return None
        from_ = select.args.get("from_") or select.args.get("from")
        if from_ is None or select.args.get("joins"):
            return None
        limit = select.args.get("limit")
        if limit is not None:
            count = _literal_int(limit.expression)
            offset = select.args.get("offset")
            extra = _literal_int(offset.expression) if offset is not None else 0
            if count is None or extra is None:
                return None
            return count + extra
        # No LIMIT here: follow the rows upward if this SELECT is a CTE (used once) or a
        # derived table whose only consumer is a plain SELECT.
        parent = select.parent
        if isinstance(parent, exp.CTE):
            alias = parent.alias_or_name
            if cte_uses.get(alias) != 1:
                return None
            source = next(t for t in tree.find_all(exp.Table) if t.name == alias)
        elif isinstance(parent, exp.Subquery):
            source = parent
        else:
            return None


def _top_n_on(
    tree: exp.Expression, name: str
) -> tuple[int, tuple[str, ...], tuple[str, ...]] | None:
    """`SELECT ... FROM name [WHERE p] ORDER BY <name's columns> LIMIT k`: the first k rows of
    `name` in that order (among those satisfying p) are all the query reads; the ORDER BY keys
    and the conditions p over `name`'s columns. p must be movable (no subquery, LLM or
    volatile function)."""
    table = _reference(tree, name)
    select = table.parent_select if table is not None else None
    if table is None or not isinstance(select, exp.Select):
        return None
    from_ = select.args.get("from_")
    if from_ is None or from_.this is not table or select.args.get("joins"):
        return None
    for clause in ("group", "having", "qualify", "distinct", "laterals", "windows"):
        if select.args.get(clause):
            return None
    alias = table.alias_or_name

    def over_input(node: exp.Expr) -> str:
        moved = node.copy().transform(
            lambda n: exp.column(exp.to_identifier(n.name, quoted=True))
            if isinstance(n, exp.Column)
            else n
        )
        return moved.sql(DIALECT)

    conditions = []
    where = select.args.get("where")
    for conjunct in conjuncts(where.this) if where is not None else []:
        columns = list(conjunct.find_all(exp.Column))
        if any(c.table != alias for c in columns) or not is_movable_predicate(conjunct):
            return None
        conditions.append(over_input(conjunct))
    order, limit = select.args.get("order"), select.args.get("limit")
    if order is None or limit is None:
        return None
    count = _literal_int(limit.expression)
    offset = select.args.get("offset")
    extra = _literal_int(offset.expression) if offset is not None else 0
    if count is None or extra is None:
        return None
    for projection in select.expressions:
        if any(isinstance(n, exp.AggFunc | exp.Window) for n in projection.walk()):
            return None
    named = {p.alias: p.unalias() for p in select.expressions if isinstance(p, exp.Alias)}
    keys = []
    for ordered in order.expressions:
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table and key.name in named:
            key = named[key.name]  # ORDER BY an output alias
        if not isinstance(key, exp.Column) or key.table != alias:
            return None
        moved = ordered.copy()
        moved.set("this", exp.column(exp.to_identifier(key.name, quoted=True)))
        keys.append(moved.sql(DIALECT))
    return count + extra, tuple(keys), tuple(conditions)


def order_columns(order: tuple[str, ...]) -> set[str] | None:
    """Column names ORDER BY keys read (None if they cannot be parsed).

    >>> sorted(order_columns(('"t.a" DESC', 'b')))
    ['b', 't.a']
    """
    tree = _parse(f"SELECT 1 ORDER BY {', '.join(order)}")
    if tree is None:
        return None
    return {c.name for c in tree.find_all(exp.Column)}


def top_n(sql: str, order: tuple[str, ...], count: int) -> str:
    """`sql`'s first `count` rows in `order` (the query DuckDB runs as a top-N).

    >>> top_n('SELECT a AS "t.a" FROM t', ('"t.a" DESC',), 3)
    'SELECT * FROM (SELECT a AS "t.a" FROM t) AS __halo_top ORDER BY "t.a" DESC LIMIT 3'
    """
    return f"SELECT * FROM ({sql}) AS __halo_top ORDER BY {', '.join(order)} LIMIT {count}"


def _plain_select(select: exp.Expression, *, allow_limit: bool) -> bool:
    if not isinstance(select, exp.Select):
        return False
    for key in ("where", "group", "having", "qualify", "order", "distinct", "laterals"):
        if select.args.get(key):
            return False
    if not allow_limit and select.args.get("limit"):
        return False
    for projection in select.expressions:
        if any(isinstance(n, exp.AggFunc | exp.Window | exp.Query) for n in projection.walk()):
            return False
        if not is_movable_predicate(projection) and any(
            isinstance(n, exp.Anonymous) for n in projection.walk()
        ):
            return False  # an LLM function per row: fewer rows is fine, but keep it simple
    return True


def _literal_int(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string and str(node.this).isdigit():
        return int(node.this)
    return None


def _columns_read(tree: exp.Expression, name: str) -> set[str] | None:
    table = _reference(tree, name)
    if table is None:
        return None
    alias = table.alias_or_name
    select = table.parent_select
    scope_root = select if select is not None else tree
    out: set[str] = set()
    for node in scope_root.walk():
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return None
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                return None
            if node.table == alias:
                out.add(node.name)
    return out


@dataclass(frozen=True)
class JoinSides:
    """A relational source of pairs split into its two sides (see `split_pairs`)."""

    left: str
    """SQL of the side that computes the column asked about: its columns, its own conditions."""
    right: str
    """SQL of the other side."""
    columns: tuple[str, ...]
    """The source's output columns, in order."""
    left_columns: tuple[str, ...]


def split_pairs(sql: str, left_column: str, right_column: str) -> JoinSides | None:
    """The two sides of a source that pairs the rows of two FROM items with no condition
    between them (a cross product, or an inner join whose ON held only LLM predicates), when
    `left_column` is computed from one item and `right_column` from the other; None otherwise.

    >>> sides = split_pairs('SELECT r.id AS "r.id", CAST(p.c AS TEXT) AS "a1", CAST(r.t AS TEXT) '
    ...                     'AS "a0" FROM reviews AS r, cats AS p WHERE r.id < 9', "a0", "a1")
    >>> sides.left, sides.right
    ('SELECT r.id AS "r.id", CAST(r.t AS TEXT) AS "a0" FROM reviews AS r WHERE r.id < 9', 'SELECT CAST(p.c AS TEXT) AS "a1" FROM cats AS p')
    """
    tree = parse(sql)
    if not isinstance(tree, exp.Select):
        return None
    for key in ("group", "having", "qualify", "order", "limit", "offset", "distinct", "laterals",
                "windows"):
        if tree.args.get(key):
            return None
    from_ = tree.args.get("from_")
    joins = tree.args.get("joins") or []
    if from_ is None or len(joins) != 1:
        return None
    join = joins[0]
    if join.side or (join.kind or "").upper() not in ("", "CROSS", "INNER") or join.args.get("using"):
        return None
    on = join.args.get("on")
    if on is not None and not (isinstance(on, exp.Boolean) and on.this is True):
        return None
    items = [from_.this, join.this]
    aliases = [item.alias_or_name for item in items]
    if len(set(aliases)) != 2:
        return None

    def side(node: exp.Expr) -> int | None:
        """0 or 1: the item whose columns `node` reads; 2: none; None: both or unknown."""
        tables = {c.table for c in node.find_all(exp.Column)}
        if not tables:
            return 2
        if len(tables) > 1 or next(iter(tables)) not in aliases:
            return None
        return aliases.index(next(iter(tables)))

    names = output_columns(sql)
    if names is None:
        return None
    by_side: list[list[exp.Expr]] = [[], []]
    owner: dict[str, int] = {}
    for projection, name in zip(tree.expressions, names, strict=True):
        where = side(projection)
        if where is None:
            return None
        where = 0 if where == 2 else where
        by_side[where].append(projection)
        owner[name] = where
    if left_column not in owner or right_column not in owner:
        return None
    first = owner[left_column]
    if owner[right_column] == first:
        return None
    conditions: list[list[exp.Expr]] = [[], []]
    where_ = tree.args.get("where")
    for conjunct in conjuncts(where_.this) if where_ is not None else []:
        at = side(conjunct)
        if at is None:
            return None
        conditions[0 if at == 2 else at].append(conjunct)
    if not by_side[1 - first]:
        return None

    def side_sql(index: int) -> str:
        select = exp.select(*[p.copy() for p in by_side[index]]).from_(items[index].copy())
        if conditions[index]:
            select = select.where(exp.and_(*[c.copy() for c in conditions[index]]))
        with_ = tree.args.get("with_")
        if with_ is not None:
            select.set("with_", with_.copy())
            drop_unused_ctes(select)
        return select.sql(DIALECT)

    left_names = tuple(n for n in names if owner[n] == first)
    return JoinSides(side_sql(first), side_sql(1 - first), names, left_names)


def without_output_functions(sql: str, functions: list[str]) -> str | None:
    """`sql` with every call of `functions` replaced by NULL, when they are called only in the
    SELECT list of the outermost query (so the rows are the same); else None.

    >>> without_output_functions("SELECT k, f(LIST(x)) AS s FROM t GROUP BY k", ["f"])
    'SELECT k, NULL AS s FROM t GROUP BY k'
    """
    tree = parse(sql)
    if not isinstance(tree, exp.Select) or tree.args.get("distinct"):
        return None
    names = {f.lower() for f in functions}
    calls = [n for n in tree.find_all(exp.Anonymous) if str(n.this).lower() in names]
    projections = {id(n) for p in tree.expressions for n in p.walk()}
    if not calls or any(id(c) not in projections for c in calls):
        return None
    for call in calls:
        call.replace(exp.Null())
    return tree.sql(DIALECT)


def aggregate_probe(sql: str, function: str) -> str | None:
    """A query measuring the groups an aggregate LLM function `function` reduces: one row per
    group with its item count `n` and characters `chars` (None when the SQL is not a plain
    grouped SELECT calling it once)."""
    tree = parse(sql)
    if tree is None:
        return None
    calls = [
        n for n in tree.find_all(exp.Anonymous) if str(n.this).lower() == function.lower()
    ]
    if len(calls) != 1 or len(calls[0].expressions) != 1:
        return None
    select = calls[0].parent_select
    if not isinstance(select, exp.Select):
        return None
    if any(
        isinstance(n, exp.Anonymous) and str(n.this).lower().startswith("__halo_fn")
        for n in (select.args.get("where") or exp.Where(this=exp.true())).walk()
    ):
        return None
    items = calls[0].expressions[0].copy()
    probe = select.copy()
    for key in ("order", "limit", "offset", "having", "qualify", "distinct"):
        probe.set(key, None)
    n = exp.Anonymous(this="len", expressions=[items.copy()])
    chars = exp.Anonymous(this="list_sum", expressions=[
        exp.Anonymous(this="list_transform", expressions=[
            items.copy(),
            exp.Lambda(
                this=exp.Anonymous(this="length", expressions=[exp.column("__x")]),
                expressions=[exp.to_identifier("__x")],
            ),
        ])
    ])
    probe.set("expressions", [n.as_("n"), chars.as_("chars")])
    for other in probe.find_all(exp.Anonymous):
        if str(other.this).lower().startswith("__halo_fn"):
            return None
    inner = probe.sql(DIALECT)
    return (
        "SELECT count(*), avg(n), max(n), avg(chars), max(chars) "
        f"FROM ({inner}) AS __halo_p WHERE n > 0"
    )

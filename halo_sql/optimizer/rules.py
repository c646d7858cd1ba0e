"""Rewrite rules: load the rule files of `optimizer_rules/` (grammar/rules.lark) and apply them.

A rule file holds one rule: a pattern over plan nodes, an optional condition, a replacement.

    >>> rule = parse_rule('''
    ...   rule push_limit_below_project
    ...   match Limit(count = $n, child = $p:Project(child = $x))
    ...   replace $p{child = Limit(child = $x, count = $n)}
    ... ''')
    >>> rule.name, rule.root_type
    ('push_limit_below_project', 'Limit')

Matching runs over group expressions (children are `GroupRef`s): a nested node pattern is tried
against every expression of the child group, so one rule can bind several alternatives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedInput, VisitError

from halo_sql.errors import ParseError
from halo_sql.logical import plan as lp
from halo_sql.optimizer.memo import GroupRef

NODE_TYPES: dict[str, type[lp.PlanNode]] = {
    "DuckDBQuery": lp.DuckDBQuery,
    "LLMFilter": lp.LLMFilter,
    "LLMMap": lp.LLMMap,
    "SQLFilter": lp.SQLFilter,
    "Project": lp.Project,
    "Limit": lp.Limit,
}

Bindings = dict[str, Any]


# -- the rule AST ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class NodePattern:
    type_name: str
    fields: tuple[tuple[str, Any], ...]
    bind: str | None = None


@dataclass(frozen=True)
class Construct:
    type_name: str
    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Update:
    var: str
    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ListTerm:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or" | "not" | "eq" | "ne"
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Rule:
    """One rewrite: `match` pattern, optional `where` condition, `replace` term."""

    name: str
    pattern: NodePattern
    condition: Any
    replacement: Any
    flags: frozenset[str] = frozenset()
    source: str = ""
    """The rule file's text (its header comment states the rewrite and when it must not fire)."""

    @property
    def root_type(self) -> str:
        return self.pattern.type_name

    @property
    def off_by_default(self) -> bool:
        return "off" in self.flags

    @property
    def child_patterns(self) -> tuple[int, ...]:
        """Child positions (of the root) that the pattern descends into (must be explored)."""
        cls = NODE_TYPES[self.pattern.type_name]
        probe = [f.name for f in dataclasses.fields(cls)]
        out = []
        for name, sub in self.pattern.fields:
            if isinstance(sub, NodePattern) and name == "child":
                out.append(probe.index(name))
        return tuple(out)


# -- parsing ---------------------------------------------------------------------------------


@cache
def _parser() -> Lark:
    from halo_sql.parser.grammars import grammar

    return grammar("rules", cache=True)  # lark caches the compiled tables on disk


class _ToAst(Transformer):  # type: ignore[type-arg]
    def rule(self, items: list[Any]) -> Rule:
        name = str(items[0])
        rest = items[1:]
        flags: frozenset[str] = frozenset()
        if rest and isinstance(rest[0], frozenset):
            flags, rest = rest[0], rest[1:]
        pattern = rest[0]
        condition = rest[1] if len(rest) == 3 else None
        replacement = rest[-1]
        if isinstance(pattern, Var | Wildcard | Literal):
            raise ValueError(f"rule {name}: the pattern must start with a node type")
        return Rule(name, pattern, condition, replacement, flags)

    def flags(self, items: list[Token]) -> frozenset[str]:
        return frozenset(str(i) for i in items)

    def condition(self, items: list[Any]) -> Any:
        return items[0]

    def or_(self, items: list[Any]) -> BoolOp:
        return BoolOp("or", tuple(items))

    def and_(self, items: list[Any]) -> BoolOp:
        return BoolOp("and", tuple(items))

    def not_(self, items: list[Any]) -> BoolOp:
        return BoolOp("not", tuple(items))

    def eq(self, items: list[Any]) -> BoolOp:
        return BoolOp("eq", tuple(items))

    def ne(self, items: list[Any]) -> BoolOp:
        return BoolOp("ne", tuple(items))

    def bound(self, items: list[Any]) -> NodePattern:
        var, node = items
        return dataclasses.replace(node, bind=str(var)[1:])

    def var(self, items: list[Token]) -> Var:
        return Var(str(items[0])[1:])

    def wildcard(self, _: list[Any]) -> Wildcard:
        return Wildcard()

    def node_pattern(self, items: list[Any]) -> NodePattern:
        type_name = str(items[0])
        fields = tuple(i for i in items[1:] if i is not None)
        _check_fields(type_name, [f for f, _ in fields])
        return NodePattern(type_name, fields)

    def field_pattern(self, items: list[Any]) -> tuple[str, Any]:
        return str(items[0]), items[1]

    def construct(self, items: list[Any]) -> Construct:
        type_name = str(items[0])
        fields = tuple(i for i in items[1:] if i is not None)
        _check_fields(type_name, [f for f, _ in fields], complete=True)
        return Construct(type_name, fields)

    def update(self, items: list[Any]) -> Update:
        return Update(str(items[0])[1:], tuple(i for i in items[1:] if i is not None))

    def ref(self, items: list[Token]) -> Var:
        return Var(str(items[0])[1:])

    def call(self, items: list[Any]) -> Call:
        return Call(str(items[0]), tuple(i for i in items[1:] if i is not None))

    def field_term(self, items: list[Any]) -> tuple[str, Any]:
        return str(items[0]), items[1]

    def string(self, items: list[Token]) -> Literal:
        raw = str(items[0])[1:-1]
        return Literal(raw.encode().decode("unicode_escape") if "\\" in raw else raw)

    def int(self, items: list[Token]) -> Literal:
        return Literal(int(items[0]))

    def none(self, _: list[Any]) -> Literal:
        return Literal(None)

    def true(self, _: list[Any]) -> Literal:
        return Literal(True)

    def false(self, _: list[Any]) -> Literal:
        return Literal(False)

    def list(self, items: list[Any]) -> ListTerm:
        return ListTerm(tuple(i for i in items if i is not None))


def _check_fields(type_name: str, names: list[str], *, complete: bool = False) -> None:
    cls = NODE_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown node type {type_name!r} (known: {', '.join(sorted(NODE_TYPES))})")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        if name not in known:
            raise ValueError(f"{type_name} has no field {name!r} (fields: {', '.join(known)})")
    if complete:
        required = [
            n for n, f in known.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in names]
        if missing:
            raise ValueError(f"{type_name}(...) needs field(s) {', '.join(missing)}")


def parse_rule(text: str, *, origin: str = "<rule>") -> Rule:
    """Parse one rule's text; errors name the file and line."""
    try:
        tree = _parser().parse(text)
        rule = _ToAst().transform(tree)
    except UnexpectedInput as exc:
        raise ParseError(f"{origin}:{exc.line}:{exc.column}: bad rule syntax: {exc}") from None
    except VisitError as exc:
        raise ParseError(f"{origin}: {exc.orig_exc}") from None
    return dataclasses.replace(rule, source=text)


def parse_term(text: str) -> Any:
    """Parse a replacement term on its own (golden fixtures write input plans this way)."""
    from halo_sql.parser.grammars import grammar

    try:
        tree = grammar("rules", start="term", cache=True).parse(text)
    except UnexpectedInput as exc:
        raise ParseError(f"bad plan term at {exc.line}:{exc.column}: {exc}") from None
    return _ToAst().transform(tree)


# -- the registry ----------------------------------------------------------------------------


def rules_dir() -> Path:
    """`optimizer_rules/` (shipped in the package as `halo_sql/_rules`)."""
    return Path(__file__).resolve().parents[1] / "_rules"


@dataclass(frozen=True)
class Registry:
    """The ordered rule list: rule files, plus rules written in Python (named `name (python)`)."""

    rules: tuple[Rule, ...]
    python: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules) + self.python


@cache
def load_registry(directory: str | None = None) -> Registry:
    """The rules named in `REGISTRY`, in its order. Every `.rule` file must be registered and every
    registered name must have a file: no auto-discovery, no silent leftovers."""
    root = Path(directory) if directory else rules_dir()
    names: list[str] = []
    python: list[str] = []
    for line in (root / "REGISTRY").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, kind = line.partition(" ")
        (python if kind.strip() == "(python)" else names).append(name)
    files = {p.stem for p in root.glob("*.rule")}
    unregistered = sorted(files - set(names))
    if unregistered:
        raise ParseError(f"{root}/REGISTRY: rule file(s) not registered: {', '.join(unregistered)}")
    rules = []
    for name in names:
        path = root / f"{name}.rule"
        if not path.is_file():
            raise ParseError(f"{root}/REGISTRY names {name!r} but there is no {path.name}")
        rule = parse_rule(path.read_text(), origin=str(path))
        if rule.name != name:
            raise ParseError(f"{path}: the file declares rule {rule.name!r}; name it {rule.name}.rule")
        rules.append(rule)
    return Registry(tuple(rules), tuple(python))


# -- matching and rewriting ------------------------------------------------------------------


class RuleContext:
    """What conditions and helpers may ask of the search (the memo's groups and statistics)."""

    stats: Any = None
    """The statement's `Statistics` (None in contexts without a database)."""
    search: Any = None
    """The running `Search` (its memo and cost model)."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[Any, Any]] = {}
        """Per-search caches of helpers (e.g. what a query's SQL asks of its inputs)."""

    def exprs(self, group: int) -> list[lp.PlanNode]:
        raise NotImplementedError

    def logical(self, group: int) -> Any:
        raise NotImplementedError


Helper = Callable[..., Any]


def match(
    pattern: Any, value: Any, ctx: RuleContext, bindings: Bindings
) -> Iterator[Bindings]:
    """Every way `value` matches `pattern`, extending `bindings`."""
    if isinstance(pattern, Wildcard):
        yield bindings
        return
    if isinstance(pattern, Var):
        if pattern.name in bindings:
            if bindings[pattern.name] == value:
                yield bindings
            return
        yield {**bindings, pattern.name: value}
        return
    if isinstance(pattern, Literal):
        if value == pattern.value:
            yield bindings
        return
    assert isinstance(pattern, NodePattern)
    if isinstance(value, GroupRef):
        for node in ctx.exprs(value.group):
            yield from _match_node(pattern, node, ctx, bindings)
        return
    yield from _match_node(pattern, value, ctx, bindings)


def _match_node(
    pattern: NodePattern, node: Any, ctx: RuleContext, bindings: Bindings
) -> Iterator[Bindings]:
    if type(node).__name__ != pattern.type_name:
        return
    start = {**bindings, pattern.bind: node} if pattern.bind else bindings
    yield from _match_fields(list(pattern.fields), node, ctx, start)


def _match_fields(
    fields: list[tuple[str, Any]], node: Any, ctx: RuleContext, bindings: Bindings
) -> Iterator[Bindings]:
    if not fields:
        yield bindings
        return
    (name, sub), rest = fields[0], fields[1:]
    for extended in match(sub, getattr(node, name), ctx, bindings):
        yield from _match_fields(rest, node, ctx, extended)


def evaluate(term: Any, bindings: Bindings, helpers: Mapping[str, Helper], ctx: RuleContext) -> Any:
    """The value of a condition or replacement term under `bindings`."""
    if isinstance(term, Literal):
        return term.value
    if isinstance(term, Var):
        if term.name not in bindings:
            raise KeyError(f"${term.name} is not bound by the pattern")
        return bindings[term.name]
    if isinstance(term, ListTerm):
        return tuple(evaluate(i, bindings, helpers, ctx) for i in term.items)
    if isinstance(term, Call):
        function = helpers.get(term.name)
        if function is None:
            raise KeyError(f"no rule helper named {term.name!r}")
        return function(ctx, *[evaluate(a, bindings, helpers, ctx) for a in term.args])
    if isinstance(term, Construct):
        values = {n: evaluate(t, bindings, helpers, ctx) for n, t in term.fields}
        return NODE_TYPES[term.type_name](**values)
    if isinstance(term, Update):
        base = bindings[term.var]
        values = {n: evaluate(t, bindings, helpers, ctx) for n, t in term.fields}
        return dataclasses.replace(base, **values)
    if isinstance(term, BoolOp):
        if term.op == "and":
            return all(evaluate(a, bindings, helpers, ctx) for a in term.args)
        if term.op == "or":
            return any(evaluate(a, bindings, helpers, ctx) for a in term.args)
        if term.op == "not":
            return not evaluate(term.args[0], bindings, helpers, ctx)
        left, right = (evaluate(a, bindings, helpers, ctx) for a in term.args)
        return left == right if term.op == "eq" else left != right
    raise TypeError(f"cannot evaluate {term!r}")


def apply_rule(
    rule: Rule, node: lp.PlanNode, ctx: RuleContext, helpers: Mapping[str, Helper]
) -> list[lp.PlanNode]:
    """The rewrites of `node` by `rule` (one per binding whose condition holds; a helper may
    return None to decline)."""
    out = []
    for bindings in _match_node(rule.pattern, node, ctx, {}):
        if rule.condition is not None and not evaluate(rule.condition, bindings, helpers, ctx):
            continue
        result = evaluate(rule.replacement, bindings, helpers, ctx)
        if result is not None and result != node:
            out.append(result)
    return out

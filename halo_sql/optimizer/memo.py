"""The memo: groups (equivalence classes of plans) and group expressions, deduplicated by value.

A *group expression* is a plan node whose children are `GroupRef`s instead of plans. Plan nodes are
frozen dataclasses, so a group expression is its own fingerprint: two rules producing the same
rewrite produce equal (hash-equal) expressions, and the memo keeps one.

    >>> from halo_sql.logical.plan import DuckDBQuery, Limit
    >>> memo = Memo()
    >>> root = memo.insert(Limit(DuckDBQuery("SELECT 1"), 5))
    >>> memo.group(root.group).exprs[0].node
    Limit(child=GroupRef(group=0), count=5)
    >>> memo.insert(Limit(DuckDBQuery("SELECT 1"), 5)) is root      # deduplicated
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from halo_sql.logical.plan import DuckDBQuery, NamedInput, PlanNode


@dataclass(frozen=True)
class GroupRef(PlanNode):
    """A child position of a group expression: any plan of group `group` fits here."""

    group: int


def children_of(node: PlanNode) -> tuple[PlanNode, ...]:
    """The plan-valued fields of a node, in order (a DuckDBQuery's named inputs, a unary child)."""
    return node.children


def with_children(node: PlanNode, children: tuple[PlanNode, ...]) -> PlanNode:
    """`node` with its children replaced, in the order `children_of` lists them."""
    if isinstance(node, DuckDBQuery):
        inputs = tuple(
            NamedInput(named.name, child) for named, child in zip(node.inputs, children, strict=True)
        )
        return replace(node, inputs=inputs)
    if not children:
        return node
    (child,) = children
    return replace(node, child=child)  # type: ignore[call-arg]


def node_fields(node: PlanNode) -> dict[str, Any]:
    """Field name -> value of a plan node (for the rule language)."""
    return {f.name: getattr(node, f.name) for f in fields(node)}


@dataclass(eq=False)
class GroupExpr:
    """One expression of a group; `lineage` names the rules whose rewrites produced it."""

    node: PlanNode
    group: int
    lineage: frozenset[str] = frozenset()
    fired: set[str] = field(default_factory=set)
    """Rules already applied to this expression (each rule fires once per expression)."""
    explored: bool = False


@dataclass(frozen=True)
class Winner:
    """The cheapest expression of a group found so far for one set of required properties."""

    expr: GroupExpr
    cost: Any
    child_props: tuple[Any, ...]


@dataclass(eq=False)
class Group:
    """An equivalence class: every expression in it produces the same rows (as a multiset)."""

    id: int
    exprs: list[GroupExpr] = field(default_factory=list)
    logical: Any = None
    """Logical properties shared by all expressions (columns, estimated rows); set on creation."""
    explored: bool = False
    winners: dict[Any, Winner] = field(default_factory=dict)
    requested: set[Any] = field(default_factory=set)
    """Required properties the search asked of this group (new expressions are costed for each)."""


class Memo:
    """Groups and their expressions; `insert` places a plan, sharing equal sub-plans."""

    def __init__(self, derive: Callable[[PlanNode, Memo], Any] | None = None) -> None:
        self.groups: list[Group] = []
        self.index: dict[PlanNode, GroupExpr] = {}
        self._derive = derive

    def group(self, gid: int) -> Group:
        return self.groups[gid]

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    @property
    def expression_count(self) -> int:
        return len(self.index)

    def insert(
        self,
        plan: PlanNode,
        group: int | None = None,
        lineage: frozenset[str] = frozenset(),
    ) -> GroupExpr:
        """Insert `plan` (children may already be GroupRefs) into `group` or a new group.

        Returns the existing expression when an equal one is already in the memo (wherever it
        is: a rewrite that rediscovers a known expression adds nothing).
        """
        if isinstance(plan, GroupRef):
            raise ValueError("a bare GroupRef is a group, not an expression")
        children = tuple(
            c if isinstance(c, GroupRef) else GroupRef(self.insert(c, None, lineage).group)
            for c in children_of(plan)
        )
        node = with_children(plan, children)
        found = self.index.get(node)
        if found is not None:
            return found
        if group is not None and any(c.group == group for c in children):
            # A rewrite whose child is its own group (an identity projection of the group, say)
            # adds nothing but a cycle: the group's first expression stands for it.
            return self.groups[group].exprs[0]
        if group is None:
            gid = len(self.groups)
            self.groups.append(Group(gid))
        else:
            gid = group
        expr = GroupExpr(node, gid, lineage)
        self.index[node] = expr
        target = self.groups[gid]
        target.exprs.append(expr)
        if target.logical is None and self._derive is not None:
            target.logical = self._derive(node, self)
        return expr

    def first_plan(self, gid: int) -> PlanNode:
        """A concrete plan of the group: its first expression, expanded recursively."""
        node = self.groups[gid].exprs[0].node
        return with_children(
            node, tuple(self.first_plan(c.group) for c in children_of(node) if isinstance(c, GroupRef))
        )

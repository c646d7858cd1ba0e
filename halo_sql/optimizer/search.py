"""The Cascades search: tasks on an explicit stack over the memo (Columbia/optd style).

    OptimizeGroup(g, req)      cost every expression of g for required properties req
    OptimizeExpression(e, req) fire the rules on e (exploring child groups first), then cost it
    ExploreGroup(g)            fire the rules on every expression of g (no costing)
    ApplyRule(rule, e)         bind the rule's pattern to e, check the condition, insert the
                               rewrite into e's group (new expressions get their own tasks)
    OptimizeInputs(e, req)     cost e: its own cost plus the winners of its child groups for the
                               properties e requires of them; resumable (one child at a time),
                               and abandoned as soon as the partial sum reaches the bound

Each rule fires at most once per expression (recorded on the expression), rewrites that already
exist anywhere in the memo add nothing, and the winner of each (group, required properties) is
kept with its cost. The search ends when the stack is empty or the task budget is spent (the best
plan found so far is returned either way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from halo_sql.logical import plan as lp
from halo_sql.optimizer.cost import ZERO, Cost, CostModel, OpEstimate, Required
from halo_sql.optimizer.memo import Group, GroupExpr, GroupRef, Memo, Winner, with_children
from halo_sql.optimizer.rules import Helper, Rule, RuleContext, apply_rule

DEFAULT_TASK_BUDGET = 200_000


@dataclass
class SearchStats:
    tasks: int = 0
    rule_applications: int = 0
    rewrites: int = 0
    pruned: int = 0
    budget_exhausted: bool = False
    fired: dict[str, int] = field(default_factory=dict)
    """Rule name -> new expressions it produced."""


class _Context(RuleContext):
    def __init__(self, search: Search, stats: Any) -> None:
        super().__init__()
        self.search = search
        self.stats = stats

    def exprs(self, group: int) -> list[lp.PlanNode]:
        return [e.node for e in self.search.memo.group(group).exprs]

    def logical(self, group: int) -> Any:
        return self.search.memo.group(group).logical


class Search:
    """One optimization: a memo, the rules in force, a cost model, and the task stack."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        helpers: Mapping[str, Helper],
        cost_model: CostModel,
        *,
        task_budget: int = DEFAULT_TASK_BUDGET,
    ) -> None:
        self.rules = rules
        self.helpers = helpers
        self.cost_model = cost_model
        self.memo = Memo(derive=cost_model.derive)
        self.stack: list[_Task] = []
        self.stats = SearchStats()
        self.task_budget = task_budget
        self.context = _Context(self, cost_model.stats)
        self._by_type: dict[str, list[Rule]] = {}
        for rule in rules:
            self._by_type.setdefault(rule.root_type, []).append(rule)

    # -- driver ----------------------------------------------------------------------------
    def optimize(self, plan: lp.PlanNode, required: Required | None = None) -> int:
        """Insert `plan` and search; returns the root group."""
        required = required or Required()
        root = self.memo.insert(plan).group
        self.stack.append(OptimizeGroup(root, required, math.inf))
        while self.stack:
            if self.stats.tasks >= self.task_budget:
                self.stats.budget_exhausted = True
                self.stack.clear()
                break
            task = self.stack.pop()
            self.stats.tasks += 1
            task.perform(self)
        if required not in self.memo.group(root).winners:
            # Budget exhausted before a full plan was costed: cost the plan as given.
            self._cost_fixed(root, required)
        return root

    def rules_for(self, node: lp.PlanNode) -> list[Rule]:
        return self._by_type.get(type(node).__name__, [])

    def add_rewrite(self, expr: GroupExpr, rule: Rule, node: lp.PlanNode) -> GroupExpr | None:
        """Insert a rule's output into `expr`'s group; None when the memo already had it."""
        before = self.memo.expression_count
        new = self.memo.insert(node, expr.group, expr.lineage | {rule.name})
        if self.memo.expression_count == before or new.group != expr.group:
            return None
        self.stats.rewrites += 1
        self.stats.fired[rule.name] = self.stats.fired.get(rule.name, 0) + 1
        return new

    # -- costing -----------------------------------------------------------------------------
    def local(self, expr: GroupExpr, required: Required) -> OpEstimate:
        return self.cost_model.local(expr.node, required, self.memo, expr.group)

    def child_required(self, expr: GroupExpr, required: Required) -> tuple[Required, ...]:
        return self.cost_model.child_required(expr.node, required, self.memo, expr.group)

    def record(self, expr: GroupExpr, required: Required, cost: Cost, child_req: tuple[Required, ...]) -> None:
        group = self.memo.group(expr.group)
        best = group.winners.get(required)
        if best is None or cost.seconds < best.cost.seconds - 1e-15:
            group.winners[required] = Winner(expr, cost, child_req)

    def _cost_fixed(self, gid: int, required: Required) -> Cost:
        """Cost the first expression of each group without searching (fallback)."""
        group = self.memo.group(gid)
        if required in group.winners:
            return group.winners[required].cost  # type: ignore[no-any-return]
        expr = group.exprs[0]
        child_req = self.child_required(expr, required)
        total = self.local(expr, required).cost
        for child, req in zip(expr.node.children, child_req, strict=True):
            assert isinstance(child, GroupRef)
            total = total + self._cost_fixed(child.group, req)
        group.winners[required] = Winner(expr, total, child_req)
        return total

    # -- extraction --------------------------------------------------------------------------
    def extract(
        self, gid: int, required: Required
    ) -> tuple[lp.PlanNode, dict[tuple[int, Required], lp.PlanNode]]:
        """The winning plan of a group (equal sub-plans come out as one shared object), and the
        node built for each (group, required properties) on the way."""
        cache: dict[tuple[int, Required], lp.PlanNode] = {}
        interned: dict[lp.PlanNode, lp.PlanNode] = {}

        def build(g: int, req: Required) -> lp.PlanNode:
            key = (g, req)
            if key not in cache:
                winner = self.memo.group(g).winners.get(req) or self._winner_fallback(g, req)
                children = tuple(
                    build(c.group, r)
                    for c, r in zip(winner.expr.node.children, winner.child_props, strict=True)
                    if isinstance(c, GroupRef)
                )
                node = with_children(winner.expr.node, children)
                cache[key] = interned.setdefault(node, node)
            return cache[key]

        return build(gid, required), cache

    def _winner_fallback(self, gid: int, required: Required) -> Winner:
        self._cost_fixed(gid, required)
        winner: Winner = self.memo.group(gid).winners[required]
        return winner

    def winner_tree(self, gid: int, required: Required) -> list[tuple[GroupExpr, Required, Winner]]:
        """(expression, required properties, winner) of every operator of the chosen plan."""
        out = []
        seen: set[tuple[int, Required]] = set()

        def walk(g: int, req: Required) -> None:
            if (g, req) in seen:
                return
            seen.add((g, req))
            winner = self.memo.group(g).winners.get(req) or self._winner_fallback(g, req)
            out.append((winner.expr, req, winner))
            for c, r in zip(winner.expr.node.children, winner.child_props, strict=True):
                assert isinstance(c, GroupRef)
                walk(c.group, r)

        walk(gid, required)
        return out


# -- tasks -------------------------------------------------------------------------------------


class _Task:
    def perform(self, search: Search) -> None:
        raise NotImplementedError


@dataclass
class OptimizeGroup(_Task):
    group: int
    required: Required
    limit: float

    def perform(self, search: Search) -> None:
        group: Group = search.memo.group(self.group)
        if self.required in group.winners:
            return
        group.requested.add(self.required)
        for expr in reversed(group.exprs):
            search.stack.append(OptimizeExpression(expr, self.required, self.limit))


@dataclass
class OptimizeExpression(_Task):
    expr: GroupExpr
    required: Required
    limit: float

    def perform(self, search: Search) -> None:
        # Stack order: the rules (and the exploration their patterns need) run first, then the
        # expression is costed.
        search.stack.append(OptimizeInputs(self.expr, self.required, self.limit))
        _push_rules(search, self.expr, self.required, self.limit)


@dataclass
class ExploreGroup(_Task):
    group: int

    def perform(self, search: Search) -> None:
        group = search.memo.group(self.group)
        if group.explored:
            return
        group.explored = True
        for expr in reversed(group.exprs):
            search.stack.append(ExploreExpression(expr))


@dataclass
class ExploreExpression(_Task):
    expr: GroupExpr

    def perform(self, search: Search) -> None:
        if self.expr.explored:
            return
        self.expr.explored = True
        _push_rules(search, self.expr, None, math.inf)


def _push_rules(search: Search, expr: GroupExpr, required: Required | None, limit: float) -> None:
    for rule in reversed(search.rules_for(expr.node)):
        if rule.name in expr.fired:
            continue
        search.stack.append(ApplyRule(rule, expr, required, limit))
        for position in rule.child_patterns:
            child = expr.node.children[position]
            if isinstance(child, GroupRef):
                search.stack.append(ExploreGroup(child.group))


@dataclass
class ApplyRule(_Task):
    rule: Rule
    expr: GroupExpr
    required: Required | None
    limit: float

    def perform(self, search: Search) -> None:
        if self.rule.name in self.expr.fired:
            return
        self.expr.fired.add(self.rule.name)
        search.stats.rule_applications += 1
        for node in apply_rule(self.rule, self.expr.node, search.context, search.helpers):
            new = search.add_rewrite(self.expr, self.rule, node)
            if new is None:
                continue
            group = search.memo.group(new.group)
            if group.explored:
                search.stack.append(ExploreExpression(new))
            for req in sorted(group.requested, key=_req_key):
                search.stack.append(OptimizeExpression(new, req, math.inf))


@dataclass
class OptimizeInputs(_Task):
    expr: GroupExpr
    required: Required
    limit: float
    index: int = 0
    total: Cost = ZERO
    child_req: tuple[Required, ...] | None = None
    asked: int = -1
    """The child position whose group this task already asked to optimize."""

    def perform(self, search: Search) -> None:
        group = search.memo.group(self.expr.group)
        best = group.winners.get(self.required)
        bound = min(self.limit, best.cost.seconds if best is not None else math.inf)
        if self.child_req is None:
            self.child_req = search.child_required(self.expr, self.required)
            self.total = search.local(self.expr, self.required).cost
        children = self.expr.node.children
        while self.index < len(children):
            if self.total.seconds >= bound:
                search.stats.pruned += 1
                return
            child = children[self.index]
            assert isinstance(child, GroupRef)
            req = self.child_req[self.index]
            winner = search.memo.group(child.group).winners.get(req)
            if winner is None:
                if self.asked == self.index:
                    search.stats.pruned += 1  # the child has no plan under the bound
                    return
                self.asked = self.index
                search.stack.append(self)
                search.stack.append(OptimizeGroup(child.group, req, bound - self.total.seconds))
                return
            self.total = self.total + winner.cost
            self.index += 1
        if self.total.seconds < bound or best is None:
            search.record(self.expr, self.required, self.total, self.child_req)


def _req_key(req: Required) -> int:
    return -1 if req.need is None else req.need

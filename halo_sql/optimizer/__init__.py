"""The optimizer: rewrites a statement's logical plan before physical planning.

The engine foundation ships the hook; the Cascades search, the rule files in `optimizer_rules/`
and the cost model grow behind this one function.
"""

from __future__ import annotations

from halo_sql.logical.plan import StatementPlan


def optimize(plan: StatementPlan) -> StatementPlan:
    """The plan to run. Relational-predicates-first and LIMIT early stop are built in by the
    block planner; this hook is where cost-based rewrites plug in."""
    return plan

"""Rewrites of the chosen plan as a whole, after the search.

`share_identical_subplans` (a rule in the registry, written in Python): named inputs that compute
the same rows are one input. Two CTEs or derived tables with the same body get different names
from the planner (`__halo_in_1`, `__halo_in_3`) and so different SQL text above them; comparing
plans with every input name replaced by a canonical one finds them equal. All references then use
the first name, so the executor materializes the input once (it caches inputs by name) and the
physical planner builds one operator for it.

    >>> from halo_sql.logical.plan import DuckDBQuery, NamedInput, LLMMap
    >>> a = DuckDBQuery("SELECT 1 AS x")
    >>> q = DuckDBQuery("SELECT * FROM i1 JOIN i2 USING (x)", (NamedInput("i1", a), NamedInput("i2", a)))
    >>> finalize(q, share=True)[0].sql
    'SELECT * FROM i1 JOIN i1 AS i2 USING (x)'

Identity projections (a Project keeping every column of its input, in order) are dropped.
Whatever the rules did, `finalize` also guarantees that one name never stands for two different
plans in a statement (the executor would serve the first one's rows to both).
"""

from __future__ import annotations

import re
from dataclasses import replace

from halo_sql.logical import plan as lp
from halo_sql.optimizer import sqltools

_INTERNAL = re.compile(r"__llm_\d+|__halo_[a-z]+_\d+|__arg_\d+")


def share_key(plan: lp.PlanNode) -> tuple[tuple[str, ...], str] | None:
    """Equal keys: the plans compute the same rows under the same column names, up to the
    planner's internal names (`__llm_3`, `__halo_rows_4`, ...). None: not a candidate."""
    if isinstance(plan, lp.DuckDBQuery):
        columns = sqltools.output_columns(plan.sql)
    elif isinstance(plan, lp.Project):
        columns = plan.columns
    else:
        columns = None
    if columns is None:
        return None
    names: dict[str, str] = {}

    def canonical(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"<{len(names)}>")

    return tuple(columns), _INTERNAL.sub(canonical, repr(plan))


def finalize(
    root: lp.PlanNode, *, share: bool
) -> tuple[lp.PlanNode, dict[lp.PlanNode, lp.PlanNode]]:
    """The plan with shared inputs merged (if `share`) and input names made unambiguous; also
    the map from each rewritten node to its new version."""
    translate: dict[lp.PlanNode, lp.PlanNode] = {}
    first: dict[tuple[tuple[str, ...], str], lp.NamedInput] = {}
    used: dict[str, lp.PlanNode] = {}
    assigned: dict[tuple[str, lp.PlanNode], str] = {}
    counter = [0]

    def rebuild(node: lp.PlanNode) -> lp.PlanNode:
        if node in translate:
            return translate[node]
        if isinstance(node, lp.DuckDBQuery):
            mapping: dict[str, str] = {}
            inputs: list[lp.NamedInput] = []
            seen: set[str] = set()
            for named in node.inputs:
                child = rebuild(named.plan)
                name = named.name
                key = share_key(child) if share else None
                if key is not None:
                    rep = first.setdefault(key, lp.NamedInput(name, child))
                    name, child = rep.name, rep.plan
                # One name, one plan: a name already standing for another plan gets a suffix.
                if (name, child) in assigned:
                    name = assigned[(name, child)]
                else:
                    original = name
                    owner = used.get(name)
                    if owner is not None and owner != child:
                        counter[0] += 1
                        name = f"{name}_v{counter[0]}"
                    used.setdefault(name, child)
                    assigned[(original, child)] = name
                if name != named.name:
                    mapping[named.name] = name
                if name not in seen:
                    seen.add(name)
                    inputs.append(lp.NamedInput(name, child))
            sql = node.sql
            if mapping:
                renamed = sqltools.rename_tables(node.sql, mapping)
                if renamed is None:
                    raise ValueError(f"cannot rename inputs of {node.sql!r}")
                sql = renamed
            out: lp.PlanNode = replace(node, sql=sql, inputs=tuple(inputs))
        elif isinstance(node, lp.Project) and columns_of(node.child) == node.columns:
            out = rebuild(node.child)  # keeps every column in order: nothing to do
        elif node.children:
            out = replace(node, child=rebuild(node.children[0]))  # type: ignore[call-arg]
        else:
            out = node
        translate[node] = out
        return out

    return rebuild(root), translate


def columns_of(node: lp.PlanNode) -> tuple[str, ...] | None:
    """Output columns of a plan when its text tells (None: unknown)."""
    if isinstance(node, lp.DuckDBQuery):
        return sqltools.output_columns(node.sql)
    if isinstance(node, lp.Project):
        return node.columns
    if isinstance(node, lp.LLMMap):
        below = columns_of(node.child)
        return None if below is None else (*below, node.output_column)
    if isinstance(node, lp.LLMFilter | lp.SQLFilter | lp.Limit):
        return columns_of(node.child)
    return None

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

Whatever the rules did, `finalize` also guarantees that one name never stands for two different
plans in a statement (the executor would serve the first one's rows to both).
"""

from __future__ import annotations

from dataclasses import replace

from halo_sql.logical import plan as lp
from halo_sql.optimizer import sqltools


def finalize(
    root: lp.PlanNode, *, share: bool
) -> tuple[lp.PlanNode, dict[lp.PlanNode, lp.PlanNode]]:
    """The plan with shared inputs merged (if `share`) and input names made unambiguous; also
    the map from each rewritten node to its new version."""
    translate: dict[lp.PlanNode, lp.PlanNode] = {}
    representative: dict[lp.PlanNode, str] = {}
    if share:
        canonical: dict[lp.PlanNode, lp.PlanNode] = {}
        names: dict[lp.PlanNode, str] = {}

        def canon(node: lp.PlanNode) -> lp.PlanNode:
            if node in canonical:
                return canonical[node]
            if isinstance(node, lp.DuckDBQuery):
                mapping = {}
                inputs = []
                for named in node.inputs:
                    child = canon(named.plan)
                    key = names.setdefault(child, f"__halo_c{len(names)}")
                    mapping[named.name] = key
                    inputs.append(lp.NamedInput(key, child))
                    representative.setdefault(child, named.name)
                sql = sqltools.rename_tables(node.sql, mapping) if mapping else node.sql
                out: lp.PlanNode = replace(node, sql=sql or node.sql, inputs=tuple(inputs))
            elif node.children:
                out = replace(node, child=canon(node.children[0]))  # type: ignore[call-arg]
            else:
                out = node
            canonical[node] = out
            return out

        canon(root)
        # name each input by the first name its canonical plan had
        rename_of: dict[lp.PlanNode, str] = {}
        for original, c in canonical.items():
            if c in representative:
                rename_of[original] = representative[c]
    else:
        canonical = {}
        rename_of = {}

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
                name = rename_of.get(named.plan, named.name)
                # Equal plans (up to input names, when sharing) may share a name; others not.
                identity = canonical.get(named.plan, child)
                if (name, identity) in assigned:
                    name = assigned[(name, identity)]
                else:
                    key = (name, identity)
                    owner = used.get(name)
                    if owner is not None and owner != identity:
                        counter[0] += 1
                        name = f"{name}_v{counter[0]}"
                    used.setdefault(name, identity)
                    assigned[key] = name
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
        elif node.children:
            out = replace(node, child=rebuild(node.children[0]))  # type: ignore[call-arg]
        else:
            out = node
        translate[node] = out
        return out

    return rebuild(root), translate

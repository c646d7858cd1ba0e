"""EXPLAIN text and JSON with the cost model's estimates (and, for ANALYZE, what really happened).

Every operator line ends with its estimate in brackets; EXPLAIN ANALYZE adds the measured
counters after a bar. The text is deterministic (no timings unless ANALYZE), so it is golden.

    LLMFilter: llm_filter(...) args=['__arg_0']  [est rows=50 requests=100 prompt=2300 cached=1600 output=100 cost=0.041s]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from halo_sql.logical import plan as lp
from halo_sql.optimizer.cost import Cost, OpEstimate
from halo_sql.optimizer.memo import GroupRef

Actual = Callable[[lp.PlanNode], Any]
"""Measured counters of an operator (attributes rows, llm_requests, prompt_tokens,
cached_prompt_tokens, output_tokens, seconds; its own work, not its inputs'), or None."""

_COUNTERS = ("llm_requests", "prompt_tokens", "cached_prompt_tokens", "output_tokens")


def head_lines(node: lp.PlanNode) -> list[str]:
    """The lines `explain` prints for the node itself (not for its inputs)."""
    if isinstance(node, lp.DuckDBQuery):
        return lp.explain(replace(node, inputs=())).splitlines()
    if node.children:
        marker = replace(node, child=GroupRef(-1))  # type: ignore[call-arg]
        lines = lp.explain(marker).splitlines()
        return [line for line in lines if line.strip() != "GroupRef"]
    return lp.explain(node).splitlines()


def _fmt(value: float) -> str:
    return f"{value:.0f}"


def _estimate_text(e: OpEstimate) -> str:
    c = e.cost
    parts = [f"rows={_fmt(e.rows)}"]
    if c.requests:
        parts += [
            f"requests={_fmt(c.requests)}",
            f"prompt={_fmt(c.prompt_tokens)}",
            f"cached={_fmt(c.cached_tokens)}",
            f"output={_fmt(c.output_tokens)}",
        ]
    if e.note:
        parts.append(e.note)
    parts.append(f"cost={c.seconds:.4f}s")
    return "est " + " ".join(parts)


def _exclusive(node: lp.PlanNode, actual: Actual) -> dict[str, float] | None:
    """Counters of `node` alone. The executor charges each request to the operator that made it
    and counts the rows each operator emitted; `seconds` is the operator's own span from first
    pull to end (operators run concurrently, so spans overlap)."""
    mine = actual(node)
    if mine is None:
        return None
    keys = (*_COUNTERS, "cached_unknown_requests", "seconds")
    out = {k: float(getattr(mine, k, 0)) for k in keys}
    out["rows"] = float(getattr(mine, "rows", 0))
    return out


def _actual_text(counters: dict[str, float] | None) -> str:
    if counters is None:
        return "actual: not run"
    parts = [f"rows={_fmt(counters['rows'])}"]
    if counters["llm_requests"]:
        parts += [
            f"requests={_fmt(counters['llm_requests'])}",
            f"prompt={_fmt(counters['prompt_tokens'])}",
            # A backend that does not report cached tokens makes the number unknown, not 0.
            "cached=unknown" if counters.get("cached_unknown_requests")
            else f"cached={_fmt(counters['cached_prompt_tokens'])}",
            f"output={_fmt(counters['output_tokens'])}",
        ]
    parts.append(f"time={max(0.0, counters['seconds']):.4f}s")
    return "actual " + " ".join(parts)


def explain_text(plan: lp.StatementPlan, actual: Actual | None = None, stats: Any = None) -> str:
    """The plan with estimates per operator (and actuals when `actual` is given)."""
    report = plan.optimizer
    lines: list[str] = []

    def walk(node: lp.PlanNode, depth: int) -> None:
        pad = "  " * depth
        head = head_lines(node)
        first = f"{pad}{head[0]}"
        notes = []
        if report is not None and node in report.estimates:
            notes.append(_estimate_text(report.estimates[node]))
        if actual is not None:
            notes.append(_actual_text(_exclusive(node, actual)))
        if notes:
            first += "  [" + " | ".join(notes) + "]"
        lines.append(first)
        lines.extend(f"{pad}{h}" for h in head[1:])
        if isinstance(node, lp.DuckDBQuery):
            for named in node.inputs:
                lines.append(f"{pad}  input {named.name}:")
                walk(named.plan, depth + 2)
        else:
            for child in node.children:
                walk(child, depth + 1)

    walk(plan.root, 0)
    if report is not None:
        lines.append("estimated total: " + _cost_text(report.total))
        lines.append(
            f"optimizer: groups={report.groups} expressions={report.expressions} "
            f"tasks={report.search.tasks} rules applied: {', '.join(report.rules) or 'none'}"
        )
        for model, profile in sorted(report.profiles.items()):
            where = report.placements.get(model)
            on = f" on {where};" if where else ""
            lines.append(f"placement: model {model}{on} priced with the {profile}")
        if report.sampled_requests:
            lines.append(
                f"optimizer: sampled {report.sampled_requests} rows to estimate LLM predicate "
                "selectivities (answers kept in the statement's memo)"
            )
    lines.extend(f"note: {n}" for n in plan.notes)
    if stats is not None:
        measured = stats.as_dict()
        lines.append(
            "actual total: "
            + ", ".join(
                f"{k}={'unknown' if measured[k] is None else measured[k]}"
                for k in (
                    "llm_requests", "prompt_tokens", "cached_prompt_tokens", "output_tokens",
                    "deduplicated_requests", "invalid_answers",
                )
                if k in measured
            )
        )
    return "\n".join(lines)


def _cost_text(c: Cost) -> str:
    return (
        f"requests={_fmt(c.requests)} prompt={_fmt(c.prompt_tokens)} cached={_fmt(c.cached_tokens)} "
        f"output={_fmt(c.output_tokens)} cost={c.seconds:.4f}s"
    )


def _cost_json(c: Cost) -> dict[str, float]:
    return {
        "requests": round(c.requests, 3),
        "prompt_tokens": round(c.prompt_tokens, 3),
        "cached_tokens": round(c.cached_tokens, 3),
        "output_tokens": round(c.output_tokens, 3),
        "seconds": round(c.seconds, 6),
    }


def explain_json(plan: lp.StatementPlan, actual: Actual | None = None, stats: Any = None) -> str:
    """The same as `explain_text`, as JSON for tools."""
    report = plan.optimizer

    def walk(node: lp.PlanNode) -> dict[str, Any]:
        head = head_lines(node)
        item: dict[str, Any] = {"operator": type(node).__name__, "text": head[0]}
        if len(head) > 1:
            item["details"] = [h.strip() for h in head[1:]]
        if report is not None and node in report.estimates:
            e = report.estimates[node]
            item["estimate"] = {"rows": round(e.rows, 3), **_cost_json(e.cost)}
            if e.note:
                item["estimate"]["note"] = e.note
        if actual is not None:
            measured: dict[str, Any] | None = _exclusive(node, actual)
            if measured and measured.get("cached_unknown_requests"):
                measured["cached_prompt_tokens"] = None  # not reported by the backend: unknown
            item["actual"] = measured
        if isinstance(node, lp.DuckDBQuery):
            item["inputs"] = [{"name": n.name, "plan": walk(n.plan)} for n in node.inputs]
        elif node.children:
            item["children"] = [walk(c) for c in node.children]
        return item

    payload: dict[str, Any] = {"plan": walk(plan.root), "notes": list(plan.notes)}
    if report is not None:
        payload["estimated_total"] = _cost_json(report.total)
        payload["optimizer"] = {
            "rules_applied": list(report.rules),
            "groups": report.groups,
            "expressions": report.expressions,
            "tasks": report.search.tasks,
            "sampled_requests": report.sampled_requests,
            "profiles": report.profiles,
            "placements": report.placements,
        }
    if stats is not None:
        payload["actual_total"] = stats.as_dict()
    return json.dumps(payload, indent=2, sort_keys=True, default=str)

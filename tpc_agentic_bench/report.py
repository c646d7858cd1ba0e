"""The benchmark's outputs: a text table per workload, the JSON report, and a PNG chart.

    >>> print(format_ratio(1.5), format_ratio(None))
    1.50x -
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (header, key, width)
    ("system", "name", 24),
    ("wall s", "seconds", 8),
    ("requests", "llm_requests", 8),
    ("calls", "backend_calls", 6),
    ("prompt tok", "prompt_tokens", 10),
    ("cached", "cached_prompt_tokens", 8),
    ("computed", "computed_prompt_tokens", 8),
    ("comp/LB", "computed_over_lb", 7),
    ("comp/LBblk", "computed_over_lb_blocks", 10),
    ("output tok", "output_tokens", 10),
    ("out/LB", "output_over_lb", 6),
    ("seq/step", "avg_running_per_step", 8),
    ("cpu s", "cpu_seconds", 6),
    ("x naive", "speedup_vs_naive", 7),
    ("x per_query", "speedup_vs_per_query", 11),
    ("x best", "speedup_vs_best_baseline", 7),
    ("agree", "agreement", 6),
)
"""The per-system table. `x best`: speedup over the faster of vllm-async and langgraph; the
`LB` ratios: the system's computed prefill and output tokens over the workload's bound; `cpu s`:
CPU time of the benchmark's own process during the run (the engine core's processes excluded)."""

UNKNOWN = "unknown"
"""How a count the serving side did not report is shown (never as 0)."""


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(key: str, row: dict[str, Any], lower_bound: int | None) -> str:
    if key == "computed_over_lb" and key not in row:  # a bound from the systems' own requests
        computed = row.get("computed_prompt_tokens")
        return f"{computed / lower_bound:.2f}" if lower_bound and computed is not None else "-"
    value = row.get(key)
    if value is None:
        if key in ("cached_prompt_tokens", "computed_prompt_tokens") and key in row:
            return UNKNOWN
        return "-"
    if key in ("computed_over_lb", "computed_over_lb_blocks", "output_over_lb"):
        return f"{value:.2f}"
    if key == "avg_running_per_step":
        return f"{value:.1f}"
    if key.startswith("speedup"):
        return format_ratio(value)
    if key == "agreement":
        return f"{value:.0%}"
    if key == "seconds":
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_workload(workload: dict[str, Any]) -> str:
    """One workload's table, with the notes that qualify its figures."""
    lower_bound = workload.get("lower_bound_tokens")
    full = workload.get("lower_bound")
    if full:
        bound = (
            f"workload bound {full['prompt_tokens']:,} prompt tokens "
            f"({full['prompt_tokens_blocks']:,} at block granularity), "
            f"{full['output_tokens']:,} output tokens, {full['requests']:,} distinct requests"
        )
    elif lower_bound is not None:
        bound = f"prefix-trie lower bound {lower_bound:,} prompt tokens (from the systems' requests)"
    else:
        bound = "lower bound unknown"
    lines = [
        f"{workload['key']} {workload['name']}: {workload['queries']} queries; {bound}",
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, _, w) in enumerate(COLUMNS)),
    ]
    notes = []
    for row in workload["systems"]:
        if not row.get("available", True):
            status = "FAILED" if row.get("failed") else "not run"
            lines.append(f"{row['name']:<24}  {status}: {row.get('note', '')}")
            continue
        cells = [
            _cell(k, row, lower_bound).rjust(w) if i else _cell(k, row, lower_bound).ljust(w)
            for i, (_, k, w) in enumerate(COLUMNS)
        ]
        lines.append("  ".join(cells))
        if row.get("note") and row["note"] not in ("execute_batch", "asyncio", "langgraph"):
            notes.append(f"  {row['name']}: {row['note']}")
        if row.get("errors"):
            first = row["errors"][0]
            notes.append(
                f"  {row['name']}: {len(row['errors'])} failed quer(y/ies); "
                f"query {first['query']}: {first['error']}"
            )
        if row.get("differing_queries"):
            notes.append(
                f"  {row['name']}: answers differ from {row.get('agreement_reference')} on "
                f"queries {row['differing_queries']}"
            )
        if row.get("invalid_answers"):
            notes.append(f"  {row['name']}: {row['invalid_answers']} answers broke their output type")
    if workload.get("lower_bound_note") and "failed" in workload["lower_bound_note"]:
        notes.append(f"  bound: {workload['lower_bound_note']}")
    return "\n".join(lines + notes)


def _geomean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per system: geometric-mean speedups over the workloads."""
    out: dict[str, dict[str, float | None]] = {}
    names = [r["name"] for r in report["workloads"][0]["systems"]] if report["workloads"] else []
    for name in names:
        rows = [r for w in report["workloads"] for r in w["systems"] if r["name"] == name]
        out[name] = {
            base: _geomean([r.get(f"speedup_vs_{base}") or 0 for r in rows])
            for base in ("naive", "per_query", "best_baseline")
        }
    return out


def format_report(report: dict[str, Any]) -> str:
    """The whole text report: settings, one table per workload, the geomean summary."""
    meta = report["meta"]
    settings = meta["settings"]
    models = settings["models"]
    head = [
        "tpc_agentic_bench"
        + (" --quick" if settings["quick"] else "")
        + f": backend {models['backend']}, model {models['default']['model'] or '(none)'}, "
        f"TPC-H SF {settings['scale_factor']:g}, {settings['queries_per_workload']} queries/workload"
        + (f", median of {settings['repeat']} runs" if settings.get("repeat", 1) > 1 else ""),
        f"machine: {meta['machine'].get('cpu_model', meta['machine']['processor'])}, "
        f"{meta['machine']['cpu_count']} cores, {meta['machine'].get('memory_gib', '?')} GiB, "
        f"GPU: {meta['machine']['gpu']}",
        f"halo: {settings['halo_mode']}",
        "prefix cache reset between systems: "
        + ", ".join(settings["prefix_cache_reset_between_systems"])
        + (" (NOT reset: later systems may find earlier systems' prefixes cached)"
           if "none" in settings["prefix_cache_reset_between_systems"] else ""),
        f"engine start {settings['engine_start_seconds']} s (not counted); "
        f"total run {report['total_seconds']} s",
        *(
            ["baseline engines/servers start (not counted): "
             + ", ".join(f"{k} {v} s" for k, v in settings["baseline_engine_start_seconds"].items())]
            if settings.get("baseline_engine_start_seconds") else []
        ),
        *([f"halo prompt layout: {settings['halo_prompt_layout']}"]
          if settings.get("halo_prompt_layout") else []),
        "",
    ]
    body = [format_workload(w) + "\n" for w in report["workloads"]]
    geo = summary(report)
    tail = ["geometric mean over workloads:"] + [
        f"  {name:<24} x naive {format_ratio(v['naive']):>8}   x per_query "
        f"{format_ratio(v['per_query']):>8}   x best baseline {format_ratio(v['best_baseline']):>8}"
        for name, v in geo.items()
    ]
    return "\n".join(head + body + tail)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {**report, "summary": summary(report)}
    out.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return out


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """A PNG: speedup over naive per workload and system, and computed prefill / lower bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = report["workloads"]
    ran = {r["name"] for w in workloads for r in w["systems"] if r.get("available")}
    names = [n for n in report["meta"]["settings"]["systems"] if n in ran]  # in run order
    keys = [w["key"] for w in workloads]
    fig, (speed_ax, lb_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        speedups: list[float] = []
        ratios: list[float] = []
        missing: list[tuple[int, str]] = []
        for k, w in enumerate(workloads):
            row: dict[str, Any] = next((r for r in w["systems"] if r["name"] == name), {})
            if not row.get("available"):
                missing.append((k, "failed" if row.get("failed") else "n/a"))
            speedups.append(row.get("speedup_vs_naive") or 0.0)
            bound = w.get("lower_bound_tokens")
            computed = row.get("computed_prompt_tokens")
            ratios.append(computed / bound if bound and computed is not None else 0.0)
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(keys))]
        bars = speed_ax.bar(xs, speedups, width, label=name)
        lb_ax.bar(xs, ratios, width, label=name)
        for k, text in missing:  # a gap in the chart must not read as a zero measurement
            for ax in (speed_ax, lb_ax):
                ax.text(xs[k], 0.02, text, rotation=90, ha="center", va="bottom", fontsize=7,
                        color=bars.patches[0].get_facecolor(), transform=ax.get_xaxis_transform())
    settings = report["meta"]["settings"]
    speed_ax.axhline(1.0, color="grey", linewidth=0.8)
    speed_ax.set_title("end-to-end speedup over naive (higher is better)")
    speed_ax.set_ylabel("x naive")
    lb_ax.axhline(1.0, color="grey", linewidth=0.8)
    lb_ax.set_title("computed prefill tokens / prefix-trie lower bound")
    lb_ax.set_ylabel("ratio (1.0 = optimal)")
    for ax in (speed_ax, lb_ax):
        ax.set_xticks(range(len(keys)), keys)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"tpc_agentic_bench: {settings['models']['backend']}, SF {settings['scale_factor']:g}, "
        f"{settings['queries_per_workload']} queries/workload; halo: {settings['halo_mode']}",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""The CI smoke test of issue 6: `--quick` runs all six workloads end to end on vLLM (tiny model).

It checks that every system completes every workload and that the systems agree on every answer;
it does not time anything (speed is reported by the benchmark itself, as ratios).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpc_agentic_bench.harness import BenchConfig, run_benchmark
from tpc_agentic_bench.progress import Progress
from tpc_agentic_bench.report import format_report
from tpc_agentic_bench.workloads import WORKLOADS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_quick_benchmark_runs_every_workload_on_vllm_and_the_systems_agree(
    vllm_backend: object, tiny_model_dir: Path, tpch_dir: Path
) -> None:
    # vllm_backend: skips cleanly where vLLM cannot be imported (the engine itself is not used:
    # the benchmark starts its own with its own options, as `python -m tpc_agentic_bench` does).
    config = BenchConfig(
        backend="vllm",
        model=str(tiny_model_dir),
        quick=True,
        cache_dir=tpch_dir.parent,
        systems=("naive", "per_query", "halo"),
    )
    report: dict[str, Any] = run_benchmark(config, Progress(enabled=False))
    print(format_report(report))
    assert [w["key"] for w in report["workloads"]] == list(WORKLOADS)
    for workload in report["workloads"]:
        for row in workload["systems"]:
            assert row["available"], (workload["key"], row["name"], row.get("note"))
            assert row["errors"] == [], (workload["key"], row["name"], row["errors"])
            assert row["agreement"] == 1.0, (workload["key"], row["name"], row["differing_queries"])
            assert row["llm_requests"] > 0

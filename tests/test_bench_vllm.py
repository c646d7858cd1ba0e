"""The CI smoke test of issue 6: `--quick` runs all six workloads end to end on vLLM (tiny model).

It checks that every system completes every workload and that the systems agree on every answer;
it does not time anything (speed is reported by the benchmark itself, as ratios).

`vllm-async` (the plain asyncio program on vLLM's AsyncLLM) runs here once halo's backend exposes
its own AsyncLLM (`async_engine`): until then it needs two engines of its own (default and W4's
large model), ~55 s of start-up on the 2-core dev machine, which puts this test at ~3.7 minutes
instead of under ~2.5 (measured: 222 s with it). It answers as halo does wherever the two send
the same prompts: everywhere once halo renders values in place, else on W3 and W5, whose
templates end with their slots. `langgraph` stays out: its server alone takes ~40 s to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpc_agentic_bench.harness import BenchConfig, halo_renders_in_place, run_benchmark
from tpc_agentic_bench.progress import Progress
from tpc_agentic_bench.report import format_report
from tpc_agentic_bench.workloads import WORKLOADS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_quick_benchmark_runs_every_workload_on_vllm_and_the_systems_agree(
    vllm_backend: object, tiny_model_dir: Path, tpch_dir: Path
) -> None:
    # vllm_backend: skips cleanly where vLLM cannot be imported (the engine itself is not used:
    # the benchmark starts its own with its own options, as `python -m tpc_agentic_bench` does).
    shares_engine = getattr(vllm_backend, "async_engine", None) is not None
    config = BenchConfig(
        backend="vllm",
        model=str(tiny_model_dir),
        quick=True,
        cache_dir=tpch_dir.parent,
        # `naive` and `per_query` (halo slowed down) answer as halo does on the sim backend
        # (tests/test_bench.py); here they would only add minutes of CI.
        systems=("halo",) + (("vllm-async",) if shares_engine else ()),
    )
    report: dict[str, Any] = run_benchmark(config, Progress(enabled=False))
    print(format_report(report))
    assert [w["key"] for w in report["workloads"]] == list(WORKLOADS)
    same_prompts = set(WORKLOADS) if halo_renders_in_place() else {"W3", "W5"}
    for workload in report["workloads"]:
        assert workload["lower_bound_source"] == "workload"
        for row in workload["systems"]:
            key = (workload["key"], row["name"])
            assert row["available"], (*key, row.get("note"))
            assert row["errors"] == [], (*key, row["errors"])
            assert row["llm_requests"] > 0
            if row["name"] != "vllm-async" or workload["key"] in same_prompts:
                assert row["agreement"] == 1.0, (*key, row["differing_queries"])
        if shares_engine:
            asyncio = next(r for r in workload["systems"] if r["name"] == "vllm-async")
            # The engine counts the sequences it runs per step.
            assert asyncio["avg_running_per_step"] >= 1.0, asyncio

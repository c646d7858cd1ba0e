"""The workloads where plans matter (tpc_agentic_bench W7 dashboard, W8 semantic join): without
the optimizer's rewrites, the same answers cost at least twice the model work (sim backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpc_agentic_bench.harness import BenchConfig, run_benchmark


@pytest.fixture(scope="module")
def report(tpch_dir: Path) -> dict[str, Any]:
    config = BenchConfig(
        backend="sim", queries=4, scale=0.01, systems=("halo", "halo-no-optimizer"),
        cache_dir=tpch_dir.parent, workloads=("W7", "W8"),
    )
    return run_benchmark(config)


@pytest.mark.parametrize("workload", ["W7", "W8"])
def test_without_the_optimizer_the_same_answers_cost_twice_the_model_work(
    report: dict[str, Any], workload: str
) -> None:
    entry = next(w for w in report["workloads"] if w["key"] == workload)
    rows = {row["name"]: row for row in entry["systems"]}
    halo, plain = rows["halo"], rows["halo-no-optimizer"]
    assert not halo["errors"] and not plain["errors"]
    assert plain["agreement"] == 1.0, plain["differing_queries"]
    assert plain["llm_requests"] >= 2 * halo["llm_requests"], (plain, halo)
    assert plain["computed_prompt_tokens"] >= 2 * halo["computed_prompt_tokens"], (plain, halo)

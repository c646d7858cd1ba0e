"""tpc_agentic_bench on the sim backend: every workload runs under every system, the systems agree
on every answer (greedy decoding), and the JSON and PNG reports are written.

Timings on the sim backend mean nothing; these tests pin the harness, not performance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tpc_agentic_bench.__main__ import main
from tpc_agentic_bench.harness import BenchConfig, LowerBound, canonical_rows, run_benchmark
from tpc_agentic_bench.recording import Recorder
from tpc_agentic_bench.report import format_report, write_json, write_plot
from tpc_agentic_bench.systems import make_system, sum_stats
from tpc_agentic_bench.workloads import AGENT_WORKLOADS, WORKLOADS, build_workload

SYSTEMS = ("naive", "per_query", "halo")


@pytest.fixture(scope="module")
def report(tpch_dir: Path) -> dict[str, Any]:
    """One small run of all six workloads under naive, per_query and halo."""
    config = BenchConfig(
        backend="sim", queries=2, scale=0.01, systems=SYSTEMS, cache_dir=tpch_dir.parent
    )
    return run_benchmark(config)


@pytest.fixture(scope="module")
def agent_report(tpch_dir: Path) -> dict[str, Any]:
    """One small run of the agent-workflow variants (W2A, W3A, W5A, W6A) under the same systems."""
    config = BenchConfig(
        backend="sim", queries=2, scale=0.01, systems=SYSTEMS, cache_dir=tpch_dir.parent,
        workloads=tuple(AGENT_WORKLOADS),
    )
    return run_benchmark(config)


def _row(report: dict[str, Any], workload: str, system: str) -> dict[str, Any]:
    entry = next(w for w in report["workloads"] if w["key"] == workload)
    return next(r for r in entry["systems"] if r["name"] == system)


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("system", ["naive", "per_query"])
def test_every_workload_runs_without_errors(report: dict[str, Any], workload: str, system: str) -> None:
    row = _row(report, workload, system)
    assert row["available"], row.get("note")
    assert row["errors"] == []
    assert row["llm_requests"] > 0
    assert row["computed_prompt_tokens"] == row["prompt_tokens"] - row["cached_prompt_tokens"]


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_systems_agree_on_every_answer(report: dict[str, Any], workload: str) -> None:
    for system in SYSTEMS:
        row = _row(report, workload, system)
        if row.get("available"):
            assert row["agreement"] == 1.0, (system, row["differing_queries"])


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_halo_runs_every_workload(report: dict[str, Any], workload: str) -> None:
    row = _row(report, workload, "halo")
    assert not row.get("failed"), row.get("note")
    assert row["errors"] == []


def test_naive_sends_one_request_per_backend_call(report: dict[str, Any]) -> None:
    for workload in report["workloads"]:
        row = _row(report, workload["key"], "naive")
        assert row["backend_calls"] == row["llm_requests"], workload["key"]


def test_per_query_batches_rows_of_one_operator(report: dict[str, Any]) -> None:
    # W2 asks three chained questions about three orders per query: naive hands the engine one
    # request at a time, per_query all the rows of a step together.
    per_query = _row(report, "W2", "per_query")["backend_calls"]
    assert per_query < _row(report, "W2", "naive")["backend_calls"]


def test_computed_prefill_never_beats_the_lower_bound(report: dict[str, Any]) -> None:
    for workload in report["workloads"]:
        bound = workload["lower_bound_tokens"]
        assert bound and bound > 0
        for row in workload["systems"]:
            if row.get("available") and not row["errors"]:
                # Every system starts cold, so its cache can only reuse what it computed itself.
                assert row["computed_prompt_tokens"] >= bound, row["name"]


def test_report_files_are_written(report: dict[str, Any], tmp_path: Path) -> None:
    data = json.loads(write_json(report, tmp_path / "out.json").read_text())
    assert [w["key"] for w in data["workloads"]] == list(WORKLOADS)
    assert data["meta"]["settings"]["prefix_cache_reset_between_systems"] == ["reset_cache"]
    assert set(data["summary"]) == set(SYSTEMS)
    png = write_plot(report, tmp_path / "out.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    text = format_report(report)
    assert all(f"{key} " in text for key in WORKLOADS)


def test_cli_quick_run_on_sim(tpch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main([
        "run", "--quick", "--backend", "sim", "--workloads", "W2,W5", "--queries", "2",
        "--systems", "naive,per_query", "--cache-dir", str(tpch_dir.parent),
        "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"),
    ])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "W2 adversarial reasoning" in out.out and "W5 relational" in out.out
    assert "queries" in out.err  # the progress display
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["settings"]["quick"] is True
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.parametrize("workload", list(AGENT_WORKLOADS))
@pytest.mark.parametrize("system", SYSTEMS)
def test_agent_workloads_run_and_agree(agent_report: dict[str, Any], workload: str,
                                       system: str) -> None:
    row = _row(agent_report, workload, system)
    assert row["available"] and not row.get("failed"), row.get("note")
    assert row["errors"] == []
    assert row["agreement"] == 1.0, row["differing_queries"]
    assert row["agent_steps"] > 0 and row["llm_requests"] > 0
    if system == "naive":
        assert row["backend_calls"] == row["llm_requests"]


@pytest.mark.parametrize("workload", list(AGENT_WORKLOADS))
def test_agent_workloads_call_their_sql_tools(agent_report: dict[str, Any], workload: str) -> None:
    # The sim model calls tools too, so every agent workload exercises the SQL-tool path.
    row = _row(agent_report, workload, "per_query")
    assert row["tool_calls"] > 0 and row["tool_errors"] == 0
    entry = next(w for w in agent_report["workloads"] if w["key"] == workload)
    assert "AGENT('" in entry["example_query"]


def test_agent_workloads_define_their_agents_on_each_session(tpch_dir: Path) -> None:
    import halo_sql
    from halo_sql.datasets.tpch import load_tpch

    for key in AGENT_WORKLOADS:
        con = halo_sql.connect(backend="sim")  # a fresh session knows no agents
        load_tpch(con.session.connection, 0.01, tpch_dir.parent)
        workload = build_workload(key, con.session.connection, 1)
        assert workload.setup_sql and workload.key == key
        for statement in workload.setup_sql * 2:  # CREATE OR REPLACE: safe to run again
            con.sql(statement)
        agents = con.sql("SHOW AGENTS").column(0).to_pylist()
        assert agents and all(name.startswith(key.lower() + "_") for name in agents), agents
        result = con.run(workload.queries[0])
        assert result.table.num_rows > 0
        con.close()


def test_cli_agents_flag_adds_the_agent_workloads(
    tpch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([
        "run", "--backend", "sim", "--workloads", "W6", "--agents", "--queries", "1",
        "--scale", "0.01", "--systems", "per_query", "--cache-dir", str(tpch_dir.parent),
        "--json", str(tmp_path / "r.json"), "--no-progress",
    ])
    out = capsys.readouterr()
    assert status == 0, out.err
    keys = [w["key"] for w in json.loads((tmp_path / "r.json").read_text())["workloads"]]
    assert keys == ["W6", *AGENT_WORKLOADS]
    assert "W6A fan-out agent" in out.out


def test_workloads_are_deterministic(tpch: Any) -> None:
    database = tpch.session.connection
    for key in [*WORKLOADS, *AGENT_WORKLOADS]:
        first, second = build_workload(key, database, 3), build_workload(key, database, 3)
        assert first.queries == second.queries and len(first.queries) == 3


def test_lower_bound_is_the_token_trie_of_distinct_prompts() -> None:
    from halo_sql.llm.base import LLMRequest
    from halo_sql.llm.sim import SimBackend

    recorder = Recorder()
    backend = recorder.wrap(lambda model: SimBackend())("default")
    backend.generate([LLMRequest("Is it late? a"), LLMRequest("Is it late? b")])
    backend.generate([LLMRequest("Is it late? a")])  # a repeat adds nothing to the bound
    # Regex tokens: "Is", " it", " late", "?", " a" | " b": 4 shared + 2 distinct.
    assert LowerBound().of(recorder) == 6
    assert recorder.calls == 2 and recorder.requests == 3


def test_answers_compare_regardless_of_row_order() -> None:
    assert canonical_rows(pa.table({"a": [1, 2]})) == canonical_rows(pa.table({"a": [2, 1]}))
    assert canonical_rows(pa.table({"a": [1, 2]})) != canonical_rows(pa.table({"a": [1, 3]}))


def test_stats_sum_and_unknown_systems() -> None:
    assert sum_stats([{"llm_requests": 2}, {"llm_requests": 3, "output_tokens": 1}])["llm_requests"] == 5
    with pytest.raises(ValueError, match="unknown system"):
        make_system("fast")

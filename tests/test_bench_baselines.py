"""The baselines a user would run instead of halo (issue 10), on the sim backend: the plain
asyncio programs (`vllm-async`) and the LangGraph graphs (`langgraph`, against the sim-backed
OpenAI-compatible stand-in server) answer as halo does, the workload's lower bound comes from the
workload alone, and the scaling and online modes run. The agent workloads run as asyncio and
LangGraph tool loops with halo's agent prompts.

The tests that need equal prompts make sure halo renders every template in place, as it does by
default (`_in_place`, a no-op then; were halo to move a template's values after its text, its
prompts and the sim's answers would differ from the programs'), and one test pins agreement on W3
and W5, whose templates end with their slots, with halo as it is.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import halo_sql
from halo_sql.llm.base import OutputSpec
from halo_sql.llm.sim import SimBackend
from tpc_agentic_bench.__main__ import main
from tpc_agentic_bench.agent_programs import AGENTS
from tpc_agentic_bench.bound import prefix_trie_blocks
from tpc_agentic_bench.clients import BackendClient, EngineKey, OpenAIClient, Router, _usage_answer
from tpc_agentic_bench.graphs import run_graph_batch
from tpc_agentic_bench.harness import (
    BenchConfig,
    canonical_rows,
    halo_renders_in_place,
    run_benchmark,
)
from tpc_agentic_bench.modes import arrival_times, run_online, run_scaling
from tpc_agentic_bench.programs import Step, render, run_batch
from tpc_agentic_bench.report import format_report
from tpc_agentic_bench.servers import SimOpenAIServer
from tpc_agentic_bench.systems import sum_stats
from tpc_agentic_bench.workloads import AGENT_WORKLOADS, WORKLOADS, build_workload

BASELINES = ("vllm-async", "langgraph")


@pytest.fixture(scope="module")
def _in_place() -> Iterator[None]:
    """halo renders every template in place (its default once prompt layout changes are opt-in);
    a no-op where it already does."""
    if halo_renders_in_place():
        yield
        return
    from halo_sql.parser.template import PromptTemplate

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PromptTemplate, "inline", property(lambda self: not self.data_last))
        assert halo_renders_in_place()
        yield


@pytest.fixture(scope="module")
def report(tpch_dir: Path, _in_place: None) -> dict[str, Any]:
    """All eight workloads under naive, halo and both baselines, halo rendering in place (three
    queries: W5's and W7's first three shapes; two of W5's share their filter requests)."""
    config = BenchConfig(backend="sim", queries=3, scale=0.01, cache_dir=tpch_dir.parent,
                         systems=("naive", "halo", *BASELINES))
    return run_benchmark(config)


@pytest.fixture(scope="module")
def agent_report(tpch_dir: Path, _in_place: None) -> dict[str, Any]:
    """The four agent workloads under halo and both baselines (four queries: both W5A shapes
    of two (nation, month) groups)."""
    config = BenchConfig(backend="sim", queries=4, scale=0.01, cache_dir=tpch_dir.parent,
                         workloads=tuple(AGENT_WORKLOADS), systems=("halo", *BASELINES))
    return run_benchmark(config)


def _row(report: dict[str, Any], workload: str, system: str) -> dict[str, Any]:
    entry = next(w for w in report["workloads"] if w["key"] == workload)
    return next(r for r in entry["systems"] if r["name"] == system)


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("system", BASELINES)
def test_baselines_answer_as_halo_does(report: dict[str, Any], workload: str, system: str) -> None:
    row = _row(report, workload, system)
    assert row["available"] and row["errors"] == [], row.get("note")
    assert row["agreement_reference"] == "halo"
    assert row["agreement"] == 1.0, row["differing_queries"]


@pytest.mark.parametrize("workload", list(AGENT_WORKLOADS))
@pytest.mark.parametrize("system", BASELINES)
def test_agent_baselines_answer_as_halo_does(
    agent_report: dict[str, Any], workload: str, system: str
) -> None:
    row = _row(agent_report, workload, system)
    assert row["available"] and row["errors"] == [], row.get("note")
    assert row["agreement"] == 1.0, row["differing_queries"]
    # Each agent run is its own loop: never fewer requests than halo, which runs equal agent
    # runs once; the sim's agents call tools, so runs take several replies.
    halo = _row(agent_report, workload, "halo")
    assert row["llm_requests"] >= halo["llm_requests"] > 0
    assert row["backend_calls"] == row["llm_requests"]
    entry = next(w for w in agent_report["workloads"] if w["key"] == workload)
    assert entry["lower_bound_source"] == "workload"
    assert row["computed_prompt_tokens"] >= entry["lower_bound"]["prompt_tokens_blocks"]


def test_program_agents_call_their_sql_tools_and_read_the_results(tpch: Any) -> None:
    database = tpch.session.connection
    workload = build_workload("W6A", database, 3)
    recorder = _Recorder()
    outcomes = asyncio.run(run_batch(workload, recorder, database))
    calls = sum(sum(o.table.column("calls").to_pylist()) for o in outcomes if o.table is not None)
    assert calls > 0
    # A tool result reaches the next prompt as the SQL's rows, named by the tool's columns.
    assert any('\nResult: [{"' in prompt for prompt, _ in recorder.asked)


@pytest.mark.parametrize("workload", list(AGENT_WORKLOADS))
def test_program_agents_prompt_as_halo_agents_do(
    tpch: Any, tpch_dir: Path, workload: str
) -> None:
    """The programs' agents are the workload's CREATE AGENT statements written in Python: the
    same prompt header and reply schemas as halo's agent loop builds from its catalog."""
    from halo_sql.datasets.tpch import load_tpch
    from halo_sql.executor.agent_loop import agent_header, render_prompt, reply_schema

    con = halo_sql.connect(backend="sim")
    try:
        load_tpch(con.session.connection, 0.01, tpch_dir.parent)  # CREATE TOOL binds its SQL
        for statement in build_workload(workload, tpch.session.connection, 1).setup_sql:
            con.execute(statement)
        catalog = con.session.agents
        for agent in AGENTS[workload]:
            spec = catalog.agent(agent.name)
            tools = catalog.tools_of(spec)
            assert agent.header() == agent_header(spec, tools)
            assert [t.name for t in agent.tools] == [t.name for t in tools]
            assert all(mine.schema == theirs.parameter_schema
                       for mine, theirs in zip(agent.tools, tools, strict=True))
            assert (agent.max_steps, agent.max_tokens) == (spec.max_steps, spec.max_tokens)
            for last in (False, True):
                assert OutputSpec.json(agent.reply_schema(last=last)) == OutputSpec.json(
                    reply_schema(tools, spec.output_schema, final_only=last))
            transcript = ["Step 1: called x with {}\nResult: []"]
            assert agent.prompt('{"a": 1}', transcript, agent.max_steps) == render_prompt(
                agent_header(spec, tools), '{"a": 1}', transcript, agent.max_steps, spec.max_steps)
    finally:
        con.close()


class _Recorder:
    """An Ask that records each prompt and answers from the sim."""

    def __init__(self) -> None:
        self.client = BackendClient(SimBackend())
        self.asked: list[tuple[str, str | None]] = []

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Any:
        answer = await self.client(model, prompt, output, max_tokens)
        self.asked.append((prompt, answer.text))
        return answer


def test_w7_panels_summarize_the_rows_they_show_each_panel_for_itself(tpch: Any) -> None:
    database = tpch.session.connection
    workload = build_workload("W7", database, 8)
    recorder = _Recorder()
    outcomes = asyncio.run(run_batch(workload, recorder, database))
    for params, outcome in zip(workload.params, outcomes, strict=True):
        assert outcome.error is None and outcome.table is not None
        shown = outcome.table.num_rows
        if params["shape"] in (0, 1):  # a summary per row shown, nothing else
            assert outcome.stats["llm_requests"] == shown
        if params["shape"] == 3:  # the latest two: a summary and a tone each
            assert shown == 2 and outcome.stats["llm_requests"] == 4
    summaries = [p for p, _ in recorder.asked if "Summarize the order note" in p]
    assert len(summaries) > len(set(summaries))  # panels showing the same order ask again


def test_w8_program_asks_the_urgency_after_the_join_predicate_as_written(tpch: Any) -> None:
    database = tpch.session.connection
    workload = build_workload("W8", database, 2)
    recorder = _Recorder()
    outcomes = asyncio.run(run_batch(workload, recorder, database))
    assert all(o.error is None for o in outcomes)
    matched = {p.split('"')[1] for p, text in recorder.asked
               if "be about parts made of" in p and text == "yes"}
    urgencies = [p.rsplit("Note: ", 1)[1] for p, _ in recorder.asked if "How urgent" in p]
    assert urgencies and set(urgencies) <= matched  # only notes with a matching material
    assert len(urgencies) == len(set(urgencies))  # once per note, not per matching pair
    # The logical run (the workload bound) asks each note's urgency first instead.
    bound = _Recorder()
    asyncio.run(run_batch(workload, bound, database, eager=False))
    notes = sum(database.cursor().execute("SELECT count(*) FROM orders WHERE o_custkey = ?",
                                          [p["custkey"]]).fetchall()[0][0]
                for p in workload.params)
    assert sum("How urgent" in p for p, _ in bound.asked) == notes
    assert len(bound.asked) < len(recorder.asked)


def test_on_templates_ending_with_their_slots_vllm_async_agrees_with_halo_as_it_is(
    tpch_dir: Path,
) -> None:
    config = BenchConfig(backend="sim", queries=3, scale=0.01, cache_dir=tpch_dir.parent,
                         workloads=("W3", "W5"), systems=("halo", "vllm-async"))
    for workload in run_benchmark(config)["workloads"]:
        row = next(r for r in workload["systems"] if r["name"] == "vllm-async")
        assert row["agreement"] == 1.0, (workload["key"], row["differing_queries"])


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_baselines_send_one_engine_request_per_step_without_sharing(
    report: dict[str, Any], workload: str
) -> None:
    for system in BASELINES:
        row = _row(report, workload, system)
        assert row["backend_calls"] == row["llm_requests"] > 0
        assert row["computed_prompt_tokens"] == row["prompt_tokens"] - row["cached_prompt_tokens"]
    # No deduplication in the programs: they ask at least what the row-at-a-time engine asks.
    assert _row(report, workload, "vllm-async")["llm_requests"] >= \
        _row(report, workload, "halo")["llm_requests"]


def test_w5_shares_work_halo_skips_and_the_baselines_repeat(report: dict[str, Any]) -> None:
    # Shapes 0 and 2 of a (nation, month) ask the same filter over the same orders.
    assert _row(report, "W5", "vllm-async")["llm_requests"] > _row(report, "W5", "halo")["llm_requests"]


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_no_system_computes_less_than_the_workload_bound(report: dict[str, Any], workload: str) -> None:
    entry = next(w for w in report["workloads"] if w["key"] == workload)
    bound = entry["lower_bound"]
    assert entry["lower_bound_source"] == "workload"
    assert 0 < bound["prompt_tokens"] <= bound["prompt_tokens_blocks"]
    assert bound["requests"] > 0 and bound["output_tokens"] > 0
    for row in entry["systems"]:
        assert row["computed_prompt_tokens"] >= bound["prompt_tokens_blocks"], row["name"]
        assert row["computed_over_lb"] >= row["computed_over_lb_blocks"] >= 1.0, row["name"]
        assert row["output_tokens"] >= bound["output_tokens"], row["name"]


def test_the_bound_belongs_to_the_workload_whatever_systems_run(
    tpch_dir: Path, report: dict[str, Any]
) -> None:
    alone = BenchConfig(backend="sim", queries=3, scale=0.01, cache_dir=tpch_dir.parent,
                        workloads=("W2", "W5"), systems=("per_query",))
    for entry in run_benchmark(alone)["workloads"]:
        together = next(w for w in report["workloads"] if w["key"] == entry["key"])
        assert entry["lower_bound"] == together["lower_bound"]


def test_speedups_against_the_best_baseline(report: dict[str, Any]) -> None:
    for entry in report["workloads"]:
        rows = {r["name"]: r for r in entry["systems"]}
        best = min(BASELINES, key=lambda name: rows[name]["seconds"])
        assert rows["halo"]["best_baseline"] == best
        assert rows[best]["speedup_vs_best_baseline"] == 1.0
        expected = rows[best]["seconds"] / rows["halo"]["seconds"]
        # The report rounds speedups to 3 decimals (and seconds to 4): ratios far below 1 (the
        # sim's program baselines take milliseconds) are only that exact.
        assert rows["halo"]["speedup_vs_best_baseline"] == pytest.approx(expected, rel=0.01,
                                                                          abs=5e-4)
    text = format_report(report)
    assert "x best" in text and "workload bound" in text and "x best baseline" in text


# -- the pieces ----------------------------------------------------------------------------------


def test_programs_render_values_in_place_and_add_nothing() -> None:
    assert render("Q: {q} A: {a}", {"q": "{a}", "a": "no"}) == "Q: {a} A: no"
    step = Step("Rate it: {x}", OutputSpec.choice(["1", "2"]))
    assert step.prompt({"x": "ok"}) == "Rate it: ok"  # the labels are the engine's constraint


def test_block_bound_counts_whole_shared_blocks_once_and_every_partial_block() -> None:
    # Blocks of 2: [a b] shared, then [c d] and [c e] differ, tails "f" and "" (6 = 2+2+2).
    assert prefix_trie_blocks([list("abcdf"), list("abce")], block_size=2) == 2 + 2 + 2 + 1
    assert prefix_trie_blocks([list("ab"), list("ab")], block_size=2) == 2  # a repeat is free


def test_unreported_cached_tokens_stay_unknown() -> None:
    answer = _usage_answer("yes", {"prompt_tokens": 7, "completion_tokens": 1})
    assert answer.cached_prompt_tokens is None
    totals = sum_stats([{"cached_prompt_tokens": None, "prompt_tokens": 7},
                        {"cached_prompt_tokens": 3, "prompt_tokens": 5}])
    assert totals["cached_prompt_tokens"] is None and totals["prompt_tokens"] == 12


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_graphs_over_an_openai_compatible_server_answer_as_the_program(
    tpch: Any, chat: bool
) -> None:
    database = tpch.session.connection
    workload = build_workload("W3", database, 2)
    direct = Router({"default": BackendClient(SimBackend())})
    expected = asyncio.run(run_batch(workload, direct, database))
    with SimOpenAIServer(SimBackend()) as server:
        client = OpenAIClient(server.base_url, "sim", EngineKey("sim", None, chat))

        async def go() -> Any:
            try:
                return await run_graph_batch(workload, Router({"default": client}), database)
            finally:
                await client.aclose()

        got = asyncio.run(go())
        assert server.requests == sum(o.stats["llm_requests"] for o in got) > 0
    assert [canonical_rows(o.table) for o in got] == [canonical_rows(o.table) for o in expected]
    assert all(o.stats["cached_prompt_tokens"] is not None for o in got)


def test_the_stand_in_server_stops(tmp_path: Path) -> None:
    server = SimOpenAIServer(SimBackend()).start()
    assert httpx.get(server.base_url + "/health").status_code == 200
    port = server.port
    server.stop()
    server.stop()  # twice is harmless
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


# -- modes ---------------------------------------------------------------------------------------


def test_scaling_mode_runs_each_size_under_halo_and_vllm_async(tpch_dir: Path) -> None:
    config = BenchConfig(backend="sim", scale=0.01, cache_dir=tpch_dir.parent,
                         workloads=("W2", "W5"), systems=("halo", "vllm-async"))
    report = run_scaling(config, sizes=(2, 4))
    points = {(p["workload"], p["queries"], p["system"]): p for p in report["points"]}
    assert set(points) == {(w, n, s) for w in ("W2", "W5") for n in (2, 4)
                           for s in ("halo", "vllm-async")}
    for point in points.values():
        assert not point.get("failed") and point["errors"] == 0, point
        assert point["peak_rss_mib"] > 0 and point["seconds_per_query"] > 0
        assert "planning_seconds" in point
    assert points[("W2", 4, "halo")]["llm_requests"] == 2 * points[("W2", 2, "halo")]["llm_requests"]


def test_online_mode_replays_the_same_seeded_arrivals_for_each_system(tpch_dir: Path) -> None:
    assert arrival_times(5, 4.0, seed=3) == arrival_times(5, 4.0, seed=3)
    assert arrival_times(5, 4.0, seed=3) != arrival_times(5, 4.0, seed=4)
    config = BenchConfig(backend="sim", scale=0.01, cache_dir=tpch_dir.parent, queries=4,
                         workloads=("W2",), systems=("halo", "vllm-async"))
    report = run_online(config, rates=(40.0,), seed=1)
    assert {p["system"] for p in report["points"]} == {"halo", "vllm-async"}
    for point in report["points"]:
        assert point["completed"] == 4 and point["errors"] == 0, point
        assert 0 < point["p50_latency_s"] <= point["p99_latency_s"]
        assert point["throughput_qps"] > 0
    assert set(report["saturation_qps"]["W2"]) == {"halo", "vllm-async"}


def test_cli_scaling_and_online(tpch_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--backend", "sim", "--quick", "--scaling", "--sizes", "2",
                   "--workloads", "W5", "--cache-dir", str(tpch_dir.parent), "--no-progress",
                   "--json", str(tmp_path / "s.json")])
    assert status == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "s.json").read_text())["mode"] == "scaling"
    status = main(["run", "--backend", "sim", "--quick", "--online", "--rates", "50",
                   "--queries", "2", "--cache-dir", str(tpch_dir.parent), "--no-progress"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "saturation throughput" in out.out

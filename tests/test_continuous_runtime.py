"""The continuous runtime (issue 11), on the sim backend's simulated continuous-batching engine.

Scheduling is observed through the order of events at the backend (which request started and
finished when), never through wall-clock timing.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

import halo_sql
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.llm import aio
from halo_sql.llm.base import LLMRequest, LLMResponse
from halo_sql.llm.sim import SimBackend
from halo_sql.physical.planner import PhysicalSettings


class EventLog:
    """A backend wrapper recording ("start"|"end", prompt) in the order the engine saw them."""

    def __init__(self, inner: SimBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.events: list[tuple[str, str]] = []

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        self.events.append(("start", request.prompt))
        response = await self.inner.agenerate(request, priority=priority)
        self.events.append(("end", request.prompt))
        return response

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return self.inner.generate(requests)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def close(self) -> None:
        pass


@pytest.fixture()
def engine() -> EventLog:
    return EventLog(SimBackend(step_seconds=0.001))


@pytest.fixture()
def con(engine: EventLog) -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    con.session.runtime = LLMRuntime(lambda model: engine)  # type: ignore[arg-type, return-value]
    con.register(
        "notes",
        pa.table({
            "id": list(range(12)),
            "customer": [i % 4 for i in range(12)],
            "text": [f"note {i} about order {i * 7} and its invoice" for i in range(12)],
        }),
    )
    yield con
    con.close()


CHAIN = """
WITH first AS (SELECT id, LLM('Step one: {text}', max_tokens => 16) AS a FROM notes),
     second AS (SELECT id, a, LLM('Step two: {a}', max_tokens => 16) AS b FROM first)
SELECT id, a, b FROM second ORDER BY id
"""


def test_a_row_moves_to_its_next_step_before_the_slowest_row_of_its_step_finishes(
    con: halo_sql.Connection, engine: EventLog
) -> None:
    con.sql(CHAIN)
    order = {event: i for i, event in enumerate(engine.events)}
    step_one_ends = [i for (kind, prompt), i in order.items() if kind == "end" and prompt.startswith("Step one")]
    step_two_starts = [i for (kind, prompt), i in order.items() if kind == "start" and prompt.startswith("Step two")]
    assert len(step_one_ends) == 12 and len(step_two_starts) == 12
    # Pipelined: the first second step starts while step one is still decoding other rows.
    assert min(step_two_starts) < max(step_one_ends)


def test_the_chain_as_a_pipeline_gives_the_answers_of_whole_steps(con: halo_sql.Connection) -> None:
    pipelined = con.sql(CHAIN).to_pylist()  # type: ignore[union-attr]
    con.session.settings = PhysicalSettings(pipelining=False)
    assert con.sql(CHAIN).to_pylist() == pipelined  # type: ignore[union-attr]


def test_identical_requests_of_concurrent_queries_are_sent_once_while_in_flight(
    con: halo_sql.Connection, engine: EventLog
) -> None:
    queries = ["SELECT id, LLM('Summarize: {text}') AS s FROM notes WHERE customer = 1"] * 3
    batch = con.execute_batch(queries)
    stats = batch.stats()
    assert stats["llm_requests"] == 3  # three distinct notes for customer 1
    assert stats["shared_requests"] == 6
    assert sum(1 for kind, _ in engine.events if kind == "start") == 3
    assert batch.tables[0] == batch.tables[1] == batch.tables[2]


def test_online_queries_join_the_requests_already_in_flight(con: halo_sql.Connection) -> None:
    slow = EventLog(SimBackend(step_seconds=0.05))  # requests run ~1 s: long enough to join
    con.session.runtime = LLMRuntime(lambda model: slow)  # type: ignore[arg-type, return-value]
    sql = "SELECT id, LLM('Summarize: {text}', max_tokens => 16) AS s FROM notes"
    first = con.session.submit(sql)
    second = con.session.submit(sql)
    a, b = first.result(timeout=60), second.result(timeout=60)
    assert a.table == b.table
    # The second query arrived while the first one's requests were running: it paid for none.
    assert a.stats.llm_requests == 12
    assert b.stats.llm_requests == 0 and b.stats.shared_requests == 12


def test_batch_answers_equal_one_by_one_with_a_scheduling_engine(con: halo_sql.Connection) -> None:
    params = [{"c": c} for c in range(4)]
    sql = CHAIN.replace("FROM notes)", "FROM notes WHERE customer = $c)")
    expected = [con.sql(sql, p).to_pylist() for p in params]  # type: ignore[union-attr]
    batch = con.execute_batch(sql, params)
    assert [t.to_pylist() for t in batch.tables] == expected  # type: ignore[union-attr]


def test_a_limit_stops_feeding_requests_and_aborts_the_ones_nobody_needs(
    con: halo_sql.Connection, engine: EventLog
) -> None:
    con.sql("SELECT id, LLM('Summarize: {text}', max_tokens => 16) AS s FROM notes LIMIT 2")
    started = [p for kind, p in engine.events if kind == "start"]
    assert con.stats()["llm_requests"] <= 3 and len(started) <= 3


def test_a_thousand_query_batch_completes_with_memory_bounded_by_rows_in_flight() -> None:
    con = halo_sql.connect(backend="sim")
    con.register("notes", pa.table({"id": list(range(2000)), "text": [f"n{i}" for i in range(2000)]}))
    sql = "SELECT id, LLM('Tag: {text}', max_tokens => 4) AS t FROM notes WHERE id = $i"

    def peak(queries: int) -> int:
        tracemalloc.start()
        batch = con.execute_batch(sql, [{"i": i} for i in range(queries)])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert not batch.errors and sum(t.num_rows for t in batch.tables) == queries  # type: ignore[union-attr]
        return top

    small, large = peak(250), peak(1000)
    # Four times the queries; per-query plans and results are kept, rows in flight are not.
    assert large < 4 * small


def test_the_runtime_shares_a_request_between_statements_only_while_it_is_in_flight() -> None:
    sim = SimBackend(step_seconds=0.001)
    runtime = LLMRuntime(lambda model: sim)
    a, b = StatementStats(), StatementStats()

    async def both() -> list[Any]:
        return list(await asyncio.gather(
            runtime.request("m", LLMRequest("same"), a), runtime.request("m", LLMRequest("same"), b)
        ))

    first, second = aio.run(both())
    assert first == second
    assert (a.llm_requests, b.llm_requests, b.shared_requests) == (1, 0, 1)
    c = StatementStats()
    runtime.generate("m", [LLMRequest("same")], c)  # later, not in flight: asked again
    assert c.llm_requests == 1


def test_independent_llm_maps_of_a_row_are_asked_together(
    con: halo_sql.Connection, engine: EventLog
) -> None:
    con.sql(
        "SELECT id, LLM('Judge A: {text}', max_tokens => 16) AS a, "
        "LLM('Judge B: {text}', max_tokens => 16) AS b FROM notes WHERE id = 1"
    )
    kinds = [(kind, prompt.split(":")[0]) for kind, prompt in engine.events]
    # Both judges start before either answers: they do not wait for each other.
    assert kinds[:2] == [("start", "Judge A"), ("start", "Judge B")]


def test_a_batch_capped_at_one_query_in_flight_runs_its_queries_one_after_another(
    con: halo_sql.Connection, engine: EventLog
) -> None:
    queries = [f"SELECT id, LLM('Tag: {{text}}', max_tokens => 16) AS t FROM notes WHERE id = {i}" for i in range(3)]
    batch = con.execute_batch(queries, max_queries_in_flight=1)
    assert not batch.errors
    # Each query's request ends before the next query's starts.
    assert [kind for kind, _ in engine.events] == ["start", "end"] * 3
    with pytest.raises(halo_sql.ProgrammingError):
        con.execute_batch(queries, max_queries_in_flight=0)

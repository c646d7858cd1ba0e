"""The persistent response cache: nothing a model answered is computed twice.

Answers are stored as they arrive (beside a database file, in `<database>.halo-cache`), keyed by
the model's identity and the request; a statement interrupted by Ctrl-C, `cancel()`, an error or
`kill -9` and run again sends only what was never answered, and its stats say how many answers
came from the cache. All on the sim backend (its `latency_per_request` makes statements slow
enough to interrupt); the OpenAI server-fault rerun is in tests/test_openai_backend.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import halo_sql
from halo_sql.errors import DataError, ModelError, ProgrammingError, QueryCancelled
from halo_sql.executor.response_cache import FILE_SUFFIX, FileResponseCache, response_key
from halo_sql.executor.runtime import StatementStats, queue_for
from halo_sql.llm.base import DecodingParams, LLMRequest, LLMResponse
from halo_sql.llm.registry import running, shutdown_started_since

REPO = Path(__file__).resolve().parent.parent
ROWS = 40
SUMMARIES = "SELECT id, LLM('Summarize review {text}', model => 'slow') AS s FROM reviews ORDER BY id"


@pytest.fixture(autouse=True)
def _close_backends_started_here() -> Iterator[None]:
    before = running()
    yield
    shutdown_started_since(before)


def make_database(path: Path, *, latency: float = 0.03) -> str:
    """A database file with ROWS distinct reviews and a slow sim model `slow`."""
    con = halo_sql.connect(str(path), backend="sim")
    con.sql(f"CREATE TABLE reviews AS SELECT i AS id, 'review number ' || i AS text FROM range({ROWS}) r(i)")
    con.sql(f"CREATE MODEL slow USING sim WITH (latency_per_request => {latency})")
    con.close()
    return str(path)


def stored(database: str) -> int:
    """Answers committed to the cache file, read as another process would."""
    cache = database + FILE_SUFFIX
    if not os.path.exists(cache):
        return 0
    with sqlite3.connect(cache) as reader:
        try:
            return int(reader.execute("SELECT count(*) FROM responses").fetchone()[0])
        except sqlite3.OperationalError:  # the writer is creating the file's tables
            return 0


def interrupt_after(answers: int, action: Callable[[], None]) -> Callable[[StatementStats], None]:
    """A progress callback that runs `action` in another thread (as a user pressing Ctrl-C
    would) once `answers` answers have arrived."""
    fired = threading.Event()

    def progress(stats: StatementStats) -> None:
        if stats.llm_requests >= answers and not fired.is_set():
            fired.set()
            threading.Thread(target=action).start()

    return progress


def answered(stats: dict[str, Any]) -> int:
    """Requests of an interrupted statement that got their answers (not aborted ones)."""
    return int(stats["llm_requests"]) - int(stats["aborted_requests"])


# -- interrupted statements ----------------------------------------------------------------------


def test_a_cancelled_statement_run_again_recomputes_no_answered_request(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb")
    con = halo_sql.connect(database)
    with pytest.raises(QueryCancelled):
        con.session.execute(SUMMARIES, progress=interrupt_after(5, con.cancel))
    got = answered(con.stats())
    assert 5 <= got < ROWS
    con.close()
    assert stored(database) == got  # every answer that arrived, committed at close

    again = halo_sql.connect(database)
    table = again.sql(SUMMARIES)
    assert table is not None and table.num_rows == ROWS and table.column("s").null_count == 0
    stats = again.stats()
    assert stats["cached_responses"] == got
    assert stats["llm_requests"] == ROWS - got  # nothing answered is sent again


def test_ctrl_c_stops_the_statement_and_keeps_the_answers_that_arrived(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.05)
    con = halo_sql.connect(database)

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the waiting main thread

    with pytest.raises(KeyboardInterrupt):
        con.session.execute(SUMMARIES, progress=interrupt_after(5, ctrl_c))
    got = answered(con.stats())
    assert 5 <= got < ROWS
    assert queue_for(con.session.backend("slow")).in_flight == 0  # nothing left running
    con.sql(SUMMARIES)  # the same session: answers not yet in the file are served too
    assert con.stats()["cached_responses"] == got
    assert con.stats()["llm_requests"] == ROWS - got


def test_a_statement_failed_by_an_error_midway_keeps_its_answers(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    # The answers are text: casting them to integers fails after the model answered.
    with pytest.raises(DataError):
        con.sql("SELECT CAST(LLM('Summarize review {text}', model => 'slow') AS INTEGER) FROM reviews")
    got = answered(con.stats())
    assert got > 0
    con.sql("SELECT TRY_CAST(LLM('Summarize review {text}', model => 'slow') AS INTEGER) FROM reviews")
    assert con.stats()["cached_responses"] == got
    assert con.stats()["llm_requests"] == ROWS - got


def test_a_failed_request_is_not_cached_and_a_longer_window_reuses_the_rest(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql("CREATE MODEL narrow USING sim WITH (context_window => 12)")
    con.sql("INSERT INTO reviews VALUES (99, repeat('a very long review ', 20))")
    with pytest.raises(ModelError, match="1 LLM request"):
        con.sql("SELECT LLM('Summarize review {text}', model => 'narrow') FROM reviews")
    # The context window is not part of the model's identity: only the failed prompt is sent.
    con.sql("CREATE MODEL wide USING sim WITH (context_window => 4096)")
    con.sql("SELECT LLM('Summarize review {text}', model => 'wide') FROM reviews")
    assert con.stats()["cached_responses"] == ROWS and con.stats()["llm_requests"] == 1


_BATCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import halo_sql
    con = halo_sql.connect(sys.argv[1])
    queries = [
        f"SELECT id, LLM('Summarize review {{text}}', model => 'slow') AS s FROM reviews "
        f"WHERE id % 4 = {k} ORDER BY id"
        for k in range(4)
    ]
    print("started", flush=True)
    batch = con.execute_batch(queries)
    print(json.dumps({"stats": batch.stats(), "rows": sum(t.num_rows for t in batch.tables),
                      "errors": [str(e) for _, e in batch.errors]}), flush=True)
    """
)


def run_batch_process(database: str, script: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), database], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_batch_killed_mid_way_reruns_without_recomputing_what_was_answered(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.08)
    script = tmp_path / "batch.py"
    script.write_text(_BATCH_SCRIPT)

    first = run_batch_process(database, script)
    deadline = time.monotonic() + 120
    while stored(database) < 8:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the batch never stored 8 answers"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    before_kill = stored(database)  # everything committed before the kill, and no more
    assert 8 <= before_kill < ROWS, "the kill must land mid-batch"

    rerun = run_batch_process(database, script)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["rows"] == ROWS and report["errors"] == []
    assert report["stats"]["cached_responses"] == before_kill
    assert report["stats"]["llm_requests"] == ROWS - before_kill  # 0 recomputed
    assert stored(database) == ROWS


# -- what is cached, and what is not ---------------------------------------------------------------


def test_answers_are_shared_by_model_identity_not_by_model_name(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    assert con.stats()["llm_requests"] == ROWS
    # Another name, another latency, the same answers: shared.
    con.sql("CREATE MODEL fast USING sim WITH (latency_per_request => 0)")
    con.sql(SUMMARIES.replace("'slow'", "'fast'"))
    assert con.stats()["cached_responses"] == ROWS and con.stats()["llm_requests"] == 0


@pytest.mark.parametrize(
    "other",
    [
        "CREATE MODEL other USING sim WITH (seed => 7)",  # another model: other answers
        "CREATE MODEL other USING sim WITH (latency_per_request => 0.0001, seed => 1)",
    ],
)
def test_different_models_never_share_answers(tmp_path: Path, other: str) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    con.sql(other)
    con.sql(SUMMARIES.replace("'slow'", "'other'"))
    assert con.stats()["cached_responses"] == 0 and con.stats()["llm_requests"] == ROWS


@pytest.mark.parametrize(
    "variant",
    [
        "LLM('Summarize review {text}', model => 'slow', max_tokens => 8)",
        "LLM_CLASSIFY('Summarize review {text}', ['good', 'bad'], model => 'slow')",
        "LLM_FILTER('Summarize review {text}', model => 'slow')",
        "LLM_EXTRACT('Summarize review {text}', '{\"late\": \"boolean\"}', model => 'slow')",
    ],
)
def test_other_decoding_parameters_or_output_types_never_share_answers(
    tmp_path: Path, variant: str
) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    con.sql(f"SELECT {variant} AS v FROM reviews")
    assert con.stats()["cached_responses"] == 0 and con.stats()["llm_requests"] == ROWS


def test_temperature_above_zero_is_never_cached(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    sampled = "SELECT LLM('Summarize review {text}', model => 'slow', temperature => 0.7) FROM reviews"
    for _ in range(2):
        con = halo_sql.connect(database)
        con.sql(sampled)
        assert con.stats()["llm_requests"] == ROWS and con.stats()["cached_responses"] == 0
        con.close()
    assert stored(database) == 0
    assert response_key("sim", LLMRequest("x", params=DecodingParams(temperature=0.7))) is None


def test_identical_requests_in_flight_are_still_sent_once(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.02)
    con = halo_sql.connect(database)
    first, second = con.session.submit(SUMMARIES), con.session.submit(SUMMARIES)
    one, two = first.result(timeout=60).stats, second.result(timeout=60).stats
    assert one.llm_requests + two.llm_requests == ROWS  # each request sent once in all
    assert two.cached_responses + two.deduplicated_requests + two.llm_requests == ROWS


# -- turning it off, clearing it, where it lives ---------------------------------------------------


def test_set_response_cache_off_sends_every_request_and_stores_none(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    con.sql("SET response_cache = off")
    con.sql(SUMMARIES)
    assert con.stats()["llm_requests"] == ROWS and con.stats()["cached_responses"] == 0
    assert con.session.response_cache is None
    con.sql("CLEAR RESPONSE CACHE")  # clears the file even while off
    con.sql(SUMMARIES)
    con.sql("SET response_cache = on")
    con.sql(SUMMARIES)
    assert con.stats()["llm_requests"] == ROWS  # nothing was stored while off
    con.sql(SUMMARIES)
    assert con.stats()["cached_responses"] == ROWS
    off = halo_sql.connect(str(tmp_path / "other.duckdb"), backend="sim", response_cache=False)
    off.sql("SELECT LLM('Hi {x}') FROM (VALUES ('a')) v(x)")
    assert not os.path.exists(str(tmp_path / "other.duckdb") + FILE_SUFFIX)


def test_clear_response_cache_forgets_every_answer(tmp_path: Path) -> None:
    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    removed = con.sql("CLEAR RESPONSE CACHE")
    assert removed is not None and removed.to_pylist() == [{"removed_responses": ROWS}]
    con.sql(SUMMARIES)
    assert con.stats()["llm_requests"] == ROWS and con.stats()["cached_responses"] == 0
    assert con.session.clear_response_cache() == ROWS


def test_bad_settings_are_refused_naming_the_choices(tmp_path: Path) -> None:
    con = halo_sql.connect(backend="sim")
    with pytest.raises(ProgrammingError, match="on, off or a quoted path"):
        con.sql("SET response_cache = maybe")


def test_the_cache_lives_beside_the_database_file_and_only_once_something_is_stored(
    tmp_path: Path,
) -> None:
    database = str(tmp_path / "plain.duckdb")
    con = halo_sql.connect(database, backend="sim")
    con.sql("CREATE TABLE t AS SELECT 1 AS x")
    assert not os.path.exists(database + FILE_SUFFIX)  # plain SQL leaves nothing beside it
    con.sql("SELECT LLM('Hi {x}') FROM t")
    con.close()
    assert stored(database) == 1


def test_in_memory_databases_cache_only_when_turned_on_and_only_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    con = halo_sql.connect(backend="sim")
    sql = "SELECT LLM('Hi {x}') FROM (VALUES ('a'), ('b')) v(x)"
    con.sql(sql)
    con.sql(sql)
    assert con.stats()["llm_requests"] == 2 and con.stats()["cached_responses"] == 0
    con.sql("SET response_cache = on")
    con.sql(sql)
    con.sql(sql)
    assert con.stats()["cached_responses"] == 2 and con.stats()["llm_requests"] == 0
    assert os.listdir(tmp_path) == []
    named = tmp_path / "answers.halo-cache"
    con.sql(f"SET response_cache = '{named}'")  # or a file, kept across sessions
    con.sql(sql)
    con.close()
    assert named.exists()


def test_a_read_only_server_refuses_to_clear_the_cache() -> None:
    from halo_sql.frontends.server import read_only_refusal

    assert read_only_refusal("CLEAR RESPONSE CACHE") is not None


def test_benchmark_sessions_compute_every_answer(tmp_path: Path) -> None:
    import duckdb

    from tpc_agentic_bench.harness import ModelSetup

    setup = ModelSetup("sim", None, {}, None, {"seed": 1})
    con = setup.connect(duckdb.connect(str(tmp_path / "bench.duckdb")))
    assert con.session.response_cache is None


# -- the file itself -------------------------------------------------------------------------------


def test_answers_put_are_readable_at_once_and_after_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "c.halo-cache")
    cache = FileResponseCache(path)
    key = response_key("m", LLMRequest("Capital of France?"))
    assert key is not None
    answer = LLMResponse("Paris", 5, 0, 1)
    cache.put(key, "m", answer)
    assert cache.get(key) == answer  # before the writer committed it
    cache.close()
    reopened = FileResponseCache(path)
    assert reopened.get(key) == answer and len(reopened) == 1
    reopened.close()


def test_a_cache_file_that_cannot_be_written_warns_and_never_fails_a_statement(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    con = halo_sql.connect(backend="sim", response_cache=str(blocked / "no" / "dir" / "c"))
    with pytest.warns(RuntimeWarning, match="response cache"):
        con.sql("SELECT LLM('Hi {x}') FROM (VALUES ('a')) v(x)")
        con.session.response_cache.flush()  # type: ignore[union-attr]
    assert con.stats()["llm_requests"] == 1


def test_the_shell_says_how_many_answers_came_from_the_cache(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    from halo_sql.frontends.shell import _timer_line

    database = make_database(tmp_path / "shop.duckdb", latency=0.0)
    con = halo_sql.connect(database)
    con.sql(SUMMARIES)
    result = con.run(SUMMARIES)
    assert f"{ROWS} answers from the response cache" in _timer_line(result.stats)

"""The `openai` backend: any OpenAI-compatible server as a model.

Fast specifications run against a small fake server on 127.0.0.1 (tests/fake_openai_server.py):
options and key handling, constrained outputs by what the server offers, retries and faults,
token accounting. The ones marked `vllm` run against ONE real vLLM OpenAI-compatible server
(the session's `vllm_server`, tiny model); the engine's own LLM-function tests run through it too
(tests/test_engine_vllm.py, parameter `openai`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fake_openai_server import FakeOpenAIServer, Reply

import halo_sql
from halo_sql.errors import BinderError, IncompleteBatchError, ModelError
from halo_sql.llm import aio
from halo_sql.llm.base import DecodingParams, LLMRequest, LLMResponse, OutputSpec
from halo_sql.llm.openai_backend import DEFAULT_CONTEXT_WINDOW, OpenAIBackend
from halo_sql.llm.registry import running, shutdown_started_since
from halo_sql.llm.tokenizer import RegexTokenizer

SECRET = "sk-test-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"late": {"type": "boolean"}}, "required": ["late"]}


@pytest.fixture(autouse=True)
def _close_backends_started_here() -> Iterator[None]:
    before = running()
    yield
    shutdown_started_since(before)


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def backend_of(server: FakeOpenAIServer, **options: Any) -> OpenAIBackend:
    return OpenAIBackend(server.served, base_url=server.url, **options)


def connect_to(server: FakeOpenAIServer, database: str = ":memory:", **options: Any) -> halo_sql.Connection:
    return halo_sql.connect(
        database, backend="openai", model=server.served,
        model_options={"base_url": server.url, **options},
    )


def ask(backend: OpenAIBackend, *requests: LLMRequest) -> list[LLMResponse]:
    return backend.generate(list(requests))


# -- models: CREATE MODEL, connect(), settings, the key ------------------------------------------


def test_create_model_using_openai_runs_llm_functions_on_the_server(
    fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALO_TEST_KEY", SECRET)
    database = tmp_path / "shop.duckdb"
    con = halo_sql.connect(str(database))
    con.sql(
        f"""CREATE MODEL m USING openai WITH (base_url => '{fake.url}', model => 'fake-model',
            api_key_env => 'HALO_TEST_KEY', max_concurrency => 4, timeout => 5, api => 'chat')"""
    )
    t = con.sql("SELECT LLM('Summarize: {x}', model => 'm') AS s FROM (VALUES ('a'), ('b')) v(x)")
    assert t is not None and t.column("s").to_pylist() == ["ok", "ok"]
    assert {seen.path for seen in fake.seen} == {"/v1/chat/completions"}
    assert all(seen.headers["authorization"] == f"Bearer {SECRET}" for seen in fake.seen)
    con.close()

    again = halo_sql.connect(str(database))  # the model comes back from the database file
    shown = again.sql("SHOW MODELS")
    assert shown is not None
    [row] = shown.to_pylist()
    assert row["backend"] == "openai" and row["model"] == "fake-model"
    assert json.loads(row["options"])["api_key_env"] == "HALO_TEST_KEY"
    again.close()
    assert SECRET.encode() not in database.read_bytes()  # only the variable's name is stored


def test_connect_and_environment_settings_select_the_openai_backend(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = connect_to(fake, api="completions")
    assert con.sql("SELECT LLM('Hi {x}') AS s FROM (VALUES (1)) v(x)").to_pylist() == [{"s": "ok"}]  # type: ignore[union-attr]
    monkeypatch.setenv("HALO_BACKEND", "openai")
    monkeypatch.setenv("HALO_MODEL", "fake-model")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    from_env = halo_sql.connect()
    assert from_env.sql("SELECT LLM('Hi {x}') AS s FROM (VALUES (2)) v(x)").to_pylist() == [{"s": "ok"}]  # type: ignore[union-attr]
    assert fake.seen[-1].path == "/v1/chat/completions"  # 'chat' is the default api


def test_an_api_key_given_as_an_option_is_refused_and_never_stored(tmp_path: Path) -> None:
    database = tmp_path / "k.duckdb"
    con = halo_sql.connect(str(database))
    with pytest.raises(BinderError, match="api_key_env") as caught:
        con.sql(f"CREATE MODEL m USING openai WITH (base_url => 'http://127.0.0.1:9/v1', "
                f"model => 'x', api_key => '{SECRET}')")
    assert SECRET not in str(caught.value)
    with pytest.raises(BinderError, match="unknown option"):
        con.sql("CREATE MODEL m USING openai WITH (base_url => 'http://h/v1', model => 'x', "
                "temprature => 0)")
    with pytest.raises(BinderError, match="served-model-name"):
        con.sql("CREATE MODEL m USING openai WITH (base_url => 'http://h/v1')")
    assert con.sql("SHOW MODELS").num_rows == 0  # type: ignore[union-attr]
    con.close()
    assert SECRET.encode() not in database.read_bytes()


def test_an_unset_key_variable_is_named(fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALO_ABSENT_KEY", raising=False)
    with pytest.raises(ModelError, match=r"HALO_ABSENT_KEY .*is not set"):
        ask(backend_of(fake, api_key_env="HALO_ABSENT_KEY"), LLMRequest("Hi"))


def test_the_key_never_appears_in_errors_or_descriptions(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALO_TEST_KEY", SECRET)
    backend = backend_of(fake, api_key_env="HALO_TEST_KEY", max_retries=0)
    # Servers echo what they got; a careless one echoes the key.
    fake.script = [Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})]
    with pytest.raises(ModelError) as refused:
        ask(backend, LLMRequest("Hi"))
    assert "$HALO_TEST_KEY" in str(refused.value) and "HTTP 401" in str(refused.value)
    fake.fail = lambda seen: Reply(500, {"error": {"message": f"crashed handling key {SECRET}"}})
    with pytest.raises(ModelError) as crashed:
        ask(backend, LLMRequest("Hi"))
    fake.fail = lambda seen: Reply(400, {"error": {"message": f"bad request from {SECRET}"}})
    [rejected] = ask(backend, LLMRequest("Hi"))
    assert fake.seen[0].headers["authorization"] == f"Bearer {SECRET}"  # the key was used
    texts = [str(refused.value), str(crashed.value), str(rejected.error), repr(backend),
             backend.name, backend.identity, json.dumps(backend.capabilities())]
    assert all(SECRET not in text for text in texts), texts


# -- constrained outputs ---------------------------------------------------------------------------


def test_vllm_servers_get_structured_outputs_for_boolean_choice_and_json() -> None:
    with FakeOpenAIServer(owned_by="vllm") as server:
        backend = backend_of(server, api="completions")
        answers = ask(
            backend,
            LLMRequest("Late?", OutputSpec.boolean()),
            LLMRequest("Tone?", OutputSpec.choice(["calm", "upset"])),
            LLMRequest("Extract:", OutputSpec.json(SCHEMA)),
            LLMRequest("Summarize:"),
        )
        sent = {seen.prompt: seen.body for seen in server.seen}
    assert [a.text for a in answers[:2]] == ["yes", "calm"]
    assert set(json.loads(answers[2].text)) == {"late"}
    assert sent["Late?"]["structured_outputs"] == {"choice": ["yes", "no"]}
    assert sent["Tone?"]["structured_outputs"] == {"choice": ["calm", "upset"]}
    assert sent["Extract:"]["structured_outputs"] == {"json": SCHEMA}
    assert "structured_outputs" not in sent["Summarize:"] and "response_format" not in sent["Summarize:"]
    assert backend.capabilities()["structured_outputs"] == "vllm"


def test_other_servers_get_response_format_and_labels_come_back_unwrapped(fake: FakeOpenAIServer) -> None:
    backend = backend_of(fake)
    answers = ask(
        backend,
        LLMRequest("Late?", OutputSpec.boolean()),
        LLMRequest("Extract:", OutputSpec.json(SCHEMA)),
    )
    sent = {seen.prompt: seen.body for seen in fake.seen}
    label_format = sent["Late?"]["response_format"]
    assert label_format["type"] == "json_schema"
    assert label_format["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["yes", "no"]
    assert sent["Extract:"]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "structured_outputs" not in sent["Late?"]
    assert answers[0].text in ("yes", "no")  # {"answer": "..."} unwrapped
    assert set(json.loads(answers[1].text)) == {"late"}


def test_without_constraints_on_the_server_answers_are_validated_and_invalid_ones_counted() -> None:
    with FakeOpenAIServer(reject_response_format=True) as server:
        server.free_text = "perhaps"
        con = connect_to(server)
        t = con.sql(
            "SELECT LLM_FILTER('Late? {x}') AS f, LLM_CLASSIFY('Tone of {x}', ['calm', 'upset']) AS c "
            "FROM (VALUES ('a'), ('b')) v(x)"
        )
        assert t is not None
        assert t.column("f").to_pylist() == [None, None] and t.column("c").to_pylist() == [None, None]
        assert con.stats()["invalid_answers"] == 4 and con.stats()["failed_requests"] == 0
        server.free_text = "upset"
        t = con.sql("SELECT LLM_CLASSIFY('Mood of {x}', ['calm', 'upset']) AS c FROM (VALUES ('a')) v(x)")
        assert t is not None and t.column("c").to_pylist() == ["upset"]
        assert "response_format" not in server.seen[-1].body  # the fallback is remembered
        assert con.session.backend("default").capabilities()["structured_outputs"] == "none"  # type: ignore[attr-defined]


def test_labels_get_tokens_enough_to_finish(fake: FakeOpenAIServer) -> None:
    labels = ["very positive indeed", "negative"]
    ask(backend_of(fake), LLMRequest("Tone?", OutputSpec.choice(labels), DecodingParams(max_tokens=1)))
    wrapped = json.dumps({"answer": labels[0]})
    # the fake's /tokenize counts words + 1; one more token for the end
    assert fake.seen[0].body["max_tokens"] == len(wrapped.split()) + 2


# -- retries and faults ----------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(fake: FakeOpenAIServer) -> None:
    fake.script = [Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})]
    [answer] = ask(backend_of(fake), LLMRequest("Hi"))
    assert answer.text == "ok"
    assert [seen.prompt for seen in fake.seen] == ["Hi", "Hi"]
    assert fake.seen[1].at - fake.seen[0].at >= 0.95


def test_5xx_are_retried_with_backoff_until_answered(fake: FakeOpenAIServer) -> None:
    fake.script = [Reply(503, {"error": {"message": "busy"}}), Reply(502, {"error": {"message": "bad gateway"}})]
    [answer] = ask(backend_of(fake, max_retries=3), LLMRequest("Hi"))
    assert answer.text == "ok" and len(fake.seen) == 3
    waits = [b.at - a.at for a, b in zip(fake.seen, fake.seen[1:], strict=False)]
    assert waits[1] > waits[0] > 0.3  # exponential: about 0.5 s, then 1 s (less jitter)


def test_retries_are_bounded_and_the_error_names_the_model_and_url(fake: FakeOpenAIServer) -> None:
    fake.fail = lambda seen: Reply(503, {"error": {"message": "overloaded"}})
    with pytest.raises(ModelError) as caught:
        ask(backend_of(fake, max_retries=2), LLMRequest("Hi"))
    message = str(caught.value)
    assert "'fake-model'" in message and fake.url in message
    assert "HTTP 503" in message and "overloaded" in message and "3 attempts" in message
    assert len(fake.seen) == 3


def test_a_slow_server_times_out(fake: FakeOpenAIServer) -> None:
    fake.delay = 1.0
    with pytest.raises(ModelError, match=r"no answer within the timeout of 0.2 s \(1 attempt\)") as caught:
        ask(backend_of(fake, timeout=0.2, max_retries=0), LLMRequest("Hi"))
    assert fake.url in str(caught.value)


def test_connection_refused_names_the_model_and_url() -> None:
    with FakeOpenAIServer() as server:
        url = server.url
    backend = OpenAIBackend("fake-model", base_url=url, max_retries=1)
    with pytest.raises(ModelError, match="connection refused") as caught:
        ask(backend, LLMRequest("Hi"))
    assert url in str(caught.value) and "'fake-model'" in str(caught.value)


def test_a_server_dropping_connections_mid_batch(fake: FakeOpenAIServer) -> None:
    fake.fail = lambda seen: Reply(drop=True) if "drop" in seen.prompt else None
    with pytest.raises(IncompleteBatchError) as caught:
        ask(backend_of(fake, max_retries=1), LLMRequest("one"), LLMRequest("drop me"), LLMRequest("two"))
    assert "connection lost" in str(caught.value) and fake.url in str(caught.value)
    assert [r.text if r else None for r in caught.value.responses] == ["ok", None, "ok"]


def test_failed_requests_do_not_discard_their_siblings_answers(fake: FakeOpenAIServer) -> None:
    fake.fail = lambda seen: Reply(503, {"error": {"message": "no"}}) if "fail" in seen.prompt else None
    requests = [LLMRequest(f"ask {i}") for i in range(5)] + [LLMRequest("fail 1"), LLMRequest("fail 2")]
    with pytest.raises(IncompleteBatchError, match=r"2 of 7 requests failed; 5 answered") as caught:
        ask(backend_of(fake, max_retries=0), *requests)
    assert [r is not None and r.text == "ok" for r in caught.value.responses] == [True] * 5 + [False] * 2


def test_a_rejected_request_gets_an_error_and_the_others_answers(fake: FakeOpenAIServer) -> None:
    fake.fail = lambda seen: (
        Reply(400, {"error": {"message": "This model's maximum context length is 16 tokens"}})
        if "long" in seen.prompt else None
    )
    answers = ask(backend_of(fake), LLMRequest("short"), LLMRequest("long " * 20))
    assert answers[0].text == "ok" and answers[0].error is None
    assert answers[1].error is not None and "maximum context length" in answers[1].error
    assert "'fake-model'" in answers[1].error


def test_an_unknown_served_model_is_reported_with_what_the_server_serves(fake: FakeOpenAIServer) -> None:
    with pytest.raises(ModelError, match=r"HTTP 404.*the server serves: fake-model"):
        ask(OpenAIBackend("fake-modle", base_url=fake.url), LLMRequest("Hi"))


# -- concurrency --------------------------------------------------------------------------------


def test_max_concurrency_bounds_the_requests_in_flight(fake: FakeOpenAIServer) -> None:
    fake.delay = 0.05
    ask(backend_of(fake, max_concurrency=3), *(LLMRequest(f"q{i}") for i in range(12)))
    assert fake.max_in_flight == 3


def test_waiting_requests_go_lowest_priority_first(fake: FakeOpenAIServer) -> None:
    backend = backend_of(fake, max_concurrency=1)
    ask(backend, LLMRequest("warm up"))  # the server's /v1/models is read before the first request
    fake.delay = 0.1

    async def submit() -> None:
        first = asyncio.ensure_future(backend.agenerate(LLMRequest("first")))
        await asyncio.sleep(0.05)  # "first" holds the only slot
        waiting = [backend.agenerate(LLMRequest(f"p{p}"), priority=p) for p in (5, 1, 3)]
        await asyncio.gather(first, *waiting)

    aio.run(submit())
    assert [seen.prompt for seen in fake.seen[1:]] == ["first", "p1", "p3", "p5"]


# -- token accounting --------------------------------------------------------------------------


def test_cached_tokens_the_server_does_not_report_are_unknown_not_zero(fake: FakeOpenAIServer) -> None:
    [answer] = ask(backend_of(fake), LLMRequest("Hi there"))
    assert answer.cached_prompt_tokens is None and answer.prompt_tokens == 2
    con = connect_to(fake)
    result = con.run("EXPLAIN ANALYZE SELECT LLM('Say {x}') AS s FROM (VALUES ('a'), ('b')) v(x)")
    text = result.table.column(0)[0].as_py()
    assert "cached=unknown" in text and "cached_prompt_tokens=unknown" in text
    stats = con.stats()
    assert stats["cached_prompt_tokens"] is None and stats["computed_prompt_tokens"] is None
    # the fake counts a prompt's words, and its answer "ok" as one token
    assert stats["prompt_tokens"] == sum(len(seen.prompt.split()) for seen in fake.seen[1:])
    assert stats["output_tokens"] == 2
    assert stats["cached_unknown_requests"] == 2
    assert con.session.backend("default").capabilities()["cached_tokens"] == "unknown (not reported)"  # type: ignore[attr-defined]


def test_cached_tokens_the_server_reports_are_counted() -> None:
    with FakeOpenAIServer(cached_tokens=True) as server:
        con = connect_to(server)
        result = con.run("EXPLAIN ANALYZE SELECT LLM('Say it now {x}') AS s FROM (VALUES ('a')) v(x)")
        stats = con.stats()
        [seen] = server.seen
    words = len(seen.prompt.split())  # the fake's prompt tokens; it reports half as cached
    assert stats["prompt_tokens"] == words and stats["cached_prompt_tokens"] == words // 2
    assert stats["computed_prompt_tokens"] == words - words // 2
    assert f"cached={words // 2}" in result.table.column(0)[0].as_py()


def test_token_counts_and_context_window_come_from_the_server() -> None:
    with FakeOpenAIServer(max_model_len=1234) as server:
        backend = backend_of(server)
        assert backend.context_window == 1234
        assert backend.count_tokens("three words here") == 4  # the fake: words + 1
        assert backend.count_tokens("three words here") == 4
        assert server.tokenize_calls == 1  # remembered
    assert backend.capabilities()["context_window"] == "server max_model_len"


def test_without_server_metadata_counts_are_estimates_and_the_window_assumed() -> None:
    with FakeOpenAIServer(tokenize=False) as server:
        backend = backend_of(server)
        assert backend.context_window == DEFAULT_CONTEXT_WINDOW
        text = "Is the customer angry about the delivery?"
        assert backend.count_tokens(text) == len(RegexTokenizer().encode(text))
    assert backend.capabilities()["token_counts"].startswith("estimate")
    assert backend.capabilities()["context_window"] == f"assumed {DEFAULT_CONTEXT_WINDOW}"
    assert backend_of(server, context_window=999).context_window == 999


def test_identity_names_what_changes_answers_only(fake: FakeOpenAIServer) -> None:
    one = backend_of(fake, max_concurrency=2, timeout=5, max_retries=0)
    same = backend_of(fake, max_concurrency=64, timeout=60, api_key_env="X")
    assert one.identity == same.identity
    assert backend_of(fake, api="completions").identity != one.identity
    assert OpenAIBackend("other", base_url=fake.url).identity != one.identity


# -- a real vLLM OpenAI-compatible server (one per session) ---------------------------------------

REVIEWS = [
    "The parcel arrived two weeks late and the box was crushed.",
    "Great kettle, boils fast, delivery was on time.",
    "Courier left it in the rain; delivery was a disaster.",
    "Works as described.",
]


@pytest.fixture
def server(vllm_server: Any) -> Any:
    return vllm_server.ensure_running()


def server_con(server: Any, database: str = ":memory:", **options: Any) -> halo_sql.Connection:
    con = halo_sql.connect(
        database, backend="openai", model="tiny",
        model_options={"base_url": server.url, "api": "completions", **options},
    )
    con.register("reviews", pa.table({"id": list(range(8)), "text": REVIEWS * 2}))
    return con


@pytest.mark.vllm
def test_filter_classify_extract_are_constrained_by_the_vllm_server(server: Any) -> None:
    con = server_con(server)
    t = con.sql(
        """SELECT id, LLM_FILTER('Is this about delivery? {text}') AS f,
                  LLM_CLASSIFY('Sentiment of: {text}', ['positive', 'negative', 'neutral']) AS c,
                  LLM_EXTRACT('Extract from: {text}', '{"late": "boolean"}') AS e,
                  LLM('Summarize: {text}', max_tokens => 8) AS s
           FROM reviews ORDER BY id"""
    )
    assert t is not None and t.num_rows == 8
    assert set(t.column("f").to_pylist()) <= {True, False}
    assert set(t.column("c").to_pylist()) <= {"positive", "negative", "neutral"}
    assert all(e is None or set(e) == {"late"} for e in t.column("e").to_pylist())
    stats = con.stats()
    assert stats["invalid_answers"] == t.column("e").null_count  # filter/classify never invalid
    assert stats["llm_requests"] == 16 and stats["failed_requests"] == 0  # 4 texts x 4 calls
    assert stats["prompt_tokens"] > stats["llm_requests"] and stats["output_tokens"] >= 16
    assert isinstance(stats["cached_prompt_tokens"], int)  # --enable-prompt-tokens-details
    assert con.session.backend("default").capabilities()["structured_outputs"] == "vllm"  # type: ignore[attr-defined]


@pytest.mark.vllm
def test_chat_and_completions_give_the_same_answers_with_a_pass_through_template(server: Any) -> None:
    sql = "SELECT LLM_CLASSIFY('Sentiment of: {text}', ['positive', 'negative']) AS c FROM reviews"
    completions = server_con(server).sql(sql)
    chat = server_con(server, api="chat").sql(sql)
    assert completions is not None and chat is not None
    assert completions.to_pylist() == chat.to_pylist()


@pytest.mark.vllm
def test_the_server_gives_context_window_and_exact_token_counts(server: Any, tiny_model_dir: Path) -> None:
    backend = OpenAIBackend("tiny", base_url=server.url)
    from halo_sql.llm.tokenizer import load_tokenizer

    text = "Is the customer angry about the late delivery?"
    local = len(load_tokenizer(tiny_model_dir).encode(text))  # no special tokens
    assert backend.context_window == 2048  # --max-model-len
    assert backend.count_tokens(text) in (local, local + 1)  # the server may add BOS
    assert backend.capabilities()["context_window"] == "server max_model_len"
    backend.close()


def _stop_after(server: Any, answered: int, timeout: float = 120.0) -> int:
    """Stop the server once it has finished `answered` more requests; how many it had."""
    base = server.answered()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = server.answered() - base
        if done >= answered:
            server.stop()
            return done
        time.sleep(0.05)
    raise AssertionError("the server never answered enough requests")


@pytest.mark.vllm
def test_a_server_stopped_mid_batch_delivers_answered_requests_and_names_model_and_url(
    server: Any,
) -> None:
    backend = OpenAIBackend("tiny", base_url=server.url, api="completions",
                            max_concurrency=2, max_retries=1)
    requests = [LLMRequest(f"Tell a long story about item {i}", params=DecodingParams(max_tokens=64))
                for i in range(16)]

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(backend.agenerate(r)) for r in requests]
        await asyncio.to_thread(_stop_after, server, 3)
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        outcomes = aio.run(run())
        answered = [o for o in outcomes if isinstance(o, LLMResponse)]
        failed = [o for o in outcomes if not isinstance(o, LLMResponse)]
        assert len(answered) >= 3 and all(a.text and a.error is None for a in answered)
        assert failed, "the server must stop before the batch ends (2 in flight of 16)"
        assert all(isinstance(f, ModelError) for f in failed), failed
        assert all("'tiny'" in str(f) and server.url in str(f) for f in failed)

        # The same through SQL: the statement fails with the model and the URL in the message.
        con = server_con(server, max_retries=0)
        with pytest.raises(ModelError, match="connection refused") as caught:
            con.sql("SELECT LLM('Hi {text}') FROM reviews")
        assert "'tiny'" in str(caught.value) and server.url in str(caught.value)
    finally:
        backend.close()


@pytest.mark.vllm
def test_a_rerun_after_the_server_restarts_completes_from_the_response_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pytest.importorskip(
        "halo_sql.executor.response_cache",
        reason="needs the runtime's persistent response cache (halo_sql.executor.response_cache)",
    )
    server = request.getfixturevalue("server")  # only now: a skipped test starts no server
    database = str(tmp_path / "resume.duckdb")
    sql = "SELECT id, LLM('Tell a long story about {text}', max_tokens => 48) AS s FROM items ORDER BY id"
    options = {"max_concurrency": 2, "max_retries": 0}
    con = server_con(server, database, **options)
    con.sql("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS text FROM range(24) r(i)")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            con.sql(sql)
        except ModelError as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    answered = _stop_after(server, 6)
    worker.join(timeout=120)
    assert failure and server.url in str(failure[0]), "the first run must fail mid-batch"
    con.close()

    server.start()
    rerun = server_con(server, database, **options)
    t = rerun.sql(sql)
    assert t is not None and t.num_rows == 24 and t.column("s").null_count == 0
    # The answers that arrived before the stop came from the cache, not the server.
    assert rerun.stats()["llm_requests"] <= 24 - answered


# -- tpc_agentic_bench against any server ------------------------------------------------------


def test_the_benchmark_runs_against_an_openai_compatible_server(
    fake: FakeOpenAIServer, tpch_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tpc_agentic_bench.__main__ import main

    status = main([
        "run", "--backend", "openai", "--base-url", fake.url, "--workloads", "W1",
        "--queries", "1", "--scale", "0.01", "--systems", "naive,halo",
        "--cache-dir", str(tpch_dir.parent), "--no-progress",
    ])
    assert status == 0, capsys.readouterr()
    assert "W1" in capsys.readouterr().out
    assert fake.seen and all(seen.body["model"] == "fake-model" for seen in fake.seen)  # the only model
    with pytest.raises(SystemExit):
        main(["run", "--backend", "openai", "--workloads", "W1"])  # no --base-url

"""Model replicas: one model on several engines, requests routed by prefix (halo_sql.llm.replicas).

The fast specifications run replica sets of sim engines in this process (no Ray): routing
affinity, load balance, failover, option checks, the cost model's placement term. Those marked
`vllm` run two tiny-model vLLM engines as Ray actors on ONE local Ray instance for the whole
session (`ray_instance`): answers equal one engine's, both replicas work, prefix routing caches
more prompt tokens than round robin (counted, not timed), a killed replica's requests complete
on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

import halo_sql
from halo_sql.errors import BinderError, ModelError
from halo_sql.llm import aio
from halo_sql.llm.base import Backend, DecodingParams, LLMRequest, LLMResponse, OutputSpec
from halo_sql.llm.registry import ModelSpec, backend_for, running, shutdown_started_since
from halo_sql.llm.replicas import LOAD_FACTOR, MIN_LOAD_BOUND, LocalReplica, ReplicatedBackend
from halo_sql.llm.sim import SimBackend
from halo_sql.optimizer.cost import request_cost
from halo_sql.optimizer.profile import BackendProfile
from halo_sql.optimizer.stats import PromptStats

INSTRUCTIONS = [
    "You review complaints sent to a furniture shop. Read the complaint below and say in one "
    "short sentence what went wrong, naming the product and the fault: ",
    "Classify the shipping note below by urgency (low, medium, high), weighing delays, damage "
    "and the tone of the customer, and give the single most important reason: ",
    "Rewrite the product description below in plain English for a catalogue aimed at people "
    "buying home goods for the first time, keeping every measurement: ",
]
"""Three instruction prefixes, each longer than one routing block and one cache block."""

ROWS = [
    f"order {i}: the {item} arrived {fault}, and the courier {courier}; the customer asks for "
    f"{remedy} within {days} days"
    for i, (item, fault, courier, remedy, days) in enumerate(
        (item, fault, courier, remedy, days)
        for item in ("lamp", "chair", "kettle", "table", "rug", "shelf", "mirror")
        for fault, courier, remedy, days in (
            ("without its shade", "left it in the rain", "a refund", 3),
            ("two weeks late", "never rang the bell", "a replacement", 5),
            ("with a cracked leg", "threw it over the fence", "a repair", 7),
        )
    )
]
"""21 distinct rows of data for the prompts."""


@pytest.fixture(autouse=True)
def _close_backends_started_here() -> Iterator[None]:
    before = running()
    yield
    shutdown_started_since(before)


class Recording(LocalReplica):
    """A local replica that remembers the prompts routed to it."""

    def __init__(self, backend: SimBackend) -> None:
        super().__init__(backend)
        self.prompts: list[str] = []

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        self.prompts.append(request.prompt)
        return await super().agenerate(request, priority=priority)


class Broken:
    """A backend whose engine is gone: every request raises."""

    name = "broken"
    context_window = 4096

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        raise ModelError("engine died")

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        raise ModelError("engine died")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        pass


def sim_pair(routing: str = "prefix", **sim: float) -> tuple[ReplicatedBackend, list[Recording]]:
    replicas = [Recording(SimBackend(**sim)) for _ in range(2)]  # type: ignore[arg-type]
    return ReplicatedBackend(replicas, routing=routing, model_name="m"), replicas


def home(replicas: list[Recording], prompt: str) -> int:
    """The replica that was sent `prompt` (exactly one)."""
    (only,) = [i for i, r in enumerate(replicas) if prompt in r.prompts]
    return only


def two_steps(backend: ReplicatedBackend) -> tuple[list[LLMRequest], list[LLMRequest], int]:
    """A two-step workflow over every row under three instructions, from cold caches: the first
    steps as one burst in prompt order (as the runtime hands them over), then the second steps,
    whose prompts extend the first ones with their answers, in no set order (rows reach their
    next step as their answers arrive). Returns both steps' requests and the cached prompt
    tokens of all of them."""
    backend.reset_cache()
    params = DecodingParams(max_tokens=8)
    first = sorted(
        (LLMRequest(INSTRUCTIONS[i % 3] + row, params=params) for i, row in enumerate(ROWS)),
        key=lambda r: r.prompt,
    )
    answers = backend.generate(first)
    second = [
        LLMRequest(f"{r.prompt}\nAnswer: {a.text}\nIs a refund due? Say yes or no: ",
                   OutputSpec.boolean(), params)
        for r, a in zip(first, answers, strict=True)
    ]
    shuffled = second[:]
    random.Random(7).shuffle(shuffled)
    later = backend.generate(shuffled)
    cached = sum(r.cached_prompt_tokens or 0 for r in [*answers, *later])
    return first, second, cached


# -- routing --------------------------------------------------------------------------------------


def test_requests_sharing_an_instruction_stay_on_the_replica_that_holds_it() -> None:
    backend, replicas = sim_pair()
    for row in ROWS[:4]:
        for instruction in INSTRUCTIONS:
            backend.generate([LLMRequest(instruction + row)])  # one at a time: no load at all
    homes = [{home(replicas, instruction + row) for row in ROWS[:4]} for instruction in INSTRUCTIONS]
    assert all(len(h) == 1 for h in homes), homes
    assert set.union(*homes) == {0, 1}, "new prefixes go to the replica holding least"


def test_a_burst_of_one_instruction_is_spread_over_both_replicas() -> None:
    backend, replicas = sim_pair()
    requests = [LLMRequest(INSTRUCTIONS[0] + f"order {i}") for i in range(200)]
    backend.generate(requests)  # all in flight at once
    shares = [len(r.prompts) for r in replicas]
    assert sum(shares) == 200
    assert min(shares) >= 80, shares


def followed(routing: str) -> tuple[float, list[int]]:
    """Fraction of rows whose second step went where their first did, and each replica's
    number of requests."""
    backend, replicas = sim_pair(routing)
    first, second, _ = two_steps(backend)
    same = sum(
        home(replicas, a.prompt) == home(replicas, b.prompt)
        for a, b in zip(first, second, strict=True)
    )
    return same / len(first), [len(r.prompts) for r in replicas]


def test_later_steps_of_a_row_follow_its_earlier_steps_within_the_load_bound() -> None:
    share, load = followed("prefix")
    assert share >= 0.9  # a few spill over when the shuffled burst piles onto one replica
    assert max(load) <= LOAD_FACTOR * sum(load) / 2 + MIN_LOAD_BOUND  # the load bound holds
    assert followed("round_robin")[0] <= 0.6


def test_round_robin_alternates_whatever_the_prompt() -> None:
    backend, replicas = sim_pair("round_robin")
    for i in range(6):
        backend.generate([LLMRequest(INSTRUCTIONS[0] + ROWS[0] + f" #{i}")])
    assert [len(r.prompts) for r in replicas] == [3, 3]
    assert replicas[0].prompts[0].endswith("#0") and replicas[1].prompts[0].endswith("#1")


def test_prefix_routing_caches_more_prompt_tokens_than_round_robin() -> None:
    by_prefix, _ = sim_pair("prefix")
    by_turn, _ = sim_pair("round_robin")
    assert two_steps(by_prefix)[2] > 1.25 * two_steps(by_turn)[2]


# -- answers and failures -------------------------------------------------------------------------


async def _all(backend: ReplicatedBackend, requests: list[LLMRequest]) -> list[LLMResponse]:
    return list(await asyncio.gather(*(backend.agenerate(r) for r in requests)))


def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_a_replica_stopped_mid_batch_has_its_requests_answered_by_the_other() -> None:
    backend, _ = sim_pair(step_seconds=0.002)
    requests = [LLMRequest(INSTRUCTIONS[i % 3] + ROWS[i % 21] + f" #{i}",
                           params=DecodingParams(max_tokens=32)) for i in range(60)]
    running_batch = aio.spawn(_all(backend, requests))
    _until(lambda: backend.replica_stats()[1].in_flight > 0)
    backend.stop_replica(1, "killed for the test")
    answers = running_batch.result(timeout=60)
    assert [a.text for a in answers] == [a.text for a in SimBackend().generate(requests)]
    first, second = backend.replica_stats()
    assert not second.alive and second.cause == "killed for the test"
    assert second.moved > 0 and backend.resubmitted == second.moved
    assert first.answered + second.answered == len(requests)  # each answered exactly once
    assert first.in_flight == second.in_flight == 0


def test_a_replica_whose_engine_raises_is_taken_out_and_its_requests_resubmitted() -> None:
    backend = ReplicatedBackend([LocalReplica(Broken()), LocalReplica(SimBackend())],
                                model_name="m")
    requests = [LLMRequest(INSTRUCTIONS[0] + row) for row in ROWS[:6]]
    assert [a.text for a in backend.generate(requests)] == [
        a.text for a in SimBackend().generate(requests)
    ]
    broken, sim = backend.replica_stats()
    assert not broken.alive and broken.cause == "engine died" and broken.answered == 0
    assert sim.answered == 6


def test_no_replica_left_is_an_error_naming_each_cause() -> None:
    backend = ReplicatedBackend([LocalReplica(Broken()), LocalReplica(Broken())], model_name="m")
    with pytest.raises(ModelError, match=r"model 'm': no replica left .*replica 1 \(broken\): "
                                         r"engine died"):
        backend.generate([LLMRequest("Late?")])


def test_a_cancelled_request_is_aborted_not_resubmitted() -> None:
    backend, _ = sim_pair(step_seconds=0.05)

    async def ask_and_give_up() -> None:
        task = asyncio.ensure_future(
            backend.agenerate(LLMRequest("Tell me a story", params=DecodingParams(max_tokens=50)))
        )
        await asyncio.sleep(0.06)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    aio.run(ask_and_give_up())
    assert [(s.alive, s.in_flight, s.answered) for s in backend.replica_stats()] == [
        (True, 0, 0), (True, 0, 0)
    ]
    assert backend.resubmitted == 0


# -- models: CREATE MODEL, connect(), SQL ----------------------------------------------------------


def test_a_replicated_model_answers_queries_as_one_replica_does() -> None:
    con = halo_sql.connect(":memory:", backend="sim")
    con.execute("CREATE MODEL two USING sim WITH (replicas => 2, step_seconds => 0.001)")
    con.execute(
        "CREATE TABLE complaints AS SELECT i AS id, 'order ' || i || ': the item came ' || "
        "(CASE i % 3 WHEN 0 THEN 'late' WHEN 1 THEN 'broken' ELSE 'fine' END) AS text "
        "FROM range(30) t(i)"
    )
    query = """
        SELECT id, LLM('Summarize the complaint: {{text}}', model => '{m}') AS summary,
               LLM_CLASSIFY('Urgency of: {{text}}', ['low', 'high'], model => '{m}') AS urgency
        FROM complaints
        WHERE LLM_FILTER('Is the customer angry? {{text}}', model => '{m}')
        ORDER BY id"""
    assert con.sql(query.format(m="two")).to_pylist() == con.sql(query.format(m="default")).to_pylist()
    backend = con.session.backend("two")
    assert isinstance(backend, ReplicatedBackend)
    assert all(s.answered > 0 for s in backend.replica_stats())


def test_connect_takes_the_placement_in_its_model_options() -> None:
    con = halo_sql.connect(":memory:", backend="sim",
                           model_options={"replicas": 3, "routing": "round_robin"})
    backend = con.session.backend("default")
    assert isinstance(backend, ReplicatedBackend)
    assert (len(backend.replicas), backend.routing) == (3, "round_robin")
    assert backend_for(ModelSpec("again", "sim", None, {"replicas": 3, "routing": "round_robin"})) \
        is backend, "one instance per model files and options"


@pytest.mark.parametrize(
    "create, message",
    [
        ("CREATE MODEL m USING sim WITH (replicas => 0)", "replicas must be a positive integer"),
        ("CREATE MODEL m USING sim WITH (replicas => 2, routing => 'random')",
         "routing must be one of prefix, round_robin, got 'random'"),
        ("CREATE MODEL m USING sim WITH (replicas => 2, cluster => 'yarn')",
         "cluster must be one of local, ray, auto or 'ray://host:port'"),
        ("CREATE MODEL m USING vllm WITH (model => '/m', replicas => 2, replica_num_gpus => -1)",
         "replica_num_gpus must be a finite number >= 0"),
        ("CREATE MODEL m USING openai WITH (model => 'x', base_url => ['http://a/v1', "
         "'http://b/v1'], replicas => 3)", "one replica per server"),
        ("CREATE MODEL m USING openai WITH (model => 'x', base_url => ['http://a/v1', "
         "'http://b/v1'], cluster => 'ray')", "cluster does not apply"),
        ("CREATE MODEL m USING openai WITH (model => 'x', base_url => [1, 2])",
         "base_url must be a string or a non-empty list of strings"),
    ],
)
def test_placement_options_that_make_no_sense_are_refused_at_create_model(
    create: str, message: str
) -> None:
    con = halo_sql.connect(":memory:", backend="sim")
    with pytest.raises(BinderError, match=message):
        con.execute(create)


def test_an_openai_model_on_two_servers_routes_to_both_and_survives_one_going_away(
    tmp_path: Path,
) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        con = halo_sql.connect(str(tmp_path / "shop.duckdb"), backend="sim")
        con.execute(
            f"CREATE MODEL pair USING openai WITH (model => '{a.served}', base_url => "
            f"['{a.url}', '{b.url}'], max_retries => 0, timeout => 5)"
        )
        backend = con.session.backend("pair")
        assert isinstance(backend, ReplicatedBackend)
        requests = [LLMRequest(INSTRUCTIONS[0] + row) for row in ROWS[:12]]
        backend.generate(requests)
        assert a.seen and b.seen, "both servers get requests"
        b.stop()
        answers = backend.generate([LLMRequest(INSTRUCTIONS[1] + row) for row in ROWS[:12]])
        assert all(r.error is None for r in answers)
        assert [s.alive for s in backend.replica_stats()] == [True, False]
    # The list of servers is stored with the model and comes back with the database.
    again = halo_sql.connect(str(tmp_path / "shop.duckdb"), backend="sim")
    assert again.session.models["pair"].options["base_url"] == [a.url, b.url]


# -- the cost model and EXPLAIN -------------------------------------------------------------------


def test_explain_says_where_each_llm_operator_goes() -> None:
    con = halo_sql.connect(":memory:", backend="sim")
    con.execute("CREATE MODEL two USING sim WITH (replicas => 2)")
    con.execute("CREATE TABLE t AS SELECT 'text ' || i AS x FROM range(50) r(i)")
    text = con.explain("SELECT LLM('Summarize: {x}', model => 'two') AS s FROM t")
    assert "on 2 replicas by prefix affinity" in text  # the operator's line
    assert ("placement: model two on 2 replicas (in this process), prefix-affinity routing; "
            "priced with the sim profile") in text
    one = con.explain("SELECT LLM('Summarize: {x}') AS s FROM t")
    assert "replicas" not in one


def test_the_placement_term_divides_the_work_and_keeps_shared_prefixes_by_routing() -> None:
    prompt = PromptStats(prompt_tokens=300, cached_tokens=200, output_tokens=8, static_tokens=64)
    one = request_cost(100, prompt, BackendProfile())
    by_prefix = request_cost(100, prompt, BackendProfile(replicas=2))
    by_turn = request_cost(100, prompt, BackendProfile(replicas=2, routing="round_robin"))
    assert one.cached_tokens == 99 * 200
    assert by_prefix.cached_tokens == 98 * 200  # each replica computes the prefix once
    assert by_turn.cached_tokens == 98 * (64 + (200 - 64) / 2)  # neighbours split half the time
    assert by_prefix.seconds < by_turn.seconds < one.seconds


# -- on Ray: two tiny-model vLLM engines as actors --------------------------------------------------
# One Ray instance (`ray_instance`) and one pair of engines for the module; the last test kills
# one of them, so it stays last.

PAIR = {"replicas": 2, "cluster": "ray"}


@pytest.fixture(scope="module")
def ray_pair(ray_instance: None, tiny_model_dir: Path) -> Iterator[ReplicatedBackend]:
    before = running()
    backend = backend_for(ModelSpec("pair", "vllm", str(tiny_model_dir), dict(PAIR)))
    assert isinstance(backend, ReplicatedBackend)
    yield backend
    shutdown_started_since(before)


@pytest.mark.vllm
def test_two_ray_replicas_answer_as_one_engine_does(
    ray_pair: ReplicatedBackend, vllm_backend: object, tiny_model_dir: Path
) -> None:
    con = halo_sql.connect(":memory:", model=str(tiny_model_dir))
    con.execute(
        f"CREATE MODEL pair USING vllm WITH (model => '{tiny_model_dir}', replicas => 2, "
        "cluster => 'ray')"
    )
    assert con.session.backend("pair") is ray_pair
    assert con.session.backend("default") is vllm_backend
    con.execute(
        "CREATE TABLE complaints AS SELECT i AS id, 'order ' || i || ': the lamp came ' || "
        "(CASE i % 3 WHEN 0 THEN 'late' WHEN 1 THEN 'broken' ELSE 'without a shade' END) AS text "
        "FROM range(24) t(i)"
    )
    query = """
        SELECT id, LLM('Summarize the complaint: {{text}}', model => '{m}', max_tokens => 8) AS s,
               LLM_CLASSIFY('Urgency of: {{text}}', ['low', 'high'], model => '{m}') AS urgency,
               LLM_FILTER('Is the customer angry? {{text}}', model => '{m}') AS angry
        FROM complaints ORDER BY id"""
    sent = [s.sent for s in ray_pair.replica_stats()]
    two = con.sql(query.format(m="pair")).to_pylist()
    assert two == con.sql(query.format(m="default")).to_pylist()
    assert all(s.sent > before for s, before in zip(ray_pair.replica_stats(), sent, strict=True))


@pytest.mark.vllm
def test_prefix_routing_caches_more_prompt_tokens_than_round_robin_on_ray(
    ray_pair: ReplicatedBackend,
) -> None:
    try:
        ray_pair.set_routing("prefix")
        by_prefix = two_steps(ray_pair)[2]
        ray_pair.set_routing("round_robin")
        by_turn = two_steps(ray_pair)[2]
    finally:
        ray_pair.set_routing("prefix")
    print(f"cached prompt tokens on two Ray replicas: prefix {by_prefix}, round robin {by_turn}")
    assert by_prefix > by_turn


@pytest.mark.vllm
def test_a_killed_ray_replica_has_its_requests_completed_by_the_other(
    ray_pair: ReplicatedBackend, vllm_backend: Backend
) -> None:
    import ray

    requests = [LLMRequest(INSTRUCTIONS[i % 3] + ROWS[i % 21] + f" #{i}",
                           params=DecodingParams(max_tokens=32)) for i in range(48)]
    expected = [r.text for r in vllm_backend.generate(requests)]
    before = [s.answered for s in ray_pair.replica_stats()]
    running_batch = aio.spawn(_all(ray_pair, requests))
    _until(lambda: ray_pair.replica_stats()[1].in_flight > 0)
    ray.kill(ray_pair.replicas[1].actor)  # what a crash or a lost node looks like
    answers = running_batch.result(timeout=120)
    assert [a.text for a in answers] == expected
    first, second = ray_pair.replica_stats()
    assert not second.alive and "actor" in (second.cause or "")
    assert second.moved > 0 and ray_pair.resubmitted == second.moved
    answered = first.answered - before[0] + second.answered - before[1]
    assert answered == len(requests)  # each answered exactly once

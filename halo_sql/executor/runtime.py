"""The LLM runtime: every request of every running statement meets here on its way to a model.

Operators ask for one request at a time (`await runtime.request(...)`), the moment a row is ready;
there is no batch barrier. What a serving engine cannot do is done here:

- identical requests are sent once: within a statement or a batch through the statement memo, and
  across everything running in the process while a request is in flight (`ModelQueue`), so a query
  arriving online shares the answers other queries are already waiting for;
- requests that become ready together are handed to the engine in prompt order (shared prefixes
  adjacent) and with the priority the plan chose (later workflow steps first);
- a request nobody waits for any more (a LIMIT was reached, a statement was cancelled) is
  aborted in the engine;
- every request is accounted to the statement that asked first.

    >>> from halo_sql.llm.sim import SimBackend
    >>> from halo_sql.llm.base import LLMRequest
    >>> sim = SimBackend()
    >>> runtime = LLMRuntime(lambda model: sim)
    >>> stats = StatementStats()
    >>> answers = runtime.generate("m", [LLMRequest("a"), LLMRequest("a")], stats)
    >>> stats.llm_requests, stats.deduplicated_requests
    (1, 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from halo_sql.errors import ModelError, QueryCancelled
from halo_sql.executor.response_cache import ResponseCache, response_key, storable
from halo_sql.llm import aio
from halo_sql.llm.base import Backend, LLMRequest, LLMResponse

_samples = itertools.count()


def request_key(model: str, request: LLMRequest) -> bytes:
    """A 16-byte digest naming a request: equal digests get equal answers (greedy decoding).

    With temperature > 0 every request is its own sample, so none is deduplicated."""
    prompt, output, params = request.dedup_key
    if params.temperature > 0:
        prompt = f"{prompt}\x00sample {next(_samples)}"
    text = repr((model, prompt, output.kind.value, output.labels, output.json_schema,
                 params.max_tokens, params.temperature, params.seed))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class ResponseMemo:
    """Answers already received in a statement (or a whole batch: its queries share one memo),
    for deduplication; least recently used entries are dropped past `capacity`, so memory stays
    flat however many rows a statement has. Each entry remembers which statement paid for it."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, tuple[LLMResponse, int]] = OrderedDict()
        self._lock = threading.Lock()  # DuckDB UDF threads and the loop both read it

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> LLMResponse | None:
        found = self.lookup(key)
        return found[0] if found is not None else None

    def lookup(self, key: bytes) -> tuple[LLMResponse, int] | None:
        """The answer and the id of the statement that paid for it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, response: LLMResponse, owner: int = 0) -> None:
        with self._lock:
            self._entries[key] = (response, owner)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


@dataclass
class StatementStats:
    """What one statement cost. `con.stats()` returns `as_dict()` of the last statement."""

    llm_requests: int = 0
    """Requests actually sent to a backend (after deduplication)."""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    """Summed over the requests whose backend reported it; `as_dict` says None (unknown) as
    soon as one request's backend did not (`cached_unknown_requests`)."""
    cached_unknown_requests: int = 0
    """Requests whose backend did not report cached tokens (an OpenAI-compatible server)."""
    output_tokens: int = 0
    cached_responses: int = 0
    """Requests answered from the persistent response cache (an earlier statement, session or
    process received the answer), never sent (halo_sql.executor.response_cache)."""
    deduplicated_requests: int = 0
    """Requests answered by an identical request (of this statement, of another query of the same
    batch, or of any statement running at the same time), never sent."""
    shared_requests: int = 0
    """The part of `deduplicated_requests` that another statement paid for."""
    invalid_answers: int = 0
    """Answers that broke the output type; their values are NULL."""
    failed_requests: int = 0
    """Requests the backend could not answer (e.g. prompt longer than the context window)."""
    aborted_requests: int = 0
    """Requests sent and then aborted in the engine because nothing needed their answers any
    more (a LIMIT was reached, the statement was cancelled); counted in `llm_requests`."""
    backend_calls: int = 0
    """Hand-overs to a backend that carried this statement's requests: the requests that became
    ready in one round of the event loop go to the engine together (as one batch for backends
    that only answer whole batches)."""
    agent_steps: int = 0
    """Batched model steps of agent operators (one runtime call each, for every running row)."""
    tool_calls: int = 0
    """Agent tool calls executed (after deduplication)."""
    deduplicated_tool_calls: int = 0
    """Agent tool calls answered by an identical call of the same statement or batch."""
    tool_errors: int = 0
    """Tool results an agent saw that were errors (exceptions, refusals, timeouts)."""
    rows_out: int = 0
    seconds: float = 0.0
    llm_seconds: float = 0.0
    """Sum over requests of the time from submission to answer (requests overlap, so this can
    exceed `seconds`)."""
    planning_seconds: float = 0.0
    """Parsing, binding and optimizing the statement."""
    first_failure: str | None = field(default=None, repr=False)
    """The cause of the first failed request whose value became NULL."""
    null_failures: int = field(default=0, repr=False)
    """Failed requests whose values became NULL (agents report theirs in their rows' `error`
    instead): with `llm_failures = 'raise'` (the default) the statement then fails."""
    memo: ResponseMemo = field(default_factory=ResponseMemo, repr=False)
    last_call: tuple[int, int] = field(default=(0, 0), repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    progress: Callable[[StatementStats], None] | None = field(default=None, repr=False)
    operators: dict[Any, Any] = field(default_factory=dict, repr=False)
    """id(logical plan node) -> its counters (executor.engine.OperatorCounters; EXPLAIN ANALYZE)."""

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        out["computed_prompt_tokens"] = self.prompt_tokens - self.cached_prompt_tokens
        if self.cached_unknown_requests:
            out["cached_prompt_tokens"] = out["computed_prompt_tokens"] = None  # unknown, not 0
        return out

    def merge(self, other: StatementStats) -> None:
        for key in (
            "llm_requests", "prompt_tokens", "cached_prompt_tokens", "cached_unknown_requests",
            "output_tokens", "cached_responses", "deduplicated_requests", "shared_requests",
            "invalid_answers",
            "failed_requests", "aborted_requests",
            "backend_calls", "agent_steps", "tool_calls", "deduplicated_tool_calls", "tool_errors",
            "llm_seconds", "planning_seconds", "null_failures",
        ):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        if self.first_failure is None:
            self.first_failure = other.first_failure

    def account(self, response: LLMResponse, seconds: float = 0.0) -> None:
        """Charge one answered request to this statement."""
        self.llm_requests += 1
        self.prompt_tokens += response.prompt_tokens
        if response.cached_prompt_tokens is None:  # the server did not say: unknown, not 0
            self.cached_unknown_requests += 1
        else:
            self.cached_prompt_tokens += response.cached_prompt_tokens
        self.output_tokens += response.output_tokens
        self.llm_seconds += seconds
        if response.error is not None:
            self.failed_requests += 1

    def failed_to_null(self, response: LLMResponse) -> None:
        """A failed request's value became NULL (see `null_failures`)."""
        self.null_failures += 1
        if self.first_failure is None:
            self.first_failure = response.error


@dataclass
class _Waiter:
    stats: StatementStats | None
    cancelled: bool = False


class _Flight:
    """One request on its way to a backend, and everyone waiting for its answer."""

    def __init__(self, key: bytes, request: LLMRequest, priority: int) -> None:
        self.key = key
        self.request = request
        self.priority = priority
        self.future: asyncio.Future[tuple[LLMResponse, float, int]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiters: list[_Waiter] = []
        self.on_answer: list[Callable[[LLMResponse], None]] = []
        """Called with the answer when it arrives, even if every waiter gave up just then (the
        response cache stores it: the engine did the work)."""
        self.task: asyncio.Task[Any] | None = None
        self.started = False
        """The backend has the request (an abort then reaches the engine)."""

    def payer(self) -> _Waiter | None:
        """Who pays: the first waiter still waiting."""
        return next((w for w in self.waiters if not w.cancelled), None)


class ModelQueue:
    """The way into one backend instance, shared by the whole process (`queue_for`).

    Requests submitted while the event loop runs one round of ready tasks are released together
    at the end of the round, sorted by (priority, prompt): a burst of requests enters the engine
    with shared prefixes adjacent. Identical requests in flight are sent once. Backends without
    an `agenerate` (batch-only test doubles, older backends) get each round's requests as one
    `generate` call in a worker thread.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._async = inspect.iscoroutinefunction(getattr(backend, "agenerate", None))
        self._inflight: dict[bytes, _Flight] = {}
        self._pending: list[_Flight] = []
        self._scheduled = False
        self._batch_lock = threading.Lock()
        self.calls = 0

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def submit(
        self,
        key: bytes,
        request: LLMRequest,
        stats: StatementStats | None,
        priority: int = 0,
        on_answer: Callable[[LLMResponse], None] | None = None,
    ) -> tuple[LLMResponse, float, int, bool, StatementStats | None]:
        """The answer, the seconds it took, the id of the backend call that answered it, whether
        this submission pays for it and the statement that does. `on_answer` gets the answer
        as soon as it arrives, even if this submission is cancelled just then."""
        flight = self._inflight.get(key)
        if flight is None:
            flight = _Flight(key, request, priority)
            self._inflight[key] = flight
            self._pending.append(flight)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._release)
        if on_answer is not None:
            flight.on_answer.append(on_answer)
        waiter = _Waiter(stats)
        flight.waiters.append(waiter)
        try:
            response, seconds, call = await asyncio.shield(flight.future)
        except asyncio.CancelledError:
            waiter.cancelled = True
            if flight.payer() is None:  # nobody wants the answer any more: stop the work
                done = flight.future.done() and not flight.future.cancelled()
                if stats is not None and done and flight.future.exception() is None:
                    # Answered just as its asker gave up: the engine did the work all the same.
                    response, seconds, _ = flight.future.result()
                    stats.account(response, seconds)
                    stats.backend_calls += 1
                elif stats is not None and flight.started and not done:
                    # It reached the engine: sent, and aborted there (its tokens are unknown).
                    stats.llm_requests += 1
                    stats.aborted_requests += 1
                    stats.backend_calls += 1
                self._abandon(flight)
            raise
        payer = flight.payer()
        if payer is None:
            return response, seconds, call, True, stats
        return response, seconds, call, payer is waiter, payer.stats

    def _abandon(self, flight: _Flight) -> None:
        if self._inflight.get(flight.key) is flight:
            del self._inflight[flight.key]
        if flight in self._pending:
            self._pending.remove(flight)
        if flight.task is not None and not flight.task.done():
            flight.task.cancel()  # an engine driver aborts the request in the engine
        if not flight.future.done():
            flight.future.cancel()

    def _release(self) -> None:
        self._scheduled = False
        batch = sorted(self._pending, key=lambda f: (f.priority, f.request.prompt))
        self._pending = []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        self.calls += 1  # one hand-over: what a batch-era "backend call" was
        if self._async:
            for flight in batch:
                flight.task = loop.create_task(self._answer_one(flight, self.calls))
        else:
            task = loop.create_task(self._answer_batch(batch))
            for flight in batch:
                flight.task = task

    async def _answer_one(self, flight: _Flight, call: int) -> None:
        began = time.perf_counter()
        flight.started = True
        try:
            response = await self.backend.agenerate(flight.request, priority=flight.priority)
        except asyncio.CancelledError:
            self._finish(flight, error=asyncio.CancelledError())
            raise
        except BaseException as exc:  # every waiter gets the failure; nobody hangs
            self._finish(flight, error=_named(exc, self.backend))
            return
        self._finish(flight, result=(response, time.perf_counter() - began, call))

    async def _answer_batch(self, batch: list[_Flight]) -> None:
        began = time.perf_counter()
        call = self.calls
        requests = [f.request for f in batch]

        def answer() -> list[LLMResponse]:
            for flight in batch:
                flight.started = True
            with self._batch_lock:  # such backends answer one batch at a time
                return list(self.backend.generate(requests))

        try:
            responses = await asyncio.get_running_loop().run_in_executor(None, answer)
        except BaseException as exc:
            for flight in batch:
                self._finish(flight, error=_named(exc, self.backend))
            return
        seconds = time.perf_counter() - began
        for flight, response in zip(batch, responses, strict=True):
            self._finish(flight, result=(response, seconds, call))

    def _finish(
        self,
        flight: _Flight,
        *,
        result: tuple[LLMResponse, float, int] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if self._inflight.get(flight.key) is flight:
            del self._inflight[flight.key]
        if flight.future.done():
            return
        if error is not None:
            if isinstance(error, asyncio.CancelledError):
                flight.future.cancel()
            else:
                flight.future.set_exception(error)
                flight.future.exception()  # retrieved: no "never retrieved" noise if unwaited
        else:
            flight.future.set_result(result)  # type: ignore[arg-type]
            # The answer goes into its askers' memos now, before any other task runs: the
            # flight has left `_inflight`, and an identical request of another query of the
            # batch arriving before the askers resume must find it there, not send it again.
            payer = flight.payer()
            owner = id(payer.stats) if payer is not None and payer.stats is not None else 0
            for waiter in flight.waiters:
                if waiter.stats is not None and not waiter.cancelled:
                    waiter.stats.memo.put(flight.key, result[0], owner)  # type: ignore[index]
            for listener in flight.on_answer:
                listener(result[0])  # type: ignore[index]


class BackendFailure(Exception):
    """A backend raised instead of answering (each waiting statement names its model)."""

    def __init__(self, cause: BaseException, backend: Backend) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.backend_name = getattr(backend, "name", type(backend).__name__)


def _named(exc: BaseException, backend: Backend) -> BaseException:
    if isinstance(exc, QueryCancelled):
        return exc
    failure = BackendFailure(exc, backend)
    failure.__cause__ = exc
    return failure


_queues: dict[int, ModelQueue] = {}
_queues_lock = threading.Lock()


def queue_for(backend: Backend) -> ModelQueue:
    """The process-wide queue of one backend instance (dropped with the backend)."""
    key = id(backend)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is not None and queue.backend is backend:
            return queue
        queue = _queues[key] = ModelQueue(backend)
    # A backend that cannot be weakly referenced keeps its queue for the process's life.
    with contextlib.suppress(TypeError):
        weakref.finalize(backend, _forget, key, queue)
    return queue


class Slots:
    """At most `limit` holders at once (None: no limit), as `async with slots():`. The semaphore
    is made on first use, on the event loop that uses it."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    def __call__(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.limit is None:
            return contextlib.nullcontext()
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        return self._semaphore


def _forget(key: int, queue: ModelQueue) -> None:
    with _queues_lock:
        if _queues.get(key) is queue:
            del _queues[key]


class LLMRuntime:
    """Answers requests for operators: statement memo, persistent response cache, in-flight
    sharing, accounting.

    `backend_for(model)` names the backend of a model; every statement's requests for that
    backend go through its process-wide `ModelQueue`. With a `cache`
    (halo_sql.executor.response_cache), a greedy request to a backend with an `identity` is
    looked up there before it is sent, and its answer is stored there as it arrives.
    """

    def __init__(
        self, backend_for: Callable[[str], Backend], *, max_concurrency: int | None = None
    ) -> None:
        self._backend_for = backend_for
        self.max_concurrency = max_concurrency
        """At most this many of this runtime's requests wait for answers at once (None: no
        limit; 1 gives one request at a time, the `naive` benchmark system)."""
        self._slots = Slots(max_concurrency)
        self.cache: ResponseCache | None = None
        """The persistent response cache (the session sets it; None: off)."""

    def backend(self, model: str) -> Backend:
        return self._backend_for(model)

    async def request(
        self,
        model: str,
        request: LLMRequest,
        stats: StatementStats,
        *,
        priority: int = 0,
        counters: Any = None,
    ) -> LLMResponse:
        """The answer to one request (call on the halo loop). `counters` (an operator's
        OperatorCounters) is charged too when this statement pays for the request."""
        if stats.cancel.is_set():
            raise QueryCancelled("statement cancelled; answers received so far are kept")
        key = request_key(model, request)
        me = id(stats)
        known = stats.memo.lookup(key)
        if known is not None:
            stats.deduplicated_requests += 1
            if known[1] != me:
                stats.shared_requests += 1
            return known[0]
        backend = self._backend_for(model)
        store = None
        if self.cache is not None:
            found, store = self._cached(backend, request)
            if found is not None:
                stats.cached_responses += 1
                stats.memo.put(key, found, me)
                if stats.progress is not None:
                    stats.progress(stats)
                return found
        queue = queue_for(backend)
        try:
            async with self._slots():
                answer = await queue.submit(key, request, stats, priority, store)
        except BackendFailure as failure:
            if isinstance(failure.cause, ModelError):
                raise failure.cause from None
            raise ModelError(
                f"model {model!r} ({failure.backend_name}) failed: {failure.cause}"
            ) from failure.cause
        response, seconds, call, paid, payer = answer
        if paid:
            stats.account(response, seconds)
            if (id(queue), call) != stats.last_call:
                # Requests a batch-only backend answered in one call come back together.
                stats.backend_calls += 1
                stats.last_call = (id(queue), call)
            if counters is not None:
                counters.charge(response)
            stats.memo.put(key, response, me)
            if stats.progress is not None:
                stats.progress(stats)
        else:
            stats.deduplicated_requests += 1
            if payer is not stats:
                stats.shared_requests += 1
            stats.memo.put(key, response, id(payer))
        return response

    def _cached(
        self, backend: Backend, request: LLMRequest
    ) -> tuple[LLMResponse | None, Callable[[LLMResponse], None] | None]:
        """The stored answer to `request` if the response cache has one; else what stores the
        answer when it arrives (None when it must not be stored: temperature > 0, or a backend
        without an identity, such as a test double)."""
        cache = self.cache
        identity = getattr(backend, "identity", None)
        if cache is None or not isinstance(identity, str):
            return None, None
        stored = response_key(identity, request)
        if stored is None:
            return None, None
        found = cache.get(stored)
        if found is not None:
            return found, None

        def store(response: LLMResponse) -> None:
            window = backend.context_window if response.finish_reason == "length" else None
            if storable(response, window):
                cache.put(stored, identity, response)

        return None, store

    async def agenerate(
        self,
        model: str,
        requests: Sequence[LLMRequest],
        stats: StatementStats,
        *,
        priority: int = 0,
        counters: Any = None,
    ) -> list[LLMResponse]:
        """Answers for `requests`, in order, all submitted at once."""
        return list(
            await asyncio.gather(
                *(self.request(model, r, stats, priority=priority, counters=counters)
                  for r in requests)
            )
        )

    def generate(
        self, model: str, requests: Sequence[LLMRequest], stats: StatementStats
    ) -> list[LLMResponse]:
        """Synchronous `agenerate`, for code running off the loop (DuckDB functions, agent
        loops, the optimizer's samples)."""
        if not requests:
            return []
        return aio.run(self.agenerate(model, requests, stats))

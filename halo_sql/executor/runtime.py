"""The LLM runtime: owns one backend per model and answers batches of requests for operators.

Within a statement, identical requests (same prompt, output type and decoding parameters) are sent
once; new requests are sent in prompt order so that prompts sharing a prefix are adjacent and hit
the backend's prefix cache. Every call is accounted in the statement's `StatementStats`.

    >>> from halo_sql.llm.sim import SimBackend
    >>> from halo_sql.llm.base import LLMRequest
    >>> runtime = LLMRuntime(lambda model: SimBackend())
    >>> stats = StatementStats()
    >>> answers = runtime.generate("m", [LLMRequest("a"), LLMRequest("a")], stats)
    >>> stats.llm_requests, stats.deduplicated_requests
    (1, 1)
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from halo_sql.errors import ModelError, QueryCancelled
from halo_sql.llm.base import Backend, LLMRequest, LLMResponse

T = TypeVar("T", bound=tuple[Any, LLMRequest])

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
    """Answers already received in a statement, for deduplication; least recently used entries
    are dropped past `capacity`, so memory stays flat however many rows a statement has."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, LLMResponse] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> LLMResponse | None:
        response = self._entries.get(key)
        if response is not None:
            self._entries.move_to_end(key)
        return response

    def put(self, key: bytes, response: LLMResponse) -> None:
        self._entries[key] = response
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
    deduplicated_requests: int = 0
    """Requests answered from an identical request of the same statement, never sent."""
    invalid_answers: int = 0
    """Answers that broke the output type; their values are NULL."""
    failed_requests: int = 0
    """Requests the backend could not answer (e.g. prompt longer than the context window)."""
    backend_calls: int = 0
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
    memo: ResponseMemo = field(default_factory=ResponseMemo, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    progress: Callable[[StatementStats], None] | None = field(default=None, repr=False)
    operators: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Physical operator -> its counters (executor.engine.OperatorCounters; EXPLAIN ANALYZE)."""

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        out["computed_prompt_tokens"] = self.prompt_tokens - self.cached_prompt_tokens
        if self.cached_unknown_requests:
            out["cached_prompt_tokens"] = out["computed_prompt_tokens"] = None  # unknown, not 0
        return out

    def count_response(self, response: LLMResponse) -> None:
        """Account one answer a backend sent."""
        self.llm_requests += 1
        self.prompt_tokens += response.prompt_tokens
        if response.cached_prompt_tokens is None:
            self.cached_unknown_requests += 1
        else:
            self.cached_prompt_tokens += response.cached_prompt_tokens
        self.output_tokens += response.output_tokens
        if response.error is not None:
            self.failed_requests += 1

    def merge(self, other: StatementStats) -> None:
        for key in (
            "llm_requests", "prompt_tokens", "cached_prompt_tokens", "cached_unknown_requests",
            "output_tokens", "deduplicated_requests", "invalid_answers", "failed_requests",
            "backend_calls",
            "agent_steps", "tool_calls", "deduplicated_tool_calls", "tool_errors",
        ):
            setattr(self, key, getattr(self, key) + getattr(other, key))


class BatchSizer:
    """How many requests go to a backend in one call: adaptive batching.

    The first size comes from the profile: enough requests to fill the KV cache `waves` times
    (prompt + output tokens of the requests in flight are what the cache holds), so the engine
    always has the next wave queued; then it follows measured throughput: the size grows by half
    while requests/s keeps improving, and shrinks back to the best size seen when throughput
    falls by more than a fifth. Sizes stay within [min_size, max_size].

    >>> sizer = BatchSizer(kv_cache_tokens=8192, waves=2, min_size=8, max_size=4096)
    >>> sizer.size(average_request_tokens=128)
    128
    >>> sizer.observe(128, seconds=1.0); sizer.size(128)      # 128 req/s: try bigger
    192
    >>> sizer.observe(192, seconds=3.0); sizer.size(128)      # 64 req/s: back to the best
    128
    """

    def __init__(
        self,
        *,
        kv_cache_tokens: int = 65_536,
        waves: int = 2,
        min_size: int = 8,
        max_size: int = 4096,
    ) -> None:
        self.kv_cache_tokens = kv_cache_tokens
        self.waves = waves
        self.min_size = min_size
        self.max_size = max_size
        self._current: int | None = None
        self._best: tuple[float, int] | None = None  # (requests per second, size)

    def size(self, average_request_tokens: float) -> int:
        if self._current is None:
            fit = self.kv_cache_tokens * self.waves / max(average_request_tokens, 1.0)
            self._current = int(min(self.max_size, max(self.min_size, fit)))
        return self._current

    def observe(self, requests: int, seconds: float) -> None:
        """Record one backend call; only calls that filled the current size say anything."""
        if self._current is None or requests < self._current or seconds <= 0:
            return
        rate = requests / seconds
        if self._best is None or rate >= self._best[0]:
            self._best = (rate, self._current)
            self._current = min(self.max_size, int(self._current * 1.5))
        elif rate < 0.8 * self._best[0]:
            self._current = self._best[1]


class LLMRuntime:
    """Routes batches to backends (one per model), deduplicates, orders, and accounts."""

    def __init__(
        self,
        backend_for: Callable[[str], Backend],
        *,
        max_batch: int = 4096,
        sizer_for: Callable[[str], BatchSizer] | None = None,
    ) -> None:
        self._backend_for = backend_for
        self.max_batch = max_batch
        self._sizer_for = sizer_for or (lambda model: BatchSizer(max_size=max_batch))
        self._sizers: dict[str, BatchSizer] = {}
        """One per model: chooses each call's size within `max_batch` (see BatchSizer)."""
        """Largest batch handed to a backend in one call (bounds memory and cancel latency)."""
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def backend(self, model: str) -> Backend:
        return self._backend_for(model)

    def generate(
        self, model: str, requests: Sequence[LLMRequest], stats: StatementStats
    ) -> list[LLMResponse]:
        """Answers for `requests` in order; each distinct request is sent at most once per statement."""
        if stats.cancel.is_set():
            raise QueryCancelled("statement cancelled")
        keys = [request_key(model, r) for r in requests]
        answers: dict[bytes, LLMResponse] = {}
        fresh: dict[bytes, LLMRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            known = stats.memo.get(key)
            if known is not None or key in fresh or key in answers:
                stats.deduplicated_requests += 1
                if known is not None:
                    answers[key] = known
            else:
                fresh[key] = request
        # Prompt order puts prompts sharing a prefix next to each other (a DFS of their trie).
        ordered = sorted(fresh.items(), key=lambda item: item[1].prompt)
        for chunk in self.chunks(model, ordered):
            if stats.cancel.is_set():
                raise QueryCancelled("statement cancelled; answers received so far are kept")
            responses, elapsed = self.call_backend(model, [r for _, r in chunk])
            stats.llm_seconds += elapsed
            stats.backend_calls += 1
            for (key, _), response in zip(chunk, responses, strict=True):
                stats.memo.put(key, response)
                answers[key] = response
                stats.count_response(response)
            if stats.progress is not None:
                stats.progress(stats)
        return [answers[key] for key in keys]

    def call_backend(
        self, model: str, requests: list[LLMRequest]
    ) -> tuple[list[LLMResponse], float]:
        """One backend call, serialized per model: its answers and its seconds. The call's
        throughput feeds the model's batch sizer; a failure names the model."""
        backend = self._backend_for(model)
        with self._lock_for(model):
            began = time.perf_counter()
            try:
                responses = backend.generate(requests)
            except ModelError:
                raise
            except Exception as exc:  # a backend failure must name the model, not crash deep
                raise ModelError(
                    f"model {model!r} failed on a batch of {len(requests)}: {exc}"
                ) from exc
            elapsed = time.perf_counter() - began
        self.sizer(model).observe(len(requests), elapsed)
        return responses, elapsed

    def sizer(self, model: str) -> BatchSizer:
        sizer = self._sizers.get(model)
        if sizer is None:
            # Built outside the lock: the factory may be another runtime's `sizer` (a batch
            # shares its session's sizers), which takes a lock of its own.
            built = self._sizer_for(model)
            with self._locks_guard:
                sizer = self._sizers.setdefault(model, built)
        return sizer

    def chunks(self, model: str, items: list[T]) -> Iterator[list[T]]:
        """`items` (pairs whose second element is an LLMRequest) cut into backend calls whose
        size the sizer chooses, re-asked after every call so it can adapt."""
        start = 0
        while start < len(items):
            sample = items[start : start + 64]
            average = sum(len(r.prompt) / 4 + r.params.max_tokens for _, r in sample) / len(sample)
            size = max(1, min(self.max_batch, self.sizer(model).size(average)))
            yield items[start : start + size]
            start += size

    def _lock_for(self, model: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(model, threading.Lock())

"""The batch runtime: many queries, one stream of model work.

Queries of a batch run on a pool of worker threads (each with its own DuckDB cursor). Their LLM
operators do not call the backend themselves: `BatchingRuntime` collects the requests of every
query that reaches an LLM step, and sends them as one batch when every running query is waiting
for answers (or a short timeout passes, or the batch is full). So the backend sees one large,
prompt-ordered batch per step of the workflow across all queries: a shared instruction prefix is
prefilled once, identical requests of different queries are sent once, and queries at different
steps are served together. Equal sub-plans of different queries run once (`SubplanCache`).

Answers are identical to running the queries one by one: each request's answer depends only on
the request, under greedy decoding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from halo_sql.errors import QueryCancelled
from halo_sql.executor.runtime import LLMRuntime, StatementStats, request_key
from halo_sql.llm.base import LLMRequest, LLMResponse

Key = bytes


@dataclass
class _Pending:
    request: LLMRequest
    model: str
    owner: StatementStats
    """The query whose operator asked first: its stats pay for the request."""


@dataclass
class BatchCounters:
    """What the batch runtime did, beyond the per-query statistics."""

    flushes: int = 0
    backend_calls: int = 0
    requests_sent: int = 0
    shared_requests: int = 0
    """Requests answered by an identical request of another query of the batch."""
    largest_flush: int = 0
    flush_sizes: list[int] = field(default_factory=list)


class BatchingRuntime(LLMRuntime):
    """An LLMRuntime that coalesces the requests of concurrently running queries."""

    def __init__(self, base: LLMRuntime, *, flush_after: float = 0.02, max_flush: int = 4096) -> None:
        super().__init__(base.backend, max_batch=base.max_batch, sizer_for=base.sizer)
        # The base runtime's per-model locks: a batch and a plain statement of the same session
        # never call one engine at the same time.
        self._locks = base._locks
        self._locks_guard = base._locks_guard
        self.flush_after = flush_after
        """Seconds a waiting query gives others to reach their LLM step before it sends anyway."""
        self.max_flush = max_flush
        self.counters = BatchCounters()
        self._cond = threading.Condition()
        self._pending: dict[Key, _Pending] = {}
        self._answers: dict[Key, LLMResponse] = {}
        self._inflight: set[Key] = set()
        """Keys being sent right now: asked again meanwhile, they are waited for, not re-sent."""
        self._errors: dict[Key, BaseException] = {}
        self._active = 0
        self._waiting = 0
        self._flushing = False

    # -- worker bookkeeping ------------------------------------------------------------------------
    def worker_started(self) -> None:
        with self._cond:
            self._active += 1

    def worker_finished(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()  # the others may now all be waiting: time to flush

    # -- the runtime protocol ----------------------------------------------------------------------
    def generate(
        self, model: str, requests: Sequence[LLMRequest], stats: StatementStats
    ) -> list[LLMResponse]:
        if stats.cancel.is_set():
            raise QueryCancelled("statement cancelled")
        keys = [request_key(model, r) for r in requests]
        local: dict[Key, LLMResponse] = {}
        with self._cond:
            for key, request in zip(keys, requests, strict=True):
                known = stats.memo.get(key)
                if known is not None or key in local:
                    stats.deduplicated_requests += 1
                    if known is not None:
                        local[key] = known
                elif key in self._answers or key in self._pending or key in self._inflight:
                    stats.deduplicated_requests += 1
                    self.counters.shared_requests += 1
                else:
                    self._pending[key] = _Pending(request, model, stats)
            missing = [k for k in keys if k not in local and k not in self._answers]
            self._waiting += 1
            try:
                waited_since = time.perf_counter()
                while any(k not in self._answers and k not in self._errors for k in missing):
                    if stats.cancel.is_set():
                        raise QueryCancelled("statement cancelled; answers received so far are kept")
                    everyone_waits = self._waiting >= self._active
                    overdue = time.perf_counter() - waited_since >= self.flush_after
                    full = len(self._pending) >= self.max_flush
                    if self._pending and not self._flushing and (everyone_waits or overdue or full):
                        self._flush_locked()
                        waited_since = time.perf_counter()
                    else:
                        self._cond.wait(timeout=self.flush_after)
            finally:
                self._waiting -= 1
            for key in missing:
                if key in self._errors:
                    raise self._errors[key]
            out = []
            for key in keys:
                response = local.get(key) or self._answers[key]
                stats.memo.put(key, response)
                out.append(response)
            return out

    def _flush_locked(self) -> None:
        """Send everything pending (called with the condition held; releases it while sending)."""
        batch = sorted(self._pending.items(), key=lambda item: (item[1].model, item[1].request.prompt))
        self._pending.clear()
        self._inflight.update(key for key, _ in batch)
        self._flushing = True
        self.counters.flushes += 1
        self.counters.flush_sizes.append(len(batch))
        self.counters.largest_flush = max(self.counters.largest_flush, len(batch))
        self._cond.release()
        results: dict[Key, LLMResponse] = {}
        errors: dict[Key, BaseException] = {}
        try:
            by_model: dict[str, list[tuple[Key, _Pending]]] = {}
            for key, pending in batch:
                by_model.setdefault(pending.model, []).append((key, pending))
            for model, items in by_model.items():
                by_key = dict(items)
                for requests in self.chunks(model, [(key, p.request) for key, p in items]):
                    chunk = [(key, by_key[key]) for key, _ in requests]
                    try:
                        responses = self._send(model, [p.request for _, p in chunk])
                    except BaseException as exc:  # every waiting query gets the failure, none hangs
                        for key, _ in chunk:
                            errors[key] = exc
                        continue
                    for (key, pending), response in zip(chunk, responses, strict=True):
                        results[key] = response
                        pending.owner.count_response(response)
        finally:
            self._cond.acquire()
            self._answers.update(results)
            self._errors.update(errors)
            self._inflight.difference_update(key for key, _ in batch)
            self._flushing = False
            self._cond.notify_all()

    def _send(self, model: str, requests: list[LLMRequest]) -> list[LLMResponse]:
        responses, _ = self.call_backend(model, requests)
        self.counters.backend_calls += 1
        self.counters.requests_sent += len(requests)
        return responses

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

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from halo_sql.errors import ModelError, QueryCancelled
from halo_sql.llm.base import Backend, LLMRequest, LLMResponse


@dataclass
class StatementStats:
    """What one statement cost. `con.stats()` returns `as_dict()` of the last statement."""

    llm_requests: int = 0
    """Requests actually sent to a backend (after deduplication)."""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    deduplicated_requests: int = 0
    """Requests answered from an identical request of the same statement, never sent."""
    invalid_answers: int = 0
    """Answers that broke the output type; their values are NULL."""
    failed_requests: int = 0
    """Requests the backend could not answer (e.g. prompt longer than the context window)."""
    backend_calls: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    llm_seconds: float = 0.0
    memo: dict[tuple[Any, ...], LLMResponse] = field(default_factory=dict, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    progress: Callable[[StatementStats], None] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        out["computed_prompt_tokens"] = self.prompt_tokens - self.cached_prompt_tokens
        return out

    def merge(self, other: StatementStats) -> None:
        for key in (
            "llm_requests", "prompt_tokens", "cached_prompt_tokens", "output_tokens",
            "deduplicated_requests", "invalid_answers", "failed_requests", "backend_calls",
        ):
            setattr(self, key, getattr(self, key) + getattr(other, key))


class LLMRuntime:
    """Routes batches to backends (one per model), deduplicates, orders, and accounts."""

    def __init__(self, backend_for: Callable[[str], Backend], *, max_batch: int = 512) -> None:
        self._backend_for = backend_for
        self.max_batch = max_batch
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
        keys = [(model, *r.dedup_key) for r in requests]
        fresh: dict[tuple[Any, ...], LLMRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key in stats.memo or key in fresh:
                stats.deduplicated_requests += 1
            else:
                fresh[key] = request
        # Prompt order puts prompts sharing a prefix next to each other (a DFS of their trie).
        ordered = sorted(fresh.items(), key=lambda item: item[1].prompt)
        backend = self._backend_for(model)
        lock = self._lock_for(model)
        for start in range(0, len(ordered), self.max_batch):
            if stats.cancel.is_set():
                raise QueryCancelled("statement cancelled; answers received so far are kept")
            chunk = ordered[start : start + self.max_batch]
            began = time.perf_counter()
            with lock:
                try:
                    responses = backend.generate([r for _, r in chunk])
                except ModelError:
                    raise
                except Exception as exc:  # a backend failure must name the model, not crash deep
                    raise ModelError(f"model {model!r} failed on a batch of {len(chunk)}: {exc}") from exc
            stats.llm_seconds += time.perf_counter() - began
            stats.backend_calls += 1
            for (key, _), response in zip(chunk, responses, strict=True):
                stats.memo[key] = response
                stats.llm_requests += 1
                stats.prompt_tokens += response.prompt_tokens
                stats.cached_prompt_tokens += response.cached_prompt_tokens
                stats.output_tokens += response.output_tokens
                if response.error is not None:
                    stats.failed_requests += 1
            if stats.progress is not None:
                stats.progress(stats)
        return [stats.memo[key] for key in keys]

    def _lock_for(self, model: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(model, threading.Lock())

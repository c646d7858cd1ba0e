"""`sim`: a deterministic simulated model for fast tests and dry runs.

It speaks the same protocol as the real backends. Each answer is derived from a hash of the request
(prompt, output constraint, decoding params), so a prompt always gets the same answer and different
prompts get different ones; answers always satisfy the output constraint. Token counts come from
the model's tokenizer when a model directory is given, and cached prompt tokens from a real
block-granular prefix cache, so the statistics behave like vLLM's.

    >>> backend = SimBackend()
    >>> backend.generate([LLMRequest("Pick a colour:", OutputSpec.choice(["red", "blue"]))])[0].text
    'blue'
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from halo_sql.llm.base import EngineCounters, LLMRequest, LLMResponse, OutputKind, OutputSpec
from halo_sql.llm.identity import backend_identity
from halo_sql.llm.prefix_cache import PrefixCache
from halo_sql.llm.tokenizer import load_tokenizer

__all__ = ["SimBackend", "LLMRequest", "OutputSpec"]

_WORDS = ["the", "order", "shipped", "late", "and", "the", "customer", "asked", "for", "a", "refund", "while", "the", "package", "arrived", "damaged", "but", "support", "answered", "quickly", "with", "a", "clear", "plan", "to", "replace", "the", "item", "soon"]


class SimBackend:
    """Deterministic stand-in for an LLM (see the module docstring)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        block_size: int = 32,
        cache_capacity_tokens: int = 1 << 20,
        context_window: int = 4096,
        seed: int = 0,
        latency_per_request: float = 0.0,
        step_seconds: float = 0.0,
        max_num_seqs: int = 256,
    ) -> None:
        self.model = model
        self.name = f"sim:{Path(model).name}" if model else "sim"
        self.identity = backend_identity("sim", model, {"seed": seed})
        """What answers depend on (see halo_sql.llm.identity): the tokenizer's model directory
        (it cuts free text at max_tokens) and the seed; not the timing or cache options."""
        self._tokenizer = load_tokenizer(model)
        self._cache = PrefixCache(block_size, max(1, cache_capacity_tokens // block_size))
        self._context_window = context_window
        self._seed = seed
        self._latency = latency_per_request
        """Seconds `generate` sleeps per request: makes statements slow on purpose (Ctrl-C tests)."""
        self.step_seconds = step_seconds
        """`agenerate` only: > 0 simulates a continuous-batching engine whose every step takes this
        long (see `_SimEngine`); 0 answers at once."""
        self.max_num_seqs = max_num_seqs
        self._engine: _SimEngine | None = None
        self._slow: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.counters = EngineCounters()
        self._lock = threading.Lock()
        self.calls = 0
        """How many batches `generate` was given (tests count backend calls with it)."""

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        with self._lock:
            self.calls += 1
            if self._latency > 0:
                time.sleep(self._latency * len(requests))
            return [self._answer(request) for request in requests]

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """The driver interface. Without `step_seconds` the answer comes at once; with it, the
        request joins a simulated continuous batch and finishes after one prefill step plus one
        step per output token, so requests submitted early or with short answers finish first,
        as on a real engine. Deterministic: the same submissions give the same step order."""
        with self._lock:
            self.calls += 1
            self.counters.requests += 1
            response = self._answer(request)
        if self._latency > 0:
            # Slow on purpose (Ctrl-C tests): requests take their latency one after another.
            if self._slow is None or self._slow[0] is not asyncio.get_running_loop():
                self._slow = (asyncio.get_running_loop(), asyncio.Lock())
            async with self._slow[1]:
                await asyncio.sleep(self._latency)
        if self.step_seconds <= 0:
            await asyncio.sleep(0)  # let other coroutines run, as a real driver's await would
            return response
        if self._engine is None or self._engine.loop is not asyncio.get_running_loop():
            self._engine = _SimEngine(self)
        return await self._engine.run(response, priority)

    def engine_counters(self) -> EngineCounters:
        """Cumulative steps and running sequences of the simulated engine (agenerate only)."""
        return EngineCounters(self.counters.steps, self.counters.running_sum, self.counters.requests)

    def reset_cache(self) -> None:
        """Forget every cached prefix, as a freshly started engine would."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        self.reset_cache()

    def _answer(self, request: LLMRequest) -> LLMResponse:
        tokens = self._tokenizer.encode(request.prompt)
        if len(tokens) + 1 > self._context_window:
            return LLMResponse(
                text="",
                prompt_tokens=len(tokens),
                cached_prompt_tokens=0,
                output_tokens=0,
                finish_reason="error",
                error=f"prompt of {len(tokens)} tokens exceeds the context window "
                f"of {self._context_window}",
            )
        cached = self._cache.lookup_and_insert(tokens)
        rng = random.Random(self._digest(request))
        text = self._text_for(request.output, rng, request.params.max_tokens)
        finish = "stop"
        if request.output.kind is OutputKind.TEXT:
            text, finish = self._truncate(text, request.params.max_tokens)
        output_tokens = max(1, self.count_tokens(text))
        return LLMResponse(
            text=text,
            prompt_tokens=len(tokens),
            cached_prompt_tokens=min(cached, len(tokens) - 1) if tokens else 0,
            output_tokens=output_tokens,
            finish_reason=finish,
        )

    def _truncate(self, text: str, max_tokens: int) -> tuple[str, str]:
        """Cut free text to `max_tokens` tokens, as a model stops when it hits the limit."""
        if self.count_tokens(text) <= max_tokens:
            return text, "stop"
        words = text.split(" ")
        while len(words) > 1 and self.count_tokens(" ".join(words)) > max_tokens:
            words.pop()
        cut = " ".join(words)
        pieces = self._tokenizer.encode(cut)
        if len(pieces) > max_tokens and all(isinstance(piece, str) for piece in pieces):
            cut = "".join(str(piece) for piece in pieces[:max_tokens])
        return cut, "length"

    def _digest(self, request: LLMRequest) -> int:
        key = json.dumps(
            [self._seed, request.prompt, request.output.kind.value, request.output.labels,
             request.output.json_schema, request.params.temperature, request.params.seed],
        )
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")

    def _text_for(self, output: OutputSpec, rng: random.Random, max_tokens: int) -> str:
        if output.kind in (OutputKind.BOOLEAN, OutputKind.CHOICE):
            return rng.choice(output.labels)
        if output.kind is OutputKind.JSON:
            return json.dumps(_value_for_schema(output.schema or {}, rng), separators=(",", ":"))
        count = rng.randint(3, max(3, min(max_tokens, 16)))
        words = [rng.choice(_WORDS) for _ in range(count)]
        return " ".join(words).capitalize() + "."


class _SimEngine:
    """A continuous-batching engine in miniature: a step loop over the running requests.

    Each step takes `step_seconds`; it admits waiting requests (lowest priority value first, then
    arrival order) up to `max_num_seqs`, and every running request advances by one token: a
    request needs one step for its prefill and one per output token. The loop sleeps when
    nothing runs, like vLLM's engine core.
    """

    def __init__(self, backend: SimBackend) -> None:
        self.backend = backend
        self.loop = asyncio.get_running_loop()
        self._waiting: list[tuple[int, int, list[int], asyncio.Future[None]]] = []
        self._running: list[tuple[list[int], asyncio.Future[None]]] = []
        self._arrivals = 0
        self._task: asyncio.Task[None] | None = None

    async def run(self, response: LLMResponse, priority: int) -> LLMResponse:
        done: asyncio.Future[None] = self.loop.create_future()
        steps_left = [1 + max(0, response.output_tokens)]
        self._arrivals += 1
        heapq.heappush(self._waiting, (priority, self._arrivals, steps_left, done))
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._steps())
        await done
        return response

    async def _steps(self) -> None:
        backend = self.backend
        while self._waiting or self._running:
            while self._waiting and len(self._running) < backend.max_num_seqs:
                _, _, left, done = heapq.heappop(self._waiting)
                self._running.append((left, done))
            await asyncio.sleep(backend.step_seconds)
            backend.counters.steps += 1
            backend.counters.running_sum += len(self._running)
            still = []
            for left, done in self._running:
                left[0] -= 1
                if left[0] <= 0:
                    if not done.done():
                        done.set_result(None)
                else:
                    still.append((left, done))
            self._running = still


def _value_for_schema(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value valid under the common subset of JSON schema that LLM_EXTRACT supports."""
    for key in ("anyOf", "oneOf"):  # e.g. an agent's reply: one of its tool calls, or final
        if key in schema:
            return _value_for_schema(rng.choice(schema[key]), rng)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _value_for_schema(sub, rng) for name, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = max(low, min(int(schema.get("maxItems", 3)), low + 3))
        count = rng.randint(low, high)
        items = schema.get("items", {})
        if schema.get("uniqueItems") and items.get("type") == "integer":
            # e.g. a ranking: each item number once (a permutation when count fills the range)
            first, last = int(items.get("minimum", 0)), int(items.get("maximum", 100))
            return rng.sample(range(first, last + 1), min(count, last - first + 1))
        return [_value_for_schema(items, rng) for _ in range(count)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(low, high)
    if kind == "number":
        lowest, highest = float(schema.get("minimum", 0)), float(schema.get("maximum", 100))
        return round(rng.uniform(lowest, highest), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))

"""The protocol every LLM backend speaks: a batch of requests in, responses with token counts out.

    >>> from halo_sql.llm.sim import SimBackend
    >>> backend = SimBackend()
    >>> [r.text for r in backend.generate([LLMRequest("Is it late? yes or no", OutputSpec.boolean())])]
    ['yes']
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class OutputKind(enum.Enum):
    """What shape an answer takes; the backend constrains decoding to it where it can."""

    TEXT = "text"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    JSON = "json"


@dataclass(frozen=True)
class OutputSpec:
    """The output constraint of a request: free text, yes/no, one of labels, or a JSON schema."""

    kind: OutputKind = OutputKind.TEXT
    labels: tuple[str, ...] = ()
    json_schema: str | None = None
    """The JSON schema as compact JSON text, so specs hash and compare by value."""

    @staticmethod
    def text() -> OutputSpec:
        return OutputSpec(OutputKind.TEXT)

    @staticmethod
    def boolean() -> OutputSpec:
        return OutputSpec(OutputKind.BOOLEAN, labels=("yes", "no"))

    @staticmethod
    def choice(labels: Sequence[str]) -> OutputSpec:
        return OutputSpec(OutputKind.CHOICE, labels=tuple(labels))

    @staticmethod
    def json(schema: dict[str, Any]) -> OutputSpec:
        # Property order is kept: it is the order of the STRUCT fields the user asked for.
        return OutputSpec(OutputKind.JSON, json_schema=json.dumps(schema, separators=(",", ":")))

    @property
    def schema(self) -> dict[str, Any] | None:
        return None if self.json_schema is None else json.loads(self.json_schema)


@dataclass(frozen=True)
class DecodingParams:
    """Sampling settings; the defaults give greedy, reproducible answers."""

    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class LLMRequest:
    """One prompt for one model call."""

    prompt: str
    output: OutputSpec = field(default_factory=OutputSpec.text)
    params: DecodingParams = field(default_factory=DecodingParams)

    @property
    def dedup_key(self) -> tuple[str, OutputSpec, DecodingParams]:
        """Requests with equal keys get equal answers under greedy decoding and are sent once."""
        return (self.prompt, self.output, self.params)


@dataclass(frozen=True)
class LLMResponse:
    """A backend's answer to one request, with what it cost."""

    text: str
    prompt_tokens: int
    cached_prompt_tokens: int | None
    """Prompt tokens served from the engine's prefix cache; None when the backend does not
    report it (an OpenAI-compatible server without cached-token details): unknown, never 0."""
    output_tokens: int
    finish_reason: str = "stop"
    error: str | None = None
    """Set when the backend could not answer this request; `text` is then empty."""


@runtime_checkable
class Backend(Protocol):
    """A model instance behind an engine driver.

    `agenerate` is the driver interface the runtime uses: one request in, its answer out, called
    on the halo loop (`halo_sql.llm.aio`) as soon as the request is ready, with as many requests
    in flight as the runtime likes; the engine behind it (vLLM's continuous batching, an HTTP
    server, a pool of replicas) decides how to batch them. `generate` is the synchronous
    convenience for whole lists (tests, calibration, DuckDB functions); `AsyncBackend` derives it
    from `agenerate`.
    """

    name: str
    """What EXPLAIN and stats call this backend instance, e.g. 'vllm:/models/tiny'."""

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """Answer one request. A request the engine rejects (prompt too long, a schema it cannot
        compile) returns a response with `error` set; a broken engine raises ModelError.
        `priority`: lower runs earlier where the engine supports priorities (vLLM's priority
        scheduling), ignored elsewhere."""
        ...

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        """Answer all requests, in order (blocking; never call it on the halo loop)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Prompt length in this model's tokens (for cost estimates)."""
        ...

    @property
    def context_window(self) -> int:
        """Maximum prompt + output tokens of one request."""
        ...

    def close(self) -> None:
        """Release the model (memory, processes)."""
        ...


@dataclass
class EngineCounters:
    """What an engine did, cumulatively: how full its batches were.

    `steps` counts engine steps (one forward pass of the running batch); `running_sum` adds up
    the sequences running in each step, so `running_sum / steps` is the average batch the engine
    ran. Take differences of two readings to measure one run.
    """

    steps: int = 0
    running_sum: int = 0
    requests: int = 0

    @property
    def sequences_per_step(self) -> float:
        return self.running_sum / self.steps if self.steps else 0.0

    def minus(self, earlier: EngineCounters) -> EngineCounters:
        return EngineCounters(
            self.steps - earlier.steps,
            self.running_sum - earlier.running_sum,
            self.requests - earlier.requests,
        )


class AsyncBackend:
    """Base for backends whose native interface is `agenerate`: `generate` runs the requests
    concurrently on the halo loop and waits (a request that raises becomes an error response
    only if the backend itself turned it into one; a raised ModelError propagates)."""

    name: str = "backend"

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        raise NotImplementedError

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        from halo_sql.llm import aio

        async def all_of() -> list[LLMResponse]:
            return list(await asyncio.gather(*(self.agenerate(r) for r in requests)))

        return aio.run(all_of()) if requests else []

"""The protocol every LLM backend speaks: a batch of requests in, responses with token counts out.

    >>> from halo_sql.llm.sim import SimBackend
    >>> backend = SimBackend()
    >>> [r.text for r in backend.generate([LLMRequest("Is it late? yes or no", OutputSpec.boolean())])]
    ['yes']
"""

from __future__ import annotations

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
    cached_prompt_tokens: int
    output_tokens: int
    finish_reason: str = "stop"
    error: str | None = None
    """Set when the backend could not answer this request; `text` is then empty."""


@runtime_checkable
class Backend(Protocol):
    """A model instance that answers batches. Implementations must be safe to call from one
    thread at a time; the runtime serializes calls per backend."""

    name: str
    """What EXPLAIN and stats call this backend instance, e.g. 'vllm:/models/tiny'."""

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        """Answer all requests, in order. One call should be one batch on the model."""
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

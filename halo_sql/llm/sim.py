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

import hashlib
import json
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from halo_sql.llm.base import LLMRequest, LLMResponse, OutputKind, OutputSpec
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
    ) -> None:
        self.model = model
        self.name = f"sim:{Path(model).name}" if model else "sim"
        self._tokenizer = load_tokenizer(model)
        self._cache = PrefixCache(block_size, max(1, cache_capacity_tokens // block_size))
        self._context_window = context_window
        self._seed = seed
        self._latency = latency_per_request
        """Seconds `generate` sleeps per request: makes statements slow on purpose (Ctrl-C tests)."""
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

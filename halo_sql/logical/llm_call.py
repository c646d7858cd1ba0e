"""What one LLM function call asks of a model: plain immutable data carried by plan nodes.

    >>> from halo_sql.parser.template import parse_template
    >>> call = LLMCall(LLMFunction.FILTER, parse_template("Is it about delivery? {text}"), "m",
    ...                output=OutputSpec.boolean())
    >>> call.prompt(["It came late."])
    'Is it about delivery? It came late.'
    >>> call.parse_answer(" Yes")
    True
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from halo_sql.llm.base import DecodingParams, LLMRequest, OutputKind, OutputSpec
from halo_sql.parser.template import PromptTemplate
from halo_sql.sqltypes import MAX_TOKENS, SHORTHAND_TYPES, check_shorthand, schema_to_arrow  # noqa: E402, F401


class LLMFunction(enum.Enum):
    """The LLM functions of the SQL surface (halo names; FlockMTL names map onto these)."""

    COMPLETE = "llm"
    FILTER = "llm_filter"
    CLASSIFY = "llm_classify"
    EXTRACT = "llm_extract"
    AGG = "llm_agg"
    RERANK = "llm_rerank"
    FIRST = "llm_first"
    LAST = "llm_last"

    @property
    def is_aggregate(self) -> bool:
        return self in (LLMFunction.AGG, LLMFunction.RERANK, LLMFunction.FIRST, LLMFunction.LAST)


class InvalidAnswer(ValueError):
    """A model answer that does not satisfy the call's output type; the value becomes NULL."""


@dataclass(frozen=True)
class LLMCall:
    """A prompt template applied to a model with an output type and decoding parameters."""

    function: LLMFunction
    template: PromptTemplate
    model: str
    output: OutputSpec = field(default_factory=OutputSpec.text)
    params: DecodingParams = field(default_factory=DecodingParams)

    def prompt(self, values: Sequence[str]) -> str:
        """The prompt for one row: the template rendered with the row's values, nothing more.
        The output type is enforced by constrained decoding (`LLMRequest.output`), not by
        words added to the user's prompt."""
        return self.template.render(values)

    def request(self, values: Sequence[str]) -> LLMRequest:
        return LLMRequest(self.prompt(values), self.output, self.params)

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type_for(self.output)

    def parse_answer(self, text: str) -> Any:
        """The SQL value of a model answer; raises InvalidAnswer if it breaks the output type."""
        return parse_answer(self.output, text)

    def describe(self) -> str:
        """One-line text for EXPLAIN (deterministic)."""
        extra = ""
        if self.output.kind is OutputKind.CHOICE:
            extra = f" labels={list(self.output.labels)}"
        elif self.output.kind is OutputKind.JSON:
            extra = f" schema={self.output.json_schema}"
        return (
            f"{self.function.value}(model={self.model}, template={str(self.template)!r}{extra}, "
            f"max_tokens={self.params.max_tokens}, temperature={self.params.temperature})"
        )


def parse_answer(output: OutputSpec, text: str) -> Any:
    answer = text.strip()
    if output.kind is OutputKind.TEXT:
        return answer
    if output.kind is OutputKind.BOOLEAN:
        word = answer.lower().strip(".!\"' ")
        if word.startswith("yes") or word == "true":
            return True
        if word.startswith("no") or word == "false":
            return False
        raise InvalidAnswer(f"expected yes or no, got {_clip(answer)!r}")
    if output.kind is OutputKind.CHOICE:
        for label in output.labels:
            if answer == label:
                return label
        folded = answer.lower().strip(".!\"' ")
        for label in output.labels:
            if folded == label.lower():
                return label
        raise InvalidAnswer(f"expected one of {list(output.labels)}, got {_clip(answer)!r}")
    try:
        value = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"answer is not valid JSON ({exc.msg}): {_clip(answer)!r}") from None
    import jsonschema

    try:
        _validator(output.json_schema or "{}").validate(value)
    except jsonschema.ValidationError as exc:
        raise InvalidAnswer(f"answer does not match the schema: {exc.message}") from None
    return value


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    """A checked validator per schema (`jsonschema.validate` checks the schema on every call)."""
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def arrow_type_for(output: OutputSpec) -> pa.DataType:
    if output.kind is OutputKind.BOOLEAN:
        return pa.bool_()
    if output.kind is OutputKind.JSON:
        return schema_to_arrow(output.schema or {})
    return pa.string()


def to_arrow_value(value: Any, arrow_type: pa.DataType) -> Any:
    """Shape a parsed JSON value for `arrow_type` (JSON text where the type is a plain string)."""
    if value is None:
        return None
    if pa.types.is_struct(arrow_type):
        return {
            f.name: to_arrow_value(value.get(f.name) if isinstance(value, dict) else None, f.type)
            for f in arrow_type
        }
    if pa.types.is_list(arrow_type):
        items = value if isinstance(value, list) else [value]
        return [to_arrow_value(v, arrow_type.value_type) for v in items]
    if pa.types.is_string(arrow_type) and not isinstance(value, str):
        return json.dumps(value)
    if pa.types.is_integer(arrow_type) and isinstance(value, bool | float):
        return int(value)
    return value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Arrow and DuckDB SQL types of LLM answers: plain functions with no dependency on any layer.

Used by the planner (typed NULL placeholders, result types), by agent specs (answer columns)
and by the executor (shaping parsed JSON), so they live below all of them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def schema_to_arrow(schema: dict[str, Any]) -> pa.DataType:
    """The Arrow (and so DuckDB) type of values valid under a JSON schema.

    >>> schema_to_arrow({"type": "object", "properties": {"age": {"type": "integer"}}})
    StructType(struct<age: int64>)
    """
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if "enum" in schema and kind is None:
        kind = "string"
    if kind == "object":
        props = schema.get("properties") or {}
        if not props:
            return pa.string()
        return pa.struct([pa.field(name, schema_to_arrow(sub)) for name, sub in props.items()])
    if kind == "array":
        # DuckDB names a list's child field "l": results then look the same whichever runs it.
        return pa.list_(pa.field("l", schema_to_arrow(schema.get("items") or {"type": "string"})))
    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
    }.get(kind or "", pa.string())


def sql_type_for(arrow_type: pa.DataType) -> str:
    """DuckDB SQL spelling of an LLM function's result type.

    >>> sql_type_for(pa.struct([pa.field("urgent", pa.bool_())]))
    'STRUCT("urgent" BOOLEAN)'
    """
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_floating(arrow_type):
        return "DOUBLE"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(
            '"' + f.name.replace('"', '""') + '" ' + sql_type_for(f.type) for f in arrow_type
        )
        return f"STRUCT({fields})"
    if pa.types.is_list(arrow_type):
        return sql_type_for(arrow_type.value_type) + "[]"
    return "VARCHAR"


MAX_TOKENS = 1 << 20
"""Largest max_tokens an option may ask for (a million tokens: beyond any model's context)."""

SHORTHAND_TYPES = ("string", "integer", "number", "boolean")
"""Field types of the shorthand schema '{"name": "string", "age": "integer"}'."""

_SCHEMA_KEYWORDS = frozenset(
    {
        "type", "properties", "items", "prefixItems", "enum", "const", "anyOf", "oneOf", "allOf",
        "not", "$ref", "$defs", "definitions", "$schema", "$id", "required",
        "additionalProperties", "patternProperties", "minItems", "maxItems", "uniqueItems",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
        "pattern", "format", "title", "description", "default", "examples", "if", "then", "else",
        "contains", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas",
        "propertyNames", "unevaluatedProperties", "unevaluatedItems", "multipleOf",
    }
)


def check_shorthand(schema: dict[str, Any], where: str) -> None:
    """Refuse an object that is neither a JSON schema nor a valid shorthand: one with no schema
    keyword is read as the shorthand, so each of its values must be a field type.

        >>> check_shorthand({"age": "intger"}, "LLM_EXTRACT")
        Traceback (most recent call last):
        ...
        halo_sql.errors.BinderError: LLM_EXTRACT: field 'age' has unknown type 'intger' (field types: string, integer, number, boolean, or a JSON schema with "type")
    """
    from halo_sql.errors import BinderError

    if not schema or any(key in _SCHEMA_KEYWORDS for key in schema):
        return
    for name, value in schema.items():
        if isinstance(value, str) and value in SHORTHAND_TYPES:
            continue
        if isinstance(value, dict) and ("type" in value or "enum" in value):
            continue
        what = f"unknown type {value!r}" if isinstance(value, str) else f"no type ({value!r})"
        raise BinderError(
            f"{where}: field {name!r} has {what} (field types: {', '.join(SHORTHAND_TYPES)}, "
            'or a JSON schema with "type")'
        )

"""Tool and agent definitions: plain immutable data, carried by plan nodes and kept in the catalog.

    >>> tool = ToolSpec.create("orders_of", "sql", "SELECT * FROM orders WHERE o_custkey = :key",
    ...                        {"parameters": '{"key": "integer"}'})
    >>> tool.parameter_schema["properties"]
    {'key': {'type': 'integer'}}
    >>> AnswerShape.of(output_schema("BOOLEAN")).columns
    (('answer', 'BOOLEAN'),)
    >>> AnswerShape.of(output_schema('{"risk": "string", "score": "integer"}')).columns
    (('risk', 'VARCHAR'), ('score', 'BIGINT'))
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from halo_sql.errors import BinderError, SourceLocation
from halo_sql.options import Option, read_options
from halo_sql.sqltypes import MAX_TOKENS, check_shorthand, schema_to_arrow, sql_type_for

_MAX_TIMEOUT = 24 * 3600.0
_MAX_ROWS = 100_000
_MAX_CONCURRENCY = 1024

RESERVED_COLUMNS = ("steps", "tool_calls", "error")
"""Columns every agent output row has after its answer columns."""

TOOL_CALL_TYPE = pa.struct(
    [
        pa.field("step", pa.int64()),
        pa.field("tool", pa.string()),
        pa.field("arguments", pa.string()),
        pa.field("result", pa.string()),
        pa.field("ok", pa.bool_()),
    ]
)
"""One element of the `tool_calls` column: which tool, with which JSON arguments, what it said."""

_TYPE_WORDS = {
    "varchar": "string", "text": "string", "string": "string",
    "boolean": "boolean", "bool": "boolean",
    "integer": "integer", "int": "integer", "bigint": "integer",
    "double": "number", "float": "number", "real": "number", "number": "number",
}
_SHORTHAND_TYPES = {"string", "integer", "number", "boolean"}


class ToolKind(enum.Enum):
    """Where a tool's work happens."""

    SQL = "sql"
    """A parameterized read-only query over the session's database."""
    PYTHON = "python"
    """A Python callable registered in the process (`halo_sql.agents.register_tool_function`)."""
    HTTP = "http"
    """An HTTP endpoint on a URL; arguments go as a JSON body (POST) or a query string (GET)."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool an agent may call: its kind, target, the JSON schema of its arguments, limits."""

    name: str
    kind: ToolKind
    target: str
    """SQL text with `:name` parameters, 'module:function', or an http(s) URL."""
    parameters: str
    """JSON schema (as text, property order kept) of the arguments object; the model's calls are constrained
    to it, so a backend with structured outputs always produces arguments that parse."""
    description: str = ""
    tables: tuple[str, ...] = ()
    """SQL tools: the only tables the query may read (lower case)."""
    timeout: float = 10.0
    """Seconds one call may take; a slower call becomes a timeout observation."""
    max_rows: int = 20
    """SQL tools: rows shown to the agent (the observation says when there were more)."""
    max_chars: int = 2000
    """Longest observation text the agent sees."""
    concurrency: int = 4
    """PYTHON and HTTP tools: calls in flight at once (per statement, or per batch of queries)."""
    method: str = "POST"
    """HTTP tools: POST sends the arguments as JSON, GET as a query string."""
    cache: bool = True
    """Identical calls (same arguments) in a statement or batch run once. Off for tools whose
    answer changes from call to call."""

    @property
    def parameter_schema(self) -> dict[str, Any]:
        return dict(json.loads(self.parameters))

    @staticmethod
    def create(
        name: str,
        kind: str,
        target: str,
        options: Mapping[str, Any],
        locations: Mapping[str, SourceLocation] | None = None,
    ) -> ToolSpec:
        """A tool from CREATE TOOL's parts; raises BinderError naming what is wrong (and, given
        `locations`, where the offending option stands)."""
        try:
            tool_kind = ToolKind(kind.lower())
        except ValueError:
            raise BinderError(
                f"CREATE TOOL {name}: unknown kind {kind!r} (use SQL, PYTHON or HTTP)"
            ) from None
        where = f"CREATE TOOL {name}"
        known: dict[str, Option] = {
            "parameters": Option("any"), "description": Option("text"),
            "timeout": Option("positive", maximum=_MAX_TIMEOUT), "max_chars": Option("count"),
        }
        known |= {
            ToolKind.SQL: {"tables": Option("any"), "max_rows": Option("count", maximum=_MAX_ROWS)},
            ToolKind.PYTHON: {"concurrency": Option("count", maximum=_MAX_CONCURRENCY),
                              "cache": Option("boolean")},
            ToolKind.HTTP: {"concurrency": Option("count", maximum=_MAX_CONCURRENCY),
                            "method": Option("text"), "cache": Option("boolean")},
        }[tool_kind]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise BinderError(
                f"CREATE TOOL {name}: unknown option(s) {unknown} for a {tool_kind.name} tool "
                f"(allowed: {sorted(known)})",
                location=(locations or {}).get(unknown[0]),
            )
        options = read_options(options, known, where, locations=locations)
        declared = options.get("parameters")
        if tool_kind is ToolKind.SQL:
            names = sql_parameter_names(target)
            schema = parameter_schema(declared, where) if declared is not None else (
                parameter_schema({n: "string" for n in names}, where)
            )
            props = set(schema.get("properties", {}))
            if props != set(names):
                raise BinderError(
                    f"{where}: parameters {sorted(props)} do not match the query's placeholders "
                    f"{sorted(names)} (write :name in the query for each parameter)"
                )
        elif declared is not None:
            schema = parameter_schema(declared, where)
        elif tool_kind is ToolKind.HTTP:
            schema = parameter_schema({"query": "string"}, where)
        else:
            schema = parameter_schema({}, where)
        tables = options.get("tables", ())
        if isinstance(tables, str):
            tables = [tables]
        if not isinstance(tables, list | tuple) or not all(isinstance(t, str) for t in tables):
            raise BinderError(f"{where}: tables must be a list of table names like [orders]",
                              location=(locations or {}).get("tables"))
        method = str(options.get("method", "POST")).upper()
        if method not in ("GET", "POST"):
            raise BinderError(f"{where}: method must be GET or POST, got {method!r}",
                              location=(locations or {}).get("method"))
        spec = ToolSpec(
            name=name,
            kind=tool_kind,
            target=target,
            parameters=json.dumps(schema),  # property order kept: the model writes them in it
            description=str(options.get("description", "")),
            tables=tuple(sorted(str(t).lower() for t in tables)),
            timeout=float(options.get("timeout", 10.0)),
            max_rows=int(options.get("max_rows", 20)),
            max_chars=int(options.get("max_chars", 2000)),
            concurrency=int(options.get("concurrency", 4)),
            method=method,
            cache=bool(options.get("cache", True)),
        )
        return spec

    def describe(self) -> str:
        """One line for EXPLAIN and SHOW TOOLS (deterministic)."""
        extra = ""
        if self.kind is ToolKind.SQL:
            extra = f" tables={list(self.tables)}"
        elif self.kind is ToolKind.HTTP:
            extra = f" method={self.method} concurrency={self.concurrency}"
        else:
            extra = f" concurrency={self.concurrency}"
        about = f" description={self.description!r}" if self.description else ""
        return (
            f"{self.name}: {self.kind.name} {self.target!r}{extra} timeout={self.timeout:g}s "
            f"parameters={self.parameters}{about}"
        )

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["kind"] = self.kind.value
        data["tables"] = list(self.tables)
        return json.dumps(data, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ToolSpec:
        data = json.loads(text)
        data["kind"] = ToolKind(data["kind"])
        data["tables"] = tuple(data.get("tables", ()))
        return ToolSpec(**data)


@dataclass(frozen=True)
class AgentSpec:
    """An agent: a model, instructions, the tools it may call, a step bound and an answer type."""

    name: str
    instructions: str
    tools: tuple[str, ...]
    output: str
    """JSON schema (as text, property order kept) of the final answer."""
    model: str | None = None
    """None: the session's default model when a query calls the agent."""
    max_steps: int = 4
    """Model replies per row at most; the last reply must be the final answer."""
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    steps_hint: float | None = None
    """Expected steps per row, for cost estimates (None: half of max_steps)."""

    @property
    def output_schema(self) -> dict[str, Any]:
        return dict(json.loads(self.output))

    @property
    def shape(self) -> AnswerShape:
        return AnswerShape.of(self.output_schema)

    @property
    def expected_steps(self) -> float:
        """Model replies per row a cost estimate should assume: the declared `steps_hint`, else
        half of `max_steps` (at least one). Each is one request; a row's prompt grows by one
        tool result per step, and all but the newest part is a cached prefix."""
        if self.steps_hint is not None:
            return min(float(self.max_steps), self.steps_hint)
        return max(1.0, self.max_steps / 2)

    @staticmethod
    def create(
        name: str, options: Mapping[str, Any], locations: Mapping[str, SourceLocation] | None = None
    ) -> AgentSpec:
        """An agent from CREATE AGENT's options; raises BinderError naming what is wrong."""
        where = f"CREATE AGENT {name}"
        known = {
            "model": Option("text"), "instructions": Option("text"), "tools": Option("any"),
            "max_steps": Option("count", maximum=64), "output": Option("any"),
            "max_tokens": Option("count", maximum=MAX_TOKENS), "temperature": Option("number"),
            "seed": Option("integer"), "steps_hint": Option("positive"),
        }
        at = dict(locations or {})
        options = read_options(options, known, where, locations=at)
        if not str(options.get("instructions", "")).strip():
            raise BinderError(f"{where}: give the agent instructions => '...'")
        tools = options.get("tools", [])
        if isinstance(tools, str):
            tools = [tools]
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise BinderError(f"{where}: tools must be a list like [tool_a, tool_b]",
                              location=at.get("tools"))
        names = [str(t).lower() for t in tools]
        if len(set(names)) != len(names):
            raise BinderError(f"{where}: a tool is listed twice in {names}", location=at.get("tools"))
        output = options.get("output", "VARCHAR")
        if not isinstance(output, str | list):
            raise BinderError(
                f"{where}: output must be a type name, a list of labels or a JSON schema, "
                f"got {output!r}", location=at.get("output"),
            )
        spec = AgentSpec(
            name=name,
            instructions=str(options["instructions"]),
            tools=tuple(names),
            # Property order kept: it is the order of the answer columns.
            output=json.dumps(output_schema(output, where)),
            model=options.get("model"),
            max_steps=int(options.get("max_steps", 4)),
            max_tokens=int(options.get("max_tokens", 256)),
            temperature=float(options.get("temperature", 0.0)),
            seed=int(options.get("seed", 0)),
            steps_hint=options.get("steps_hint"),
        )
        AnswerShape.of(spec.output_schema, where)
        return spec

    def describe(self) -> str:
        """One line for EXPLAIN (deterministic)."""
        columns = ", ".join(f"{n} {t}" for n, t in self.shape.columns)
        rows = " rows_per_item" if self.shape.many else ""
        return (
            f"{self.name}(model={self.model}, max_steps={self.max_steps}, "
            f"max_tokens={self.max_tokens}, temperature={self.temperature}, seed={self.seed}, "
            f"tools={list(self.tools)}) answer=[{columns}]{rows}"
        )

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["tools"] = list(self.tools)
        return json.dumps(data, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> AgentSpec:
        data = json.loads(text)
        data["tools"] = tuple(data.get("tools", ()))
        return AgentSpec(**data)


@dataclass(frozen=True)
class AnswerShape:
    """How a final answer becomes columns and rows.

    A scalar schema gives one column `answer`; an object with properties gives one column per
    property; an array gives one output row per item (of either kind).
    """

    columns: tuple[tuple[str, str], ...]
    """(name, DuckDB type) of each answer column."""
    arrow_types: tuple[pa.DataType, ...]
    per_property: bool
    """True: the answer (or each item) is an object whose properties are the columns."""
    many: bool
    """True: the answer is an array, one output row per item."""

    @staticmethod
    def of(schema: dict[str, Any], where: str = "agent output") -> AnswerShape:
        many = schema.get("type") == "array"
        item = schema.get("items", {"type": "string"}) if many else schema
        props = item.get("properties") if item.get("type") == "object" else None
        if props:
            names = [str(n) for n in props]
            types = [schema_to_arrow(props[n]) for n in props]
        else:
            names, types = ["answer"], [schema_to_arrow(item)]
        clash = [n for n in names if n.lower() in RESERVED_COLUMNS]
        if clash:
            raise BinderError(
                f"{where}: answer field(s) {clash} clash with the columns every agent row has "
                f"({', '.join(RESERVED_COLUMNS)}); rename them"
            )
        columns = tuple((n, sql_type_for(t)) for n, t in zip(names, types, strict=True))
        return AnswerShape(columns, tuple(types), bool(props), many)


def output_schema(value: Any, where: str = "output") -> dict[str, Any]:
    """The JSON schema of an agent's answer from CREATE AGENT's `output` option.

    A type name ('VARCHAR', 'BOOLEAN', 'INTEGER', 'DOUBLE'), a list of labels, a JSON schema, or
    the shorthand '{"field": "string", ...}' for an object of typed fields.

        >>> output_schema(["yes", "no"], "x")
        {'type': 'string', 'enum': ['yes', 'no']}
    """
    if isinstance(value, list):
        labels = [str(v) for v in value]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise BinderError(f"{where}: output labels must be at least two distinct strings")
        return {"type": "string", "enum": labels}
    text = str(value).strip()
    if text.lower() in _TYPE_WORDS:
        return {"type": _TYPE_WORDS[text.lower()]}
    schema = _json_object(text, where, "output")
    return _checked(_expand_shorthand(schema, where), where, "output")


def parameter_schema(value: Any, where: str) -> dict[str, Any]:
    """The JSON schema of a tool's arguments: an object schema, or the shorthand
    '{"name": "string", ...}' (every field required, no others)."""
    schema = value if isinstance(value, dict) else _json_object(str(value), where, "parameters")
    schema = _expand_shorthand(schema, where) if schema else {
        "type": "object", "properties": {}, "additionalProperties": False,
    }
    if schema.get("type") != "object":
        raise BinderError(f"{where}: parameters must describe a JSON object")
    return _checked(schema, where, "parameters")


def sql_parameter_names(sql: str) -> list[str]:
    """The `:name` placeholders of an SQL tool's query, in order of first use.

        >>> sql_parameter_names("SELECT * FROM t WHERE a = :x AND b > :y AND c = :x::INT")
        ['x', 'y']
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError as exc:
        raise BinderError(f"the tool's query does not parse: {str(exc).splitlines()[0]}") from None
    names: list[str] = []
    for node in tree.walk(bfs=False):
        if isinstance(node, exp.Placeholder):
            if not node.this:
                raise BinderError("write tool parameters as :name (positional ? is not supported)")
            if str(node.this) not in names:
                names.append(str(node.this))
    return names


def _expand_shorthand(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """{"a": "integer", "b": {"type": "string", "maxLength": 9}} is an object with required
    fields a and b and no others (a field is a type name or its own schema)."""

    def field_schema(value: Any) -> dict[str, Any] | None:
        if isinstance(value, str) and value in _SHORTHAND_TYPES:
            return {"type": value}
        if isinstance(value, dict) and ("type" in value or "enum" in value):
            return value
        return None

    fields = {k: field_schema(v) for k, v in schema.items()}
    if "type" not in schema and schema and all(f is not None for f in fields.values()):
        return {
            "type": "object",
            "properties": fields,
            "required": list(schema),
            "additionalProperties": False,
        }
    check_shorthand(schema, where)
    return schema


def _json_object(text: str, where: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BinderError(
            f"{where}: {what} is neither a type name nor valid JSON ({exc.msg} at character "
            f"{exc.pos})"
        ) from None
    if not isinstance(value, dict):
        raise BinderError(f"{where}: {what} must be a JSON object (a JSON schema)")
    return value


def _checked(schema: dict[str, Any], where: str, what: str) -> dict[str, Any]:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BinderError(f"{where}: invalid JSON schema for {what}: {exc.message}") from None
    return schema



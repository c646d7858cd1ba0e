"""LLM functions inside a user's own DuckDB: `halo_sql.duckdb.install(con)`.

    >>> import duckdb, halo_sql.duckdb
    >>> con = duckdb.connect()
    >>> llm = halo_sql.duckdb.install(con, backend="sim")
    >>> con.sql("SELECT llm_filter('Is {text} about delivery?', 'It came late') AS ok").fetchall()
    [(False,)]

Every halo and FlockMTL function name is registered as a vectorized Arrow UDF (`side_effects=True`,
so DuckDB neither folds nor caches calls). Each vector DuckDB hands over (up to 2,048 rows, possibly
from several threads at once) becomes one batch for the backend, through an `LLMRuntime` over the
same process-wide backend instances the engine uses.

DuckDB's Python UDFs cannot see column names, so templates are filled positionally: the values
after the template fill its slots in order of first appearance. The calling conventions:

    llm('Summarize {text}', text)                      -- VARCHAR
    llm_filter('Is {text} about {topic}?', text, 'delivery')   -- BOOLEAN
    llm_classify('Mood of {text}', ['happy', 'sad'], text)      -- VARCHAR (one of the labels)
    llm_extract('Who wrote {text}?', '{"name": "string"}', text)  -- VARCHAR holding JSON
    llm_agg('Summarize the reviews', list(text))       -- VARCHAR, one answer per LIST
    any of the above with a last argument {'model': 'm', 'max_tokens': 8, 'temperature': 0}

    llm_complete({'model_name': 'm'}, {'prompt': 'Summarize'}, {'review': text})  -- FlockMTL
    llm_filter({'model_name': 'm'}, {'prompt': 'Is it late?'}, {'review': text})
    llm_reduce / llm_rerank / llm_first / llm_last(..., list({'review': text}))  -- over a LIST

DuckDB's Python API has no aggregate functions, so the aggregate ones take the group as a LIST
(`list(x)` with GROUP BY). Non-VARCHAR values are turned into text exactly as DuckDB's
`CAST(x AS VARCHAR)` does (STRUCT items of a LIST as `to_json`), so prompts equal the engine's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
from duckdb.func import ARROW, SPECIAL

from halo_sql.errors import BinderError
from halo_sql.executor.duckdb_bridge import _types
from halo_sql.executor.llm_eval import evaluate_groups, evaluate_rows
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.logical.functions import FLOCKMTL_NAMES, HALO_NAMES, read_call_site
from halo_sql.logical.llm_call import LLMCall, LLMFunction
from halo_sql.session import Session

__all__ = ["FUNCTION_TYPES", "LLMFunctions", "install"]

VECTOR_SIZE = 2048
"""DuckDB's standard vector size: the most rows one UDF call receives, and so one batch."""

FUNCTION_TYPES: dict[str, Any] = {
    "llm": _types.VARCHAR,
    "llm_complete": _types.VARCHAR,
    "llm_filter": _types.BOOLEAN,
    "llm_classify": _types.VARCHAR,
    "llm_extract": _types.VARCHAR,
    "llm_agg": _types.VARCHAR,
    "llm_reduce": _types.VARCHAR,
    "llm_rerank": _types.VARCHAR,
    "llm_first": _types.VARCHAR,
    "llm_last": _types.VARCHAR,
}
"""Every registered name and its DuckDB return type (a UDF's type is fixed at registration, so
llm_extract returns its JSON as text: use `::JSON` or `json_extract` on it)."""

_OPTION_KEYS = frozenset({"model", "max_tokens", "temperature"})
# Arguments after the template that configure the call (the rest are slot values).
_CONFIG_ARGS = {
    LLMFunction.COMPLETE: 0, LLMFunction.FILTER: 0, LLMFunction.CLASSIFY: 1,
    LLMFunction.EXTRACT: 1, LLMFunction.AGG: 0,
}


@dataclasses.dataclass(frozen=True)
class _Bound:
    """An LLM call read from a function's constant arguments, and how its slots map to values."""

    call: LLMCall
    slot_names: tuple[str, ...]
    """Distinct slot names in order of first appearance: the i-th value fills the i-th name."""


class LLMFunctions:
    """What `install` returns: the registered functions of one DuckDB connection.

    `stats()` adds up every vector evaluated so far (LLM requests, tokens, backend calls);
    `vectors` counts the UDF calls DuckDB made; `uninstall()` removes the functions.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, session: Session, *, batch_size: int) -> None:
        self.connection = con
        self.session = session
        """Holds the models (default, and those of `halo_catalog.models` in this database)."""
        self.runtime = LLMRuntime(session.backend)
        self.totals = StatementStats()
        self.vectors = 0
        self._lock = threading.Lock()
        self._bound: dict[str, _Bound] = {}

    # -- public ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Totals over every vector evaluated since `install` (same keys as `con.stats()`)."""
        with self._lock:
            return self.totals.as_dict()

    def uninstall(self) -> None:
        for name in FUNCTION_TYPES:
            with contextlib.suppress(duckdb.Error):
                self.connection.remove_function(name)

    # -- the UDF body ----------------------------------------------------------------------------
    def evaluate(self, name: str, arguments: Sequence[pa.Array]) -> pa.Array:
        """One vector of `name(arguments...)`: one batch of requests for the backend."""
        arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arguments]
        if not arrays:
            raise BinderError(f"{name}() needs arguments; see `help(halo_sql.duckdb)` for the forms")
        stats = StatementStats()
        if pa.types.is_struct(arrays[0].type):
            out = self._flockmtl(name, arrays, stats)
        else:
            out = self._halo(name, arrays, stats)
        with self._lock:
            self.vectors += 1
            self.totals.merge(stats)
            self.totals.llm_seconds += stats.llm_seconds
            self.totals.rows_out += len(arrays[0])
        return out

    def _halo(self, name: str, arrays: list[pa.Array], stats: StatementStats) -> pa.Array:
        function = HALO_NAMES.get(name)
        if function is None:
            raise BinderError(
                f"{name}() takes FlockMTL-style struct arguments: "
                f"{name}({{'model_name': ...}}, {{'prompt': ...}}, {{'column': expr, ...}})"
            )
        rows = len(arrays[0])
        fixed = 1 + _CONFIG_ARGS[function]
        rest = arrays[fixed:]
        options = None
        if rest and _is_options(rest[-1]):
            options, rest = rest[-1], rest[:-1]
        config = [*arrays[:fixed], *([options] if options is not None else [])]
        keys = _row_keys(config, rows)

        def bind(key: tuple[Any, ...]) -> _Bound:
            template, *extra = key
            given = dict(extra[-1] or {}) if options is not None else {}
            bound = self._bind_halo(name, function, template, extra[:_CONFIG_ARGS[function]], given)
            if function is not LLMFunction.AGG and len(bound.slot_names) != len(rest):
                raise BinderError(
                    f"{name}({template!r}): the template has {len(bound.slot_names)} slot(s) "
                    f"{_braced(bound.slot_names)} and takes one value for each after the "
                    f"{'template' if fixed == 1 else 'second argument'}, in that order; "
                    f"got {len(rest)} (options go in a last struct: {{'model': 'm', 'max_tokens': 8}})"
                )
            return bound

        if function is LLMFunction.AGG:
            if not rest or not _is_list(rest[0]) or len(rest) != 1:
                raise BinderError(
                    f"{name}() takes the instruction and the items as a LIST: "
                    f"{name}('Summarize the reviews', list(text)) ... GROUP BY ..."
                )
            items = _varchar_items(rest[0])
            return _by_key(keys, rows, bind, pa.string(), lambda b, idx: self._groups(b, items, idx, stats))
        values = [_varchar(a) for a in rest]
        return _by_key(
            keys, rows, bind, _arrow_type(name),
            lambda b, idx: self._rows(b, values, idx, stats, rows),
        )

    def _flockmtl(self, name: str, arrays: list[pa.Array], stats: StatementStats) -> pa.Array:
        function = FLOCKMTL_NAMES.get(name)
        if function is None:
            raise BinderError(
                f"{name}() takes a template string first: {name}('... {{column}} ...', column); "
                "the struct form is for llm_complete, llm_filter, llm_reduce, llm_rerank, "
                "llm_first and llm_last"
            )
        rows = len(arrays[0])
        if len(arrays) not in (2, 3) or not pa.types.is_struct(arrays[1].type):
            raise BinderError(
                f"{name}() takes ({{'model_name': ...}}, {{'prompt': ...}}[, {{'column': expr, ...}}])"
            )
        inputs = arrays[2] if len(arrays) == 3 else None
        keys = _row_keys(arrays[:2], rows)
        if function.is_aggregate:
            if inputs is None or not _is_list(inputs) or not pa.types.is_struct(inputs.type.value_type):
                raise BinderError(
                    f"{name}() reduces a group given as a LIST of structs in DuckDB mode: "
                    f"{name}({{'model_name': ...}}, {{'prompt': ...}}, list({{'review': text}})) "
                    "... GROUP BY ..."
                )
            fields = tuple(f.name for f in inputs.type.value_type)
            items = _varchar_items(inputs)

            def bind_items(key: tuple[Any, ...]) -> _Bound:
                return self._bind_flockmtl(name, key[0], key[1], fields)

            return _by_key(keys, rows, bind_items, pa.string(), lambda b, idx: self._groups(b, items, idx, stats))
        values: list[pa.Array] = []
        fields = ()
        if inputs is not None:
            if not pa.types.is_struct(inputs.type):
                raise BinderError(f"{name}(): the third argument must be a struct of input columns")
            fields = tuple(f.name for f in inputs.type)
            values = [_varchar(v) for v in inputs.flatten()]

        def bind(key: tuple[Any, ...]) -> _Bound:
            return self._bind_flockmtl(name, key[0], key[1], fields)

        return _by_key(keys, rows, bind, _arrow_type(name), lambda b, idx: self._rows(b, values, idx, stats, rows))

    # -- evaluation over the rows of one call ----------------------------------------------------
    def _rows(
        self, bound: _Bound, values: list[pa.Array], rows: pa.Array | None, stats: StatementStats,
        count: int,
    ) -> pa.Array:
        by_name = dict(zip(bound.slot_names, values, strict=True))
        slots = [by_name[str(s)] for s in bound.call.template.slots]
        if rows is not None:
            slots = [s.take(rows) for s in slots]
            count = len(rows)
        out = evaluate_rows(bound.call, slots, self.runtime, stats, rows=count)
        if not pa.types.is_string(out.type) and not pa.types.is_boolean(out.type):
            # llm_extract: the UDF's return type is fixed at registration, so JSON text.
            out = pa.array([None if v is None else json.dumps(v) for v in out.to_pylist()], pa.string())
        return out

    def _groups(
        self, bound: _Bound, items: pa.Array, rows: pa.Array | None, stats: StatementStats
    ) -> pa.Array:
        return evaluate_groups(bound.call, items if rows is None else items.take(rows), self.runtime, stats)

    # -- reading calls from constant arguments ---------------------------------------------------
    def _bind_halo(
        self, name: str, function: LLMFunction, template: Any, extra: list[Any], options: dict[str, Any]
    ) -> _Bound:
        cache_key = json.dumps([name, template, extra, options], sort_keys=True, default=str)
        bound = self._bound.get(cache_key)
        if bound is not None:
            return bound
        from sqlglot import exp

        if not isinstance(template, str):
            raise BinderError(f"{name}(): the first argument must be the template string")
        args: list[Any] = [exp.Literal.string(template)]
        if function is LLMFunction.CLASSIFY:
            args.append(exp.convert(extra[0]) if isinstance(extra[0], list) else exp.Literal.string(str(extra[0])))
        elif function is LLMFunction.EXTRACT:
            schema = extra[0] if isinstance(extra[0], str) else json.dumps(extra[0])
            args.append(exp.Literal.string(schema))
        elif function is LLMFunction.AGG:
            args.append(exp.column("items"))
        unknown = sorted(k for k, v in options.items() if k not in _OPTION_KEYS and v is not None)
        if unknown:
            raise BinderError(f"{name}(): unknown option(s) {unknown}; options are model, max_tokens, temperature")
        for key, value in sorted(options.items()):
            if value is not None:
                args.append(exp.Kwarg(this=exp.var(key), expression=exp.convert(value)))
        site = read_call_site(exp.Anonymous(this=name, expressions=args), default_model=self.session.default_model)
        bound = _Bound(self._resolved(site.call), tuple(dict.fromkeys(str(s) for s in site.call.template.slots)))
        self._bound[cache_key] = bound
        return bound

    def _bind_flockmtl(
        self, name: str, model: Mapping[str, Any] | None, prompt: Mapping[str, Any] | None,
        fields: tuple[str, ...],
    ) -> _Bound:
        cache_key = json.dumps([name, model, prompt, fields], sort_keys=True, default=str)
        bound = self._bound.get(cache_key)
        if bound is not None:
            return bound
        from sqlglot import exp

        def struct(values: Mapping[str, Any]) -> exp.Struct:
            return exp.Struct(expressions=[
                exp.PropertyEQ(this=exp.to_identifier(k), expression=v if isinstance(v, exp.Expression) else exp.convert(v))
                for k, v in values.items() if v is not None
            ])

        args = [struct(model or {}), struct(prompt or {})]
        if fields:
            args.append(struct({f: exp.column(f) for f in fields}))
        site = read_call_site(exp.Anonymous(this=name, expressions=args), default_model=self.session.default_model)
        bound = _Bound(self._resolved(site.call), fields if not site.call.function.is_aggregate else ())
        self._bound[cache_key] = bound
        return bound

    def _resolved(self, call: LLMCall) -> LLMCall:
        return dataclasses.replace(call, model=self.session.resolve_model(call.model))


def install(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str | None = None,
    backend: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    batch_size: int = VECTOR_SIZE,
    replace: bool = True,
) -> LLMFunctions:
    """Register the LLM functions (halo and FlockMTL names) on a plain DuckDB connection.

    `model` / `backend` / `model_options` set the default model as in `halo_sql.connect`; models
    created with CREATE MODEL in this database (its `halo_catalog.models` table) are known too.
    `batch_size` bounds one backend call (a DuckDB vector is at most 2,048 rows). With `replace`,
    functions of the same names registered earlier (by a previous install) are replaced.
    """
    session = Session(connection=con, model=model, backend=backend, model_options=model_options)
    functions = LLMFunctions(con, session, batch_size=max(batch_size, 1))
    for name, return_type in FUNCTION_TYPES.items():
        if replace:
            with contextlib.suppress(duckdb.Error):
                con.remove_function(name)
        con.create_function(
            name,
            _udf(functions, name),
            None,  # no parameter list: DuckDB then passes any number of arguments of any type
            return_type,
            type=ARROW,
            null_handling=SPECIAL,
            side_effects=True,
        )
    return functions


def _udf(functions: LLMFunctions, name: str) -> Callable[..., pa.Array]:
    def udf(*arguments: pa.Array) -> pa.Array:
        return functions.evaluate(name, arguments)

    udf.__name__ = name
    return udf


# -- helpers over Arrow arrays -------------------------------------------------------------------
def _arrow_type(name: str) -> pa.DataType:
    return pa.bool_() if FUNCTION_TYPES[name] == _types.BOOLEAN else pa.string()


def _is_list(array: pa.Array) -> bool:
    return pa.types.is_list(array.type) or pa.types.is_large_list(array.type)


def _is_options(array: pa.Array) -> bool:
    return pa.types.is_struct(array.type) and array.type.num_fields > 0 and all(
        f.name in _OPTION_KEYS for f in array.type
    )


def _braced(names: Sequence[str]) -> str:
    return "(" + ", ".join("{" + n + "}" for n in names) + ")" if names else "(none)"


def _row_keys(config: Sequence[pa.Array], rows: int) -> list[tuple[Any, ...] | None] | tuple[Any, ...]:
    """Per row, the constant arguments that define the call (None where the template is NULL);
    just one tuple when they are the same on every row (the usual case: literals)."""
    columns = [a.to_pylist() for a in config]
    if rows and all(c == [c[0]] * rows for c in columns):
        first = tuple(c[0] for c in columns)
        return first if first[0] is not None else [None] * rows
    out: list[tuple[Any, ...] | None] = []
    for row in range(rows):
        values = tuple(c[row] for c in columns)
        out.append(None if values[0] is None else values)
    return out


def _by_key(
    keys: list[tuple[Any, ...] | None] | tuple[Any, ...],
    rows: int,
    bind: Callable[[tuple[Any, ...]], _Bound],
    arrow_type: pa.DataType,
    run: Callable[[_Bound, pa.Array | None], pa.Array],
) -> pa.Array:
    """Run each distinct call over its rows. The usual case, one call for the whole vector,
    is a single batch; a template that varies per row makes one batch per distinct call."""
    if isinstance(keys, tuple):
        return run(bind(keys), None)
    groups: dict[str, tuple[tuple[Any, ...], list[int]]] = {}
    for row, key in enumerate(keys):
        if key is not None:
            text = json.dumps(key, sort_keys=True, default=str)
            groups.setdefault(text, (key, []))[1].append(row)
    values: list[Any] = [None] * rows
    for key, members in groups.values():
        answers = run(bind(key), pa.array(members, pa.int64())).to_pylist()
        for row, answer in zip(members, answers, strict=True):
            values[row] = answer
    return pa.array(values, type=arrow_type)


_scratch = threading.local()


def _scratch_sql(array: pa.Array, expression: str) -> pa.Array:
    """`expression` over column v of `array`, computed by a private DuckDB (per thread: UDFs run
    on several DuckDB threads), so values become text exactly as DuckDB casts them."""
    con = getattr(_scratch, "con", None)
    if con is None:
        con = _scratch.con = duckdb.connect(config={"threads": 1})
    con.register("__halo_values", pa.table({"v": array}))
    try:
        result = con.sql(f"SELECT {expression} AS v FROM __halo_values").to_arrow_table()
    finally:
        con.unregister("__halo_values")
    return result.column(0).combine_chunks()


def _varchar(array: pa.Array) -> pa.Array:
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        return array.cast(pa.string())
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.string())
    return _scratch_sql(array, "CAST(v AS VARCHAR)")


def _varchar_items(array: pa.Array) -> pa.Array:
    """A LIST of any items as LIST(VARCHAR): structs as their JSON text (as the engine does)."""
    if pa.types.is_string(array.type.value_type):
        return array
    if pa.types.is_struct(array.type.value_type):
        return _scratch_sql(array, "list_transform(v, lambda x: CAST(to_json(x) AS VARCHAR))")
    return _scratch_sql(array, "CAST(v AS VARCHAR[])")

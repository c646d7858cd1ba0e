"""Statistics the cost model asks for, cached per statement.

The optimizer sits below the executor, so it never touches DuckDB or a backend itself: the
session hands it an `OptimizerContext` (callables over its connection, tokenizers and runtime).
`Statistics` asks that context and caches every answer for the statement:

- rows of a relational source: `SELECT count(*) FROM (<source sql>)` (exact; DuckDB answers it
  from its own statistics or a scan);
- argument columns of an LLM operator: non-NULL and distinct counts (requests after the runtime's
  deduplication) and a deterministic sample of values (`ORDER BY hash(...) LIMIT k`);
- prompt tokens per request and the cached prefix, by rendering and tokenizing the sample;
- selectivity of an LLM predicate, by asking the model about the sample. Those requests go
  through the statement's runtime, so their answers land in the statement's response memo and
  the real run never pays for them twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from halo_sql.llm.base import OutputKind
from halo_sql.logical.llm_call import LLMCall
from halo_sql.optimizer.profile import BackendProfile
from halo_sql.optimizer.sqltools import quote

DEFAULT_SELECTIVITY = 0.5
"""An LLM predicate whose selectivity was not sampled passes half of the rows."""
SAMPLE_FRACTION_LIMIT = 8
"""Sample an LLM predicate only over sources with at least this many times the sample's rows."""
DEFAULT_ARG_TOKENS = 32
"""Tokens of one slot value when no sample could be read (an input computed by the plan)."""


class OptimizerContext(Protocol):
    """What the optimizer may ask of the session (all optional in spirit: None = unknown)."""

    sample_rows: int
    """Rows sampled to estimate an LLM predicate's selectivity (0: never ask the model)."""

    def run_sql(self, sql: str) -> list[tuple[Any, ...]] | None: ...

    def table_columns(self, name: str) -> dict[str, str] | None: ...

    def count_tokens(self, model: str, text: str) -> int: ...

    def profile(self, model: str) -> BackendProfile: ...

    def ask(self, call: LLMCall, rows: Sequence[Sequence[str]]) -> list[Any] | None:
        """The call's parsed answers for `rows` of slot values, through the statement's runtime."""
        ...


class NullContext:
    """No database, no model: every statistic takes its default (used by tests and the bench)."""

    sample_rows = 0

    def __init__(self, profile: BackendProfile | None = None) -> None:
        self._profile = profile or BackendProfile.shipped("sim")

    def run_sql(self, sql: str) -> list[tuple[Any, ...]] | None:
        return None

    def table_columns(self, name: str) -> dict[str, str] | None:
        return None

    def count_tokens(self, model: str, text: str) -> int:
        from halo_sql.llm.tokenizer import RegexTokenizer

        return len(RegexTokenizer().encode(text))

    def profile(self, model: str) -> BackendProfile:
        return self._profile

    def ask(self, call: LLMCall, rows: Sequence[Sequence[str]]) -> list[Any] | None:
        return None


@dataclass
class ArgStats:
    """What the argument columns of an LLM operator look like at its source."""

    rows: int | None = None
    live_fraction: float = 1.0
    """Rows whose slot values are all non-NULL (NULL in, NULL out: no request)."""
    distinct_fraction: float = 1.0
    """Distinct slot-value tuples per live row (equal requests are sent once)."""
    sample: list[tuple[str, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class AggregateStats:
    """The groups an aggregate LLM function (LLM_AGG, LLM_RERANK, ...) reduces."""

    groups: int
    items: float
    """Average items per group."""
    max_items: int
    chars: float
    """Average characters of a group's items, all together."""
    max_chars: int


@dataclass
class PromptStats:
    """Tokens of one operator's requests."""

    prompt_tokens: float
    cached_tokens: float
    """Per request after the first: the static prefix plus what sorted neighbours share,
    whole cache blocks only."""
    output_tokens: float
    static_tokens: float | None = None
    """The part of `cached_tokens` every request shares (the template's static prefix): it is
    cached on whichever replica a request goes to, while what neighbours (or a row's earlier
    steps) share is cached only where they went. None: all of `cached_tokens`."""


class Statistics:
    """Cached statistics for one statement (see the module docstring)."""

    def __init__(self, context: OptimizerContext) -> None:
        self.context = context
        self.sample_rows = max(0, int(getattr(context, "sample_rows", 0)))
        self._rows: dict[str, int | None] = {}
        self._filters: dict[tuple[str, str], float | None] = {}
        self._args: dict[tuple[str, tuple[str, ...]], ArgStats] = {}
        self._op_args: dict[tuple[LLMCall, tuple[str, ...]], ArgStats] = {}
        self._aggregates: dict[tuple[str, str], AggregateStats | None] = {}
        self._distinct: dict[tuple[str, tuple[str, ...]], dict[str, int] | None] = {}
        self._distinct_values: dict[tuple[str, tuple[str, str]], tuple[str, ...] | None] = {}
        self._prompts: dict[tuple[LLMCall, tuple[str, ...]], PromptStats] = {}
        self._selectivity: dict[tuple[LLMCall, tuple[str, ...]], float] = {}
        self._columns: dict[str, dict[str, str] | None] = {}
        self.sampled_requests = 0
        """Rows asked of a model to estimate selectivities (their answers are reused)."""
        self.sql_queries = 0

    # -- relational ------------------------------------------------------------------------
    def _query(self, sql: str) -> list[tuple[Any, ...]] | None:
        self.sql_queries += 1
        try:
            return self.context.run_sql(sql)
        except Exception:  # a statistic is never worth failing a statement for
            return None

    def row_count(self, sql: str) -> int | None:
        if sql not in self._rows:
            rows = self._query(f"SELECT count(*) FROM ({sql}) AS __halo_c")
            self._rows[sql] = int(rows[0][0]) if rows else None
        return self._rows[sql]

    def columns(self, sql: str) -> tuple[str, ...] | None:
        """Output columns of a query DuckDB can describe (a source without named inputs)."""
        types = self.column_types(sql)
        return tuple(types) if types is not None else None

    def column_types(self, sql: str) -> dict[str, str] | None:
        """Output column -> DuckDB type name of a query DuckDB can describe."""
        if sql not in self._columns:
            rows = self._query(f"DESCRIBE {sql}")
            self._columns[sql] = {str(r[0]): str(r[1]) for r in rows} if rows else None
        return self._columns[sql]

    def filter_selectivity(self, sql: str, predicate: str) -> float | None:
        """Exact fraction of `sql`'s rows satisfying a relational predicate."""
        key = (sql, predicate)
        if key not in self._filters:
            rows = self._query(
                f"SELECT count(*) FILTER (WHERE {predicate}), count(*) FROM ({sql}) AS __halo_c"
            )
            value = None
            if rows and rows[0][1]:
                value = float(rows[0][0]) / float(rows[0][1])
            self._filters[key] = value
        return self._filters[key]

    def aggregate_groups(self, sql: str, function: str) -> AggregateStats | None:
        """Groups an aggregate LLM function of `sql` reduces: count, items and characters."""
        key = (sql, function)
        if key not in self._aggregates:
            from halo_sql.optimizer.sqltools import aggregate_probe

            probe = aggregate_probe(sql, function)
            rows = self._query(probe) if probe is not None else None
            value = None
            if rows and rows[0][0]:
                groups, items, max_items, chars, max_chars = rows[0]
                value = AggregateStats(
                    int(groups), float(items or 0), int(max_items or 0),
                    float(chars or 0), int(max_chars or 0),
                )
            self._aggregates[key] = value
        return self._aggregates[key]

    def distinct_values(self, source: str, column: str, limit: int) -> tuple[str, ...] | None:
        """Up to `limit` distinct non-NULL values of a column, in order."""
        key = (source, (column, str(limit)))
        if key not in self._distinct_values:
            rows = self._query(
                f"SELECT DISTINCT CAST({quote(column)} AS VARCHAR) AS v FROM ({source}) AS __halo_c "
                f"WHERE {quote(column)} IS NOT NULL ORDER BY v LIMIT {limit}"
            )
            self._distinct_values[key] = tuple(str(r[0]) for r in rows) if rows is not None else None
        return self._distinct_values[key]

    def distinct_counts(self, source: str | None, columns: tuple[str, ...]) -> dict[str, int] | None:
        """Distinct values of each column of a relational source."""
        if source is None or not columns:
            return None
        key = (source, columns)
        if key not in self._distinct:
            parts = ", ".join(f"count(DISTINCT {quote(c)})" for c in columns)
            rows = self._query(f"SELECT {parts} FROM ({source}) AS __halo_c")
            self._distinct[key] = dict(zip(columns, map(int, rows[0]), strict=True)) if rows else None
        return self._distinct[key]

    def table_columns(self, name: str) -> dict[str, str] | None:
        try:
            return self.context.table_columns(name)
        except Exception:
            return None

    # -- LLM operators ---------------------------------------------------------------------
    def prefetch(self, sources: dict[str, set[tuple[str, ...]]]) -> None:
        """Argument statistics of every LLM operator over each relational source, two queries
        per source (one for counts, one for a sample), instead of two per operator."""
        for source, arg_sets in sorted(sources.items()):
            sets = sorted(a for a in arg_sets if a and (source, a) not in self._args)
            if not sets:
                continue
            parts = ["count(*)"]
            for args in sets:
                cols = ", ".join(quote(a) for a in args)
                live = " AND ".join(f"{quote(a)} IS NOT NULL" for a in args)
                parts += [
                    f"count(*) FILTER (WHERE {live})",
                    f"count(DISTINCT ({cols})) FILTER (WHERE {live})",
                ]
            rows = self._query(f"SELECT {', '.join(parts)} FROM ({source}) AS __halo_c")
            columns = sorted({a for args in sets for a in args})
            cols = ", ".join(quote(c) for c in columns)
            size = max(self.sample_rows, 16)
            sample = self._query(
                f"SELECT {cols} FROM ({source}) AS __halo_c ORDER BY hash({cols}), {cols} LIMIT {size}"
            )
            if not rows:
                continue
            values = [int(v or 0) for v in rows[0]]
            total = values[0]
            self._rows.setdefault(source, total)
            for i, args in enumerate(sets):
                alive, distinct = values[1 + 2 * i], values[2 + 2 * i]
                stats = ArgStats(
                    rows=total,
                    live_fraction=alive / total if total else 1.0,
                    distinct_fraction=distinct / alive if alive else 1.0,
                )
                positions = [columns.index(a) for a in args]
                for row in sample or []:
                    picked = tuple(row[p] for p in positions)
                    if all(v is not None for v in picked):
                        stats.sample.append(tuple(str(v) for v in picked))
                self._args[(source, args)] = stats

    def op_stats(self, call: LLMCall, source: str | None, args: tuple[str, ...]) -> ArgStats:
        """Argument statistics of one LLM operator, fixed at the first source it was seen over
        (the same operator in another position of the plan asks about the same kind of rows)."""
        key = (call, args)
        if key not in self._op_args:
            self._op_args[key] = self.arg_stats(source, args)
        return self._op_args[key]

    def arg_stats(self, source: str | None, args: tuple[str, ...]) -> ArgStats:
        key = (source or "", args)
        if key in self._args:
            return self._args[key]
        stats = ArgStats()
        if source is not None and args:
            cols = ", ".join(quote(a) for a in args)
            live = " AND ".join(f"{quote(a)} IS NOT NULL" for a in args)
            rows = self._query(
                f"SELECT count(*), count(*) FILTER (WHERE {live}), "
                f"count(DISTINCT ({cols})) FILTER (WHERE {live}) FROM ({source}) AS __halo_c"
            )
            if rows:
                total, alive, distinct = (int(v or 0) for v in rows[0])
                stats.rows = total
                stats.live_fraction = alive / total if total else 1.0
                stats.distinct_fraction = distinct / alive if alive else 1.0
            size = max(self.sample_rows, 16)
            sample = self._query(
                f"SELECT {cols} FROM ({source}) AS __halo_c WHERE {live} "
                f"ORDER BY hash({cols}), {cols} LIMIT {size}"
            )
            if sample:
                stats.sample = [tuple("" if v is None else str(v) for v in row) for row in sample]
        elif source is not None:
            stats.rows = self.row_count(source)
        self._args[key] = stats
        return stats

    def prompt_stats(self, call: LLMCall, source: str | None, args: tuple[str, ...]) -> PromptStats:
        key = (call, args)
        if key in self._prompts:
            return self._prompts[key]
        profile = self.context.profile(call.model)
        block = max(1, profile.block_size)
        count = self._counter(call.model)
        sample = self.op_stats(call, source, args).sample
        if not sample:
            sample = [tuple("x " * DEFAULT_ARG_TOKENS for _ in call.template.slots)]
        prompts = sorted(call.prompt(list(values)) for values in sample)
        lengths = [count(p) for p in prompts]
        prompt_tokens = sum(lengths) / len(lengths)
        static = _static_prefix(call)
        static_tokens = max(0, count(static) - 1) if static else 0
        cached = float(static_tokens // block * block)
        if len(prompts) > 1 and len(sample) >= 4:
            # Neighbours in prompt order share more than the static prefix when leading slot
            # values repeat; measured on the sorted sample (an underestimate at scale).
            shared = [
                _common_prefix_tokens(a, b, count) // block * block
                for a, b in zip(prompts, prompts[1:], strict=False)
            ]
            cached = max(cached, sum(shared) / len(shared))
        cached = min(cached, max(0.0, prompt_tokens - 1))
        stats = PromptStats(
            prompt_tokens, cached, self._output_tokens(call, profile, count),
            static_tokens=min(cached, float(static_tokens // block * block)),
        )
        self._prompts[key] = stats
        return stats

    def llm_selectivity(self, call: LLMCall, source: str | None, args: tuple[str, ...]) -> float:
        """Fraction of rows an LLM predicate keeps: sampled when allowed, else the default."""
        key = (call, args)
        if key in self._selectivity:
            return self._selectivity[key]
        value = DEFAULT_SELECTIVITY
        rows = self.op_stats(call, source, args).rows if self.sample_rows > 0 else None
        # A sample is only worth asking for when it is small next to the rows it informs: its
        # answers are reused only for the rows the chosen plan really asks about.
        if self.sample_rows > 0 and rows is not None and rows >= SAMPLE_FRACTION_LIMIT * self.sample_rows:
            sample = self.op_stats(call, source, args).sample[: self.sample_rows]
            answers = None
            if sample:
                try:
                    answers = self.context.ask(call, sample)
                except Exception:
                    answers = None
            if answers:
                self.sampled_requests += len(sample)
                passed = sum(1 for a in answers if a is True)
                # Laplace smoothing: a small sample never claims a predicate keeps all or none.
                value = (passed + 1) / (len(answers) + 2)
        self._selectivity[key] = value
        return value

    def _counter(self, model: str) -> Callable[[str], int]:
        def count(text: str) -> int:
            try:
                return int(self.context.count_tokens(model, text))
            except Exception:
                return max(1, len(text) // 4)

        return count

    def _output_tokens(
        self, call: LLMCall, profile: BackendProfile, count: Callable[[str], int]
    ) -> float:
        kind = call.output.kind
        if kind is OutputKind.BOOLEAN:
            return 1.0
        if kind is OutputKind.CHOICE:
            labels = call.output.labels or ("x",)
            return sum(max(1, count(label)) for label in labels) / len(labels)
        if kind is OutputKind.JSON:
            skeleton = _json_skeleton(call.output.schema or {})
            return float(min(call.params.max_tokens, max(2, count(json.dumps(skeleton)))))
        return float(min(call.params.max_tokens, profile.text_output_tokens))


def _static_prefix(call: LLMCall) -> str:
    """The text every prompt of `call` starts with (the template up to its first value)."""
    return call.template.static_prefix


def _common_prefix_tokens(a: str, b: str, count: Callable[[str], int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return max(0, count(a[:n]) - 1) if n else 0


def _json_skeleton(schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return {k: _json_skeleton(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_json_skeleton(schema.get("items") or {})]
    if kind in ("integer", "number"):
        return 42
    if kind == "boolean":
        return True
    return "a short value"


def ceil_to(value: float, granularity: int) -> float:
    return math.ceil(value / granularity) * granularity if granularity > 1 else math.ceil(value)

"""The optimizer's view of a session: its DuckDB connection, its models' tokenizers and profiles,
and its LLM runtime (for sampled selectivities, answered into the statement's response memo).

Duck-typed on purpose: the optimizer must not import the session or the executor (they sit above
it), so the session hands itself over and this adapter reads only the attributes named here:
`connection`, `models` (name -> ModelSpec), `runtime.generate(model, requests, stats)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from halo_sql.errors import HaloError
from halo_sql.llm.models import pulled_path
from halo_sql.llm.replicas import Placement, placement_of
from halo_sql.llm.tokenizer import TextTokenizer, load_tokenizer
from halo_sql.logical.llm_call import InvalidAnswer, LLMCall
from halo_sql.optimizer.profile import BackendProfile, find_profile

DEFAULT_SAMPLE_ROWS = 16
_TOKENIZERS: dict[str | None, TextTokenizer] = {}
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SessionContext:
    """An `OptimizerContext` over a live session (see the module docstring)."""

    def __init__(self, session: Any, stats: Any = None, *, sample_rows: int | None = None) -> None:
        self.session = session
        self.stats = stats
        """The statement's StatementStats; None (no statement running): never ask the model."""
        rows = DEFAULT_SAMPLE_ROWS if sample_rows is None else sample_rows
        self.sample_rows = rows if stats is not None else 0

    def run_sql(self, sql: str) -> list[tuple[Any, ...]] | None:
        # Planning a query shape with sentinel values (halo_sql.parser.shapes): statistics are
        # those of the real values, so the plan is the one the real query gets.
        rewrite = getattr(self.session, "statistics_sql", None)
        if rewrite is not None:
            sql = rewrite(sql)
        relation = self.session.connection.sql(sql)
        return relation.fetchall() if relation is not None else None

    def table_columns(self, name: str) -> dict[str, str] | None:
        if not _SAFE_NAME.match(name):
            name = '"' + name.replace('"', '""') + '"'
        rows = self.run_sql(f"DESCRIBE SELECT * FROM {name}")
        return {str(r[0]).lower(): str(r[1]) for r in rows} if rows else None

    def _spec(self, model: str) -> Any:
        return self.session.models.get(model)

    def count_tokens(self, model: str, text: str) -> int:
        spec = self._spec(model)
        path = pulled_path(getattr(spec, "model", None))  # a known name's directory, if pulled
        tokenizer = _TOKENIZERS.get(path)
        if tokenizer is None:
            tokenizer = _TOKENIZERS[path] = load_tokenizer(path)
        return len(tokenizer.encode(text))

    def profile(self, model: str) -> BackendProfile:
        spec = self._spec(model)
        if spec is None:
            return BackendProfile.shipped("default")
        profile = find_profile(spec.backend, spec.model)
        options = getattr(spec, "options", {}) or {}
        changes: dict[str, Any] = {}
        if "block_size" in options:
            changes["block_size"] = int(options["block_size"])
        if "cache_capacity_tokens" in options:
            changes["kv_cache_tokens"] = int(options["cache_capacity_tokens"])
        placement = self._placement(model)
        if placement is not None:  # never from a calibrated file: the model's options decide
            changes["replicas"] = placement.replicas
            changes["routing"] = placement.routing
        return replace(profile, **changes) if changes else profile

    def placement(self, model: str) -> str | None:
        """Where `model`'s engines run, for EXPLAIN (None: one engine in this process)."""
        placement = self._placement(model)
        return placement.describe() if placement is not None and placement.replicated else None

    def _placement(self, model: str) -> Placement | None:
        spec = self._spec(model)
        if spec is None or not hasattr(spec, "options"):
            return None
        try:
            return placement_of(spec)
        except HaloError:
            return None  # refused when the model starts, with the reason

    def ask(self, call: LLMCall, rows: Sequence[Sequence[str]]) -> list[Any] | None:
        if self.stats is None or not rows:
            return None
        requests = [call.request(list(values)) for values in rows]
        responses = self.session.runtime.generate(call.model, requests, self.stats)
        answers: list[Any] = []
        for response in responses:
            if response.error is not None:
                answers.append(None)
                continue
            try:
                answers.append(call.parse_answer(response.text))
            except InvalidAnswer:
                answers.append(None)
        return answers

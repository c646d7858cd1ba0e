"""What the planner needs to know about the database (the session provides it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp


@dataclass
class BindCatalog:
    """What the builder needs to know about the database (provided by the session)."""

    table_columns: Callable[[exp.Table], dict[str, str] | None]
    """Column name -> type of a table or view, or None if it is not a plain catalog table."""
    check_sql: Callable[[str], None]
    """Bind `sql` in DuckDB without running it; raises a HaloError naming the problem."""
    resolve_model: Callable[[str], str]
    """Canonical name of a model, or raise BinderError if there is no such model."""
    default_model: str | None = None
    output_names: Callable[[str], list[str]] | None = None
    """Result column names of a query as DuckDB names them (binds it without running it).
    Qualification normalizes identifiers; these names keep what the user sees DuckDB's."""
    agents: Any = None
    """The session's agents and tools (halo_sql.agents.catalog.AgentCatalog), for AGENT(...)."""

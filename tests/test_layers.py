"""Layers import only downward: the planner (`halo_sql.logical`) may read the agents' plain
specs, never the other way round, so there is no import cycle between the two."""

from __future__ import annotations

import ast
from pathlib import Path

import halo_sql

PACKAGE = Path(halo_sql.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Every halo_sql module a file imports (at any depth of the file, TYPE_CHECKING too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("halo_sql"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("halo_sql")}
    return out


def test_the_planner_reads_only_the_agents_plain_specs() -> None:
    for path in sorted((PACKAGE / "logical").glob("*.py")):
        agents = {m for m in imports_of(path) if m.startswith("halo_sql.agents")}
        assert agents <= {"halo_sql.agents.spec"}, (path.name, agents)


def test_agent_specs_and_tools_do_not_import_the_planner() -> None:
    for name in ("__init__.py", "spec.py", "safety.py", "tools.py"):
        planner = {m for m in imports_of(PACKAGE / "agents" / name) if m.startswith("halo_sql.logical")}
        assert not planner, (name, planner)


def test_binding_agent_calls_goes_through_the_planning_scope_only() -> None:
    imported = imports_of(PACKAGE / "logical" / "agent_calls.py")
    assert "halo_sql.logical.builder" not in imported


def test_the_agents_package_does_not_import_the_executor() -> None:
    """Agents are specs, tools and their catalog; running them is the executor's (agent_loop)."""
    for path in sorted((PACKAGE / "agents").glob("*.py")):
        executor = {m for m in imports_of(path) if m.startswith("halo_sql.executor")}
        assert not executor, (path.name, executor)

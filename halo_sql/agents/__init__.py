"""Agents and tools: multi-step LLM agents called from SQL, planned and batched like any operator.

    CREATE TOOL orders_of AS SQL 'SELECT o_orderkey, o_totalprice FROM orders WHERE o_custkey = :key'
        WITH (parameters => '{"key": "integer"}');
    CREATE AGENT analyst WITH (instructions => 'Judge the customer.', tools => [orders_of],
        max_steps => 4, output => '{"risk": "string"}');
    SELECT c_custkey, risk, steps, error
    FROM AGENT('analyst', input => (SELECT c_custkey, c_comment FROM customer LIMIT 10));

Modules: `spec` (plain data: tool and agent definitions, answer shapes), `safety` (the read-only
check of SQL tools), `catalog` (CREATE/DROP/SHOW and persistence), `tools` (tool executors and
the shared tool-call cache), `loop` (the agent loop: one batched model call per step for every
running row). Binding AGENT(...), LATERAL AGENT(...) and AGENT_CALL(...) into plan nodes is the
planner's (`halo_sql.logical.agent_calls`): `spec` is below the planner, the rest above it.
This module stays light: importing it imports no executor code.
"""

from __future__ import annotations

from halo_sql.agents.spec import AgentSpec, ToolKind, ToolSpec
from halo_sql.agents.tools import register_tool_function, tool_function

__all__ = ["AgentSpec", "ToolKind", "ToolSpec", "register_tool_function", "tool_function"]

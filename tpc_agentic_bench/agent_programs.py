"""The agent workloads (W2A, W3A, W5A, W6A) as the asyncio tool loops a developer would write.

Each agent is plain Python data (`Agent`: instructions, SQL tools, a step bound, the JSON schema
of its answer), and each agent run is one coroutine (`run_agent`): render the prompt, await one
model reply constrained to the reply schema, and either finish or run the SQL tool it asked
for, append the result to the transcript and ask again. Every row's agent is its own task, every
query of the batch in flight at once; equal agent runs of different rows or queries run again
(nothing shared beyond the engine's prefix cache), and equal tool calls run again too.

The protocol is halo's (`halo_sql.executor.agent_loop`), written out here so that the two systems send
the same requests and their answers can be compared:

- the prompt: a static header (the agent's name and instructions, the reply format, one line per
  tool with its description and argument schema, the answer schema, the step bound), then
  `Input: <the row as JSON>`, the transcript so far, and `Reply <step> of <max>:`;
- the reply: one JSON object, `{"action": "<tool>", "arguments": {...}}` or
  `{"action": "final", "answer": ...}`, constrained by a JSON schema (`anyOf` the tool calls and
  the final answer; at the last step only the final answer);
- a tool result: the SQL's rows as a JSON list of objects (values JSON-encoded, dates and
  decimals as strings), at most 20 rows and 2,000 characters; an invalid reply costs a step and
  is told why.

`tests/test_bench_baselines.py` pins the headers and reply schemas against halo's agents as the
workloads' CREATE AGENT statements define them.

    >>> header = W2A_REVISER.header()
    >>> header.splitlines()[0][:40]
    "You are the agent 'w2a_reviser'. You are"
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from halo_sql.llm.base import OutputSpec
from tpc_agentic_bench.programs import (
    W2_QUESTIONS,
    W3_CHAIR,
    W3_LISTINGS,
    W5_ORDERS,
    Ask,
    Context,
    ask_reduce,
)
from tpc_agentic_bench.workloads import (
    _CUSTOMER_ORDERS_ABOUT,
    _CUSTOMER_ORDERS_SQL,
    _ORDER_LINES_ABOUT,
    _ORDER_LINES_SQL,
    _PART_SUPPLY_ABOUT,
    _PART_SUPPLY_SQL,
    _W2A_ANALYST,
    _W2A_CRITIC,
    _W2A_REVISER,
    _W3_JUDGES,
    _W5A_ANALYST,
    _W5A_VERDICTS,
    _W6_TOOLS,
    _W6A_REVIEWER,
    AGENT_MAX_TOKENS,
    AGENT_TEXT_CHARS,
    w3a_judge_instructions,
    w6a_tool_description,
)

FINAL = "final"
TOOL_MAX_ROWS = 20
"""Rows of a tool result the agent sees (it is told when there were more)."""
TOOL_MAX_CHARS = 2000
"""Longest tool result text the agent sees."""


# -- agents and tools, as plain data ----------------------------------------------------------------


def _object(fields: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A JSON schema of an object with exactly these required fields."""
    return {"type": "object", "properties": dict(fields), "required": list(fields),
            "additionalProperties": False}


@dataclass(frozen=True)
class SqlTool:
    """A parameterized SQL query the agent may call: `:name` parameters, their JSON types."""

    name: str
    sql: str
    parameters: Mapping[str, str]
    description: str

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema of the call's arguments."""
        return _object({name: {"type": kind} for name, kind in self.parameters.items()})

    async def call(self, database: duckdb.DuckDBPyConnection, arguments: Mapping[str, Any]) -> str:
        """The observation the agent reads: the rows as JSON, or `error: ...`."""
        sql = re.sub(r":([A-Za-z_]\w*)", r"$\1", self.sql)  # DuckDB's named parameters
        values = {k: v for k, v in arguments.items() if k in self.parameters}

        def fetch() -> tuple[list[str], list[tuple[Any, ...]]]:
            cursor = database.cursor()
            try:
                result = cursor.execute(sql, values or None)
                columns = [d[0] for d in result.description]
                return columns, result.fetchmany(TOOL_MAX_ROWS + 1)
            finally:
                cursor.close()

        try:
            columns, rows = await asyncio.to_thread(fetch)
        except duckdb.Error as exc:
            return "error: " + _clip(str(exc).splitlines()[0])
        shown = [dict(zip(columns, row, strict=True)) for row in rows[:TOOL_MAX_ROWS]]
        text = json.dumps(shown, default=str, ensure_ascii=False)
        if len(rows) > TOOL_MAX_ROWS:
            text += f" (first {TOOL_MAX_ROWS} rows; more not shown)"
        return _clip(text)


def _clip(text: str) -> str:
    if len(text) <= TOOL_MAX_CHARS:
        return text
    return text[: TOOL_MAX_CHARS - 15] + " ... (truncated)"


@dataclass(frozen=True)
class Agent:
    """An agent: instructions, tools, at most `max_steps` replies, the schema of its answer."""

    name: str
    instructions: str
    answer: dict[str, Any]
    """The JSON schema of the final answer."""
    tools: tuple[SqlTool, ...] = ()
    max_steps: int = 4
    max_tokens: int = AGENT_MAX_TOKENS
    model: str = "default"

    def header(self) -> str:
        """The static start of every prompt of this agent (one shared prefix)."""
        lines = [
            f"You are the agent {self.name!r}. {self.instructions.strip()}",
            "",
            "You work in steps. Each reply is one JSON object:",
        ]
        if self.tools:
            lines.append('  {"action": "<tool name>", "arguments": {...}} to call a tool; '
                         "you see its result at the next step, or")
        lines.append('  {"action": "final", "answer": <answer>} to finish.')
        if self.tools:
            lines.append("Tools:")
            lines += [f"- {tool.name}: {tool.description} Arguments: {json.dumps(tool.schema)}"
                      for tool in self.tools]
        lines.append(f"Answer schema: {json.dumps(self.answer)}")
        lines.append(f"You may reply at most {self.max_steps} times.")
        return "\n".join(lines) + "\n"

    def prompt(self, input_json: str, transcript: Sequence[str], step: int) -> str:
        last = step >= self.max_steps
        tail = f"Reply {step} of {self.max_steps}" + (
            ": the last one, give your final answer:" if last else ":")
        return (f"{self.header()}\nInput: {input_json}\n"
                + "".join(entry + "\n" for entry in transcript) + tail)

    def reply_schema(self, *, last: bool) -> dict[str, Any]:
        """A tool call (with that tool's arguments) or the final answer; only the final answer
        at the last step."""
        final = {"type": "object",
                 "properties": {"action": {"const": FINAL}, "answer": self.answer},
                 "required": ["action", "answer"], "additionalProperties": False}
        if last or not self.tools:
            return final
        calls = [{"type": "object",
                  "properties": {"action": {"const": tool.name}, "arguments": tool.schema},
                  "required": ["action", "arguments"], "additionalProperties": False}
                 for tool in self.tools]
        return {"anyOf": [*calls, final]}


# -- the loop ---------------------------------------------------------------------------------------


class InvalidReply(ValueError):
    """A reply that is neither a valid tool call nor a valid final answer (the agent is told)."""


@dataclass(frozen=True)
class Reply:
    tool: SqlTool | None
    arguments: dict[str, Any] = field(default_factory=dict)
    answer: Any = None


def parse_reply(agent: Agent, text: str) -> Reply:
    """The tool call or final answer in a reply; InvalidReply says what is wrong with it."""
    import jsonschema

    value = _json_object(text)
    action = value.get("action")
    if action == FINAL:
        if "answer" not in value:
            raise InvalidReply('a final reply needs "answer"')
        try:
            jsonschema.validate(value["answer"], agent.answer)
        except jsonschema.ValidationError as exc:
            raise InvalidReply(f"the answer does not match its schema: {exc.message}") from None
        return Reply(None, answer=value["answer"])
    tools = {tool.name: tool for tool in agent.tools}
    if not isinstance(action, str) or action not in tools:
        known = ", ".join([*sorted(tools), FINAL])
        raise InvalidReply(f'"action" must be one of {known}; got {json.dumps(action)}')
    tool, arguments = tools[action], value.get("arguments", {})
    problem = _argument_problem(tool, arguments)
    if problem is not None:
        raise InvalidReply(problem)
    return Reply(tool, arguments)


def _argument_problem(tool: SqlTool, arguments: Any) -> str | None:
    import jsonschema

    if not isinstance(arguments, dict):
        return f"arguments of {tool.name} must be a JSON object"
    try:
        jsonschema.validate(arguments, tool.schema)
    except jsonschema.ValidationError as exc:
        return f"arguments of {tool.name} do not match its parameters: {exc.message}"
    return None


def _json_object(text: str) -> dict[str, Any]:
    stripped = text.strip()
    try:
        value = json.loads(stripped, strict=False)
    except json.JSONDecodeError as exc:
        # A model without structured outputs wraps the object in prose: take the object.
        start, end = stripped.find("{"), stripped.rfind("}")
        try:
            value = json.loads(stripped[start : end + 1], strict=False) if 0 <= start < end else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            raise InvalidReply(f"the reply is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise InvalidReply('the reply must be a JSON object like {"action": ...}')
    return value


@dataclass(frozen=True)
class AgentRun:
    """The outcome of one agent run: its answer (None when it failed), replies, tool calls."""

    answer: Any
    steps: int
    tool_calls: int
    error: str | None = None

    def get(self, name: str) -> Any:
        """One property of an object answer (None when the run failed)."""
        return self.answer.get(name) if isinstance(self.answer, dict) else None


@dataclass(frozen=True)
class Turn:
    """What one model reply of an agent run leads to: the end of the run (`done`: an answer or
    an error), a tool call to run, or (an invalid reply) a transcript note and another try."""

    done: bool = False
    answer: Any = None
    error: str | None = None
    tool: SqlTool | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


async def take_turn(
    ask: Ask, agent: Agent, input_json: str, transcript: Sequence[str], step: int
) -> Turn:
    """Reply number `step` of an agent run, read."""
    last = step >= agent.max_steps
    reply_text = await ask(agent.model, agent.prompt(input_json, transcript, step),
                           OutputSpec.json(agent.reply_schema(last=last)), agent.max_tokens)
    if reply_text.text is None:
        return Turn(done=True, error=f"model error at step {step}: {reply_text.error}")
    try:
        reply = parse_reply(agent, reply_text.text)
    except InvalidReply as exc:
        if last:
            return Turn(done=True, error=f"invalid reply at step {step} of {agent.max_steps}: {exc}")
        return Turn(note=f"Step {step}: your reply was not valid ({exc}). Reply with one JSON "
                         "object as described.")
    if reply.tool is None:
        return Turn(done=True, answer=reply.answer)
    if last:
        return Turn(done=True, error=f"max_steps={agent.max_steps} reached without a final "
                                     f"answer (step {step} called {reply.tool.name})")
    return Turn(tool=reply.tool, arguments=reply.arguments)


def tool_entry(step: int, tool: SqlTool, arguments: Mapping[str, Any], observation: str) -> str:
    """The transcript entry of a tool call and its result."""
    shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
    return f"Step {step}: called {tool.name} with {shown}\nResult: {observation}"


def input_json(row: Mapping[str, Any]) -> str:
    """An input row as the agent sees it."""
    return json.dumps(dict(row), default=str, ensure_ascii=False)


async def run_agent(
    ask: Ask, database: duckdb.DuckDBPyConnection, agent: Agent, row: Mapping[str, Any]
) -> AgentRun:
    """One agent over one input row: reply, run the tool it asks for, reply again, until it
    answers or has used its replies. Failures end in `error`, never in an exception."""
    given = input_json(row)
    transcript: list[str] = []
    calls = 0
    for step in range(1, agent.max_steps + 1):
        turn = await take_turn(ask, agent, given, transcript, step)
        if turn.done:
            return AgentRun(turn.answer, step, calls, turn.error)
        if turn.tool is None:
            assert turn.note is not None
            transcript.append(turn.note)
            continue
        observation = await turn.tool.call(database, turn.arguments)
        calls += 1
        transcript.append(tool_entry(step, turn.tool, turn.arguments, observation))
    raise AssertionError("unreachable: the last reply always ends the run")


AgentRunner = Callable[[Agent, Mapping[str, Any]], Awaitable[AgentRun]]
"""How a workload runs one agent over one row: `run_agent` here, a LangGraph tool loop in
`graphs.py`."""


def loop_runner(ctx: Context) -> AgentRunner:
    """Agents run as plain asyncio loops on the query's model and database."""

    async def run(agent: Agent, row: Mapping[str, Any]) -> AgentRun:
        return await run_agent(ctx.ask, ctx.database, agent, row)

    return run


# -- the workloads' agents --------------------------------------------------------------------------

_TEXT = {"type": "string", "maxLength": AGENT_TEXT_CHARS}


def _labels(labels: Sequence[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(labels)}


def _order_lines(name: str) -> SqlTool:
    return SqlTool(name, _ORDER_LINES_SQL, {"orderkey": "integer"}, _ORDER_LINES_ABOUT)


W2A_ANALYST = Agent("w2a_analyst", _W2A_ANALYST, _TEXT, (_order_lines("w2a_order_lines"),),
                    max_steps=3)
W2A_CRITIC = Agent("w2a_critic", _W2A_CRITIC,
                   _object({"ok": {"type": "boolean"}, "critique": _TEXT}),
                   (_order_lines("w2a_order_lines"),), max_steps=2)
W2A_REVISER = Agent("w2a_reviser", _W2A_REVISER, _TEXT, max_steps=1)

_PART_SUPPLY = SqlTool("w3a_part_supply", _PART_SUPPLY_SQL, {"partkey": "integer"},
                       _PART_SUPPLY_ABOUT)
W3A_JUDGES = tuple(
    (name, Agent(f"w3a_{name}_judge", w3a_judge_instructions(text), _labels(["accept", "reject"]),
                 (_PART_SUPPLY,), max_steps=3))
    for name, text in _W3_JUDGES
)

W5A_ANALYST = Agent(
    "w5a_delay_analyst", _W5A_ANALYST, _labels(_W5A_VERDICTS),
    (_order_lines("w5a_order_lines"),
     SqlTool("w5a_customer_orders", _CUSTOMER_ORDERS_SQL, {"custkey": "integer"},
             _CUSTOMER_ORDERS_ABOUT)),
    max_steps=3,
)

W6A_REVIEWER = Agent(
    "w6a_account_reviewer", _W6A_REVIEWER, _TEXT,
    tuple(SqlTool(f"w6a_{name}", sql.replace("{c}", ":custkey"), {"custkey": "integer"},
                  w6a_tool_description(name)) for name, sql in _W6_TOOLS),
    max_steps=4,
)

AGENTS: dict[str, tuple[Agent, ...]] = {
    "W2A": (W2A_ANALYST, W2A_CRITIC, W2A_REVISER),
    "W3A": tuple(agent for _, agent in W3A_JUDGES),
    "W5A": (W5A_ANALYST,),
    "W6A": (W6A_REVIEWER,),
}
"""The agents each agent workload defines (its CREATE AGENT statements), by workload key."""


# -- the workloads ----------------------------------------------------------------------------------


async def w2a_rows(run: AgentRunner, ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per order: the analyst drafts, the critic reviews the draft, and where the critic did not
    say ok the reviser rewrites it; each order's chain is its own task."""

    async def order(key: int, question: str) -> dict[str, Any]:
        row: dict[str, Any] = {"o_orderkey": key, "question": question}
        draft = (await run(W2A_ANALYST, row)).answer
        row["draft"] = draft
        critic = await run(W2A_CRITIC, row)
        ok, critique = critic.get("ok"), critic.get("critique")
        final = draft
        if not ok:  # NOT coalesce(ok, false)
            revision = (await run(W2A_REVISER, {**row, "ok": ok, "critique": critique})).answer
            final = draft if revision is None else revision
        return {"o_orderkey": key, "draft": draft, "ok": ok, "critique": critique,
                "final": final}

    questions = await ctx.rows(W2_QUESTIONS, params["custkey"])
    return list(await asyncio.gather(*(order(key, q) for key, q in questions)))


async def w3a_rows(run: AgentRunner, ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per listing: the three judge agents at once, then the chair over their votes."""

    async def listing(key: int, item: str) -> dict[str, Any]:
        row = {"p_partkey": key, "item": item}
        runs = await asyncio.gather(*(run(agent, row) for _, agent in W3A_JUDGES))
        votes = [None if r.answer is None else f"{name}: {r.answer}"
                 for (name, _), r in zip(W3A_JUDGES, runs, strict=True)]
        return {"p_partkey": key, "decision": await ask_reduce(ctx.ask, W3_CHAIR, votes)}

    listings = await ctx.rows(W3_LISTINGS, params["brand"], params["size"])
    return list(await asyncio.gather(*(listing(key, item) for key, item in listings)))


async def w5a_rows(run: AgentRunner, ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The analyst agent over the top-3 orders by price of a (nation, month); shape 0 counts the
    verdicts, shape 1 lists them with the customer's name."""
    first_day = f"{params['month']}-01"
    orders = await ctx.rows(
        f"SELECT o_orderkey, o_custkey, o_orderpriority, o_comment, c_name {W5_ORDERS} "
        "ORDER BY o_totalprice DESC, o_orderkey LIMIT 3", params["nation"], first_day, first_day)
    runs = await asyncio.gather(*(
        run(W5A_ANALYST, {"o_orderkey": key, "o_custkey": cust, "o_orderpriority": priority,
                          "o_comment": note})
        for key, cust, priority, note, _ in orders))
    if params["shape"] == 1:
        return [{"o_orderkey": order[0], "c_name": order[4], "verdict": r.answer, "steps": r.steps}
                for order, r in zip(orders, runs, strict=True)]
    groups: dict[str | None, list[int]] = {}
    for order, r in zip(orders, runs, strict=True):
        groups.setdefault(r.answer, []).append(order[0])
    ordered = sorted(groups, key=lambda verdict: (verdict is None, verdict or ""))  # NULLS LAST
    return [{"verdict": verdict, "orders": len(groups[verdict]),
             "first_order": min(groups[verdict])} for verdict in ordered]


async def w6a_rows(run: AgentRunner, ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reviewer agent over one customer, with W6's six sub-queries as its SQL tools."""
    customers = await ctx.rows("SELECT c_custkey, c_name, c_mktsegment FROM customer "
                               "WHERE c_custkey = ?", params["custkey"])
    out = []
    for key, name, segment in customers:
        r = await run(W6A_REVIEWER, {"c_custkey": key, "c_name": name, "c_mktsegment": segment})
        out.append({"c_custkey": key, "review": r.answer, "steps": r.steps,
                    "calls": r.tool_calls})
    return out


AgentWorkload = Callable[[AgentRunner, Context, Mapping[str, Any]],
                         Awaitable[list[dict[str, Any]]]]

AGENT_WORKLOADS: dict[str, AgentWorkload] = {
    "W2A": w2a_rows, "W3A": w3a_rows, "W5A": w5a_rows, "W6A": w6a_rows,
}
"""Each agent workload's query, given how to run an agent."""


def _program(workload: AgentWorkload) -> Callable[[Context, Mapping[str, Any]],
                                                  Awaitable[list[dict[str, Any]]]]:
    async def program(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await workload(loop_runner(ctx), ctx, params)

    return program


AGENT_PROGRAMS = {key: _program(workload) for key, workload in AGENT_WORKLOADS.items()}
"""The agent workloads as plain asyncio programs (agents as `run_agent` loops), by key."""

"""The agent loop: every running row advances one step per batched model call.

An `AgentLoop` operator reads all its input rows, then runs one agent per distinct input:

    step 1: one runtime call with the prompts of all rows          (rows that answer drop out)
            tool calls of the step collected -> SQL calls run once each, PYTHON/HTTP start
    step 2: one runtime call for the rows whose tool results are in
    ...     until every row has answered, failed, or used `max_steps` replies

Each reply is constrained by a JSON schema: `{"action": "<tool>", "arguments": {...}}` with the
tool's own argument schema, or `{"action": "final", "answer": <the agent's output schema>}`; the
last allowed reply may only be final. So a backend with structured outputs always produces a
reply that parses; one that does not (or a scripted test backend) gets its error back as an
observation and may try again within `max_steps`.

Overlap: PYTHON and HTTP tools run on their own threads. After a step the loop waits for the
step's tool calls for about as long as a model step takes; rows whose results are in by then
advance in the next batched call while slower calls keep running, and join a later step when
they finish. With fast tools (SQL, cached calls) this is plain lockstep: one call per step.

A row's agent never takes the statement down: model errors, invalid replies at the last step,
tool errors and timeouts end in the row's `error` column or as observations. Only cancellation
stops the statement.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from halo_sql.agents.spec import TOOL_CALL_TYPE, AgentSpec, AnswerShape, ToolSpec
from halo_sql.agents.tools import ToolCall, ToolCallCache, ToolRunner, argument_problem
from halo_sql.errors import HaloError, QueryCancelled
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.llm.base import DecodingParams, LLMRequest, LLMResponse, OutputSpec
from halo_sql.logical.llm_call import to_arrow_value

if TYPE_CHECKING:
    from halo_sql.executor.engine import ExecutionContext
    from halo_sql.physical.operators import AgentLoop

FINAL = "final"
MIN_GATHER_SECONDS = 0.02
"""Shortest wait for a step's tool calls before the rows that have results move on."""


# -- replies ---------------------------------------------------------------------------------------
class InvalidReply(ValueError):
    """A model reply that is not a valid tool call or final answer (the agent is told why)."""


@dataclass(frozen=True)
class Reply:
    """A parsed model reply: a tool call, or the final answer."""

    tool: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    answer: Any = None

    @property
    def is_final(self) -> bool:
        return self.tool is None


def reply_schema(
    tools: Sequence[ToolSpec], answer: dict[str, Any], *, final_only: bool = False
) -> dict[str, Any]:
    """The JSON schema of one reply; with `final_only` only the final answer is allowed.

        >>> reply_schema([], {"type": "boolean"})["properties"]["action"]
        {'const': 'final'}
    """
    final = {
        "type": "object",
        "properties": {"action": {"const": FINAL}, "answer": answer},
        "required": ["action", "answer"],
        "additionalProperties": False,
    }
    if final_only or not tools:
        return final
    calls = [
        {
            "type": "object",
            "properties": {"action": {"const": tool.name}, "arguments": tool.parameter_schema},
            "required": ["action", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return {"anyOf": [*calls, final]}


def parse_reply(text: str, tools: Mapping[str, ToolSpec], answer: dict[str, Any]) -> Reply:
    """Read a model reply; raises InvalidReply with a message the agent can act on.

        >>> parse_reply('{"action": "final", "answer": true}', {}, {"type": "boolean"})
        Reply(tool=None, arguments={}, answer=True)
    """
    import jsonschema

    value = _json_object(text)
    action = value.get("action")
    if action == FINAL:
        if "answer" not in value:
            raise InvalidReply('a final reply needs "answer"')
        try:
            jsonschema.validate(value["answer"], answer)
        except jsonschema.ValidationError as exc:
            raise InvalidReply(f"the answer does not match its schema: {exc.message}") from None
        return Reply(None, answer=value["answer"])
    if not isinstance(action, str) or action not in tools:
        known = ", ".join([*sorted(tools), FINAL])
        raise InvalidReply(f'"action" must be one of {known}; got {json.dumps(action)}')
    arguments = value.get("arguments", {})
    problem = argument_problem(tools[action], arguments)
    if problem is not None:
        raise InvalidReply(problem)
    return Reply(action, arguments=arguments)


def _json_object(text: str) -> dict[str, Any]:
    stripped = text.strip()
    # strict=False: raw control characters inside strings (a tab a grammar let through) are
    # not worth failing a step over.
    try:
        value = json.loads(stripped, strict=False)
    except json.JSONDecodeError as exc:
        # Models without structured outputs wrap JSON in prose or code fences: take the object.
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


# -- prompts -----------------------------------------------------------------------------------------
def agent_header(agent: AgentSpec, tools: Sequence[ToolSpec]) -> str:
    """The static start of every prompt of an agent (shared by all rows and steps: one prefix)."""
    lines = [
        f"You are the agent {agent.name!r}. {agent.instructions.strip()}",
        "",
        "You work in steps. Each reply is one JSON object:",
    ]
    if tools:
        lines.append('  {"action": "<tool name>", "arguments": {...}} to call a tool; '
                     "you see its result at the next step, or")
    lines.append('  {"action": "final", "answer": <answer>} to finish.')
    if tools:
        lines.append("Tools:")
        for tool in tools:
            about = f" {tool.description.strip()}" if tool.description.strip() else ""
            lines.append(f"- {tool.name}:{about} Arguments: {tool.parameters}")
    lines.append(f"Answer schema: {agent.output}")
    lines.append(f"You may reply at most {agent.max_steps} times.")
    return "\n".join(lines) + "\n"


def render_prompt(header: str, input_json: str, transcript: Sequence[str], step: int, last: int) -> str:
    """Static header first, the row's input next, then its steps so far: each step's prompt
    extends the previous one, so the prefix cache holds the whole conversation."""
    tail = f"Reply {step} of {last}" + (": the last one, give your final answer:" if step >= last else ":")
    return f"{header}\nInput: {input_json}\n" + "".join(t + "\n" for t in transcript) + tail


# -- the loop ------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """The agent run of one distinct input row."""

    input_json: str
    transcript: list[str] = field(default_factory=list)
    steps: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    pending: tuple[ToolCall, str, str] | None = None
    """The tool call in flight: (call, tool name, JSON arguments)."""
    answer: Any = None
    error: str | None = None
    done: bool = False

    def fail(self, message: str) -> None:
        self.error, self.done = message, True


_BATCH_CACHES: weakref.WeakKeyDictionary[Any, ToolCallCache] = weakref.WeakKeyDictionary()
_BATCH_CACHES_LOCK = threading.Lock()


def tool_cache(ctx: ExecutionContext) -> ToolCallCache:
    """The statement's tool-call cache; in a batch, one cache for all its queries."""
    if ctx.shared is not None:
        with _BATCH_CACHES_LOCK:
            cache = _BATCH_CACHES.get(ctx.shared)
            if cache is None:
                cache = _BATCH_CACHES[ctx.shared] = ToolCallCache()
            return cache
    if ctx.tool_cache is None:
        ctx.tool_cache = ToolCallCache()
    return ctx.tool_cache  # type: ignore[no-any-return]


def run_agent_loop(
    op: AgentLoop, batches: Sequence[pa.RecordBatch], ctx: ExecutionContext
) -> Iterator[pa.RecordBatch]:
    """The operator's output: each input row with its answer columns, steps, tool_calls, error."""
    table = pa.Table.from_batches(list(batches))
    inputs = table.select(list(op.input_columns)).to_pylist()
    keys = [json.dumps(row, default=str, ensure_ascii=False) for row in inputs]
    runs: dict[str, _Run] = {}
    for key in keys:
        runs.setdefault(key, _Run(key))  # equal inputs run one agent: same prompts, same calls
    cache = tool_cache(ctx)
    runner = ToolRunner(cache, ctx.connection)
    cache.enter()
    try:
        _Driver(op, ctx.runtime, ctx.stats, runner).run(list(runs.values()))
    finally:
        runner.abandon()  # after a cancellation: no other query may wait for calls never run
        cache.leave()
    out = _output_table(table, keys, runs, op.agent.shape)
    if out.num_rows == 0:
        yield pa.RecordBatch.from_pylist([], schema=out.schema)
        return
    yield from out.to_batches(max_chunksize=op.batch_rows)


class _Driver:
    def __init__(
        self, op: AgentLoop, runtime: LLMRuntime, stats: StatementStats, runner: ToolRunner
    ) -> None:
        self.agent = op.agent
        self.tools = {tool.name: tool for tool in op.tools}
        self.runtime = runtime
        self.stats = stats
        self.runner = runner
        self.header = agent_header(op.agent, op.tools)
        answer = op.agent.output_schema
        self.answer_schema = answer
        self.outputs = (
            OutputSpec.json(reply_schema(op.tools, answer)),
            OutputSpec.json(reply_schema(op.tools, answer, final_only=True)),
        )
        agent = op.agent
        self.params = DecodingParams(agent.max_tokens, agent.temperature, agent.seed)
        self.model = agent.model or ""
        self.model_seconds = 0.0

    def run(self, runs: list[_Run]) -> None:
        ready = runs
        waiting: list[_Run] = []
        while ready or waiting:
            if self.stats.cancel.is_set():
                raise QueryCancelled("statement cancelled during an agent step")
            again: list[_Run] = []
            if ready:
                self._step(ready)
                self.runner.run_sql()  # the step's SQL calls, each distinct one once
                waiting += [run for run in ready if run.pending is not None]
                # Rows told that their reply was invalid try again at the next step.
                again = [run for run in ready if not run.done and run.pending is None]
                self._sync_counters()
            arrived, waiting = self._gather(waiting, block=not again)
            ready = again + arrived

    def _step(self, runs: list[_Run]) -> None:
        last = self.agent.max_steps
        requests = [
            LLMRequest(
                render_prompt(self.header, run.input_json, run.transcript, run.steps + 1, last),
                self.outputs[run.steps + 1 >= last],
                self.params,
            )
            for run in runs
        ]
        began = time.monotonic()
        try:
            responses = self.runtime.generate(self.model, requests, self.stats)
        except QueryCancelled:
            raise
        except HaloError as exc:  # the backend failed on the whole batch: each row says so
            for run in runs:
                run.steps += 1
                run.fail(f"model error at step {run.steps}: {exc}")
            return
        finally:
            self.model_seconds = time.monotonic() - began
        self.stats.agent_steps += 1
        for run, response in zip(runs, responses, strict=True):
            run.steps += 1
            self._apply(run, response)

    def _apply(self, run: _Run, response: LLMResponse) -> None:
        step, last = run.steps, self.agent.max_steps
        if response.error is not None:
            run.fail(f"model error at step {step}: {response.error}")
            return
        try:
            reply = parse_reply(response.text, self.tools, self.answer_schema)
        except InvalidReply as exc:
            self.stats.invalid_answers += 1
            if step >= last:
                run.fail(f"invalid reply at step {step} of {last}: {exc}")
            else:
                run.transcript.append(
                    f"Step {step}: your reply was not valid ({exc}). Reply with one JSON object "
                    "as described."
                )
            return
        if reply.is_final:
            run.answer, run.done = reply.answer, True
            return
        if step >= last:
            run.fail(f"max_steps={last} reached without a final answer (step {step} called "
                     f"{reply.tool})")
            return
        assert reply.tool is not None
        arguments = json.dumps(reply.arguments, sort_keys=True, ensure_ascii=False, default=str)
        call = self.runner.start(self.tools[reply.tool], reply.arguments)
        run.pending = (call, reply.tool, arguments)

    def _gather(self, waiting: list[_Run], *, block: bool) -> tuple[list[_Run], list[_Run]]:
        """Rows whose tool results are in (with the results appended), and rows still waiting.

        Waits for all of them, or for about one model step's time once some are in; without
        `block` (other rows are ready to step anyway) it takes what is in and does not wait."""
        if not waiting:
            return [], []
        window = max(MIN_GATHER_SECONDS, self.model_seconds) if block else 0.0
        began = time.monotonic()
        while True:
            now = time.monotonic()
            done = [run for run in waiting if run.pending and run.pending[0].result(now) is not None]
            if len(done) == len(waiting) or (done and now - began >= window) or not block:
                break
            if self.stats.cancel.is_set():
                raise QueryCancelled("statement cancelled while agent tools ran")
            running = [run.pending[0] for run in waiting if run.pending and run not in done]
            wake = [0.25] + [d - now for call in running if (d := call.deadline()) is not None]
            if done:
                wake.append(began + window - now)
            open_futures = [call.future for call in running]
            wait_futures(open_futures, timeout=max(0.001, min(wake)), return_when=FIRST_COMPLETED)
        now = time.monotonic()
        for run in done:
            assert run.pending is not None
            call, tool, arguments = run.pending
            observation = call.result(now)
            assert observation is not None
            run.pending = None
            run.calls.append(
                {"step": run.steps, "tool": tool, "arguments": arguments,
                 "result": observation.text, "ok": observation.ok}
            )
            run.transcript.append(
                f"Step {run.steps}: called {tool} with {arguments}\nResult: {observation.text}"
            )
            self.stats.tool_errors += not observation.ok
        return done, [run for run in waiting if run not in done]

    def _sync_counters(self) -> None:
        self.stats.tool_calls += self.runner.executed
        self.stats.deduplicated_tool_calls += self.runner.deduplicated
        self.runner.executed = self.runner.deduplicated = 0


def _output_table(
    table: pa.Table, keys: list[str], runs: Mapping[str, _Run], shape: AnswerShape
) -> pa.Table:
    indices: list[int] = []
    columns: list[list[Any]] = [[] for _ in shape.columns]
    steps: list[int] = []
    calls: list[list[dict[str, Any]]] = []
    errors: list[str | None] = []
    for index, key in enumerate(keys):
        run = runs[key]
        items: list[Any] = [run.answer]
        if shape.many:
            items = list(run.answer) if isinstance(run.answer, list) and run.answer else [None]
        for item in items:
            indices.append(index)
            for position, ((name, _), arrow_type) in enumerate(
                zip(shape.columns, shape.arrow_types, strict=True)
            ):
                value = item.get(name) if shape.per_property and isinstance(item, dict) else item
                if shape.per_property and not isinstance(item, dict):
                    value = None
                columns[position].append(to_arrow_value(value, arrow_type))
            steps.append(run.steps)
            calls.append(run.calls)
            errors.append(run.error)
    out = table.take(pa.array(indices, type=pa.int64()))
    for (name, _), arrow_type, values in zip(shape.columns, shape.arrow_types, columns, strict=True):
        out = out.append_column(pa.field(name, arrow_type), pa.array(values, type=arrow_type))
    out = out.append_column(pa.field("steps", pa.int64()), pa.array(steps, type=pa.int64()))
    out = out.append_column(
        pa.field("tool_calls", pa.list_(TOOL_CALL_TYPE)), pa.array(calls, type=pa.list_(TOOL_CALL_TYPE))
    )
    return out.append_column(pa.field("error", pa.string()), pa.array(errors, type=pa.string()))

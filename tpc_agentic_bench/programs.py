"""The workloads as the plain Python programs an application developer would write instead.

No SQL engine for the LLM work: DuckDB fetches each query's data with plain SQL over the same
TPC-H database, then every row's workflow is an asyncio task awaiting the model, and all queries
of a batch are in flight at once. Nothing is deduplicated or shared beyond what the serving
engine does by itself (its prefix cache). The systems `vllm-async` (`AsyncLLM` in this process)
and `langgraph` (`graphs.py`, the same steps as LangGraph graphs over an OpenAI-compatible
server) run these definitions; `bound.py` runs them once with a request memo to find the
requests a workload logically needs.

Prompts are the workload's templates with each value substituted in place (values as DuckDB
renders them as VARCHAR), nothing added: a constrained step (yes/no, labels, JSON schema) gets its
constraint from the engine's structured outputs, as halo's do. So where halo neither shares nor
skips work the two systems send token-identical requests and their answers can be compared.
An LLM_AGG step sends the reduce prompt halo builds (`halo_sql.executor.llm_eval._items_prompt`,
items sorted as halo sorts them), in one request: the groups here are small.

    >>> render("Question: {question} Answer: {answer}", {"question": "Late?", "answer": "No."})
    'Question: Late? Answer: No.'
    >>> Step("Is it late? {note}", OutputSpec.boolean()).prompt({"note": "It came a week late."})
    'Is it late? It came a week late.'

Every program is written against one small interface, `Ask`: `await ask(model, prompt, output,
max_tokens)` returns the answer text and its token counts. `clients.py` adapts it to vLLM's
`AsyncLLM`, to an OpenAI-compatible server and to halo's synchronous backends (the sim).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from halo_sql.llm.base import OutputKind, OutputSpec
from tpc_agentic_bench.workloads import (
    _PROFILE_SCHEMA,
    _W1_ROLE,
    _W2_ROLE,
    _W3_JUDGES,
    _W5_ROLE,
    _W6_TOOLS,
    _W7_FROM,
    _W7_PROBLEM,
    _W7_SUMMARY,
    _W7_TO,
    _W7_TONE,
    _W8_LEVELS,
    _W8_MATCH,
    _W8_URGENCY,
    LARGE_MODEL,
    SMALL_MODEL,
    Workload,
)

# -- the interface every program is written against ----------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One model answer and what it cost. `text` is None when the request failed."""

    text: str | None
    prompt_tokens: int = 0
    cached_prompt_tokens: int | None = 0
    """None where the serving side does not report it (never guessed as 0)."""
    output_tokens: int = 0
    error: str | None = None


class Ask(Protocol):
    """`await ask(model, prompt, output, max_tokens)`: one request to the named model."""

    def __call__(
        self, model: str, prompt: str, output: OutputSpec, max_tokens: int
    ) -> Awaitable[Answer]: ...


class Tally:
    """An Ask that counts what one query asked for (requests and tokens), then forwards."""

    def __init__(self, ask: Ask) -> None:
        self._ask = ask
        self.requests = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.cached_prompt_tokens: int | None = 0
        self.output_tokens = 0

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        answer = await self._ask(model, prompt, output, max_tokens)
        self.requests += 1
        self.failed += answer.text is None
        self.prompt_tokens += answer.prompt_tokens
        self.output_tokens += answer.output_tokens
        if answer.cached_prompt_tokens is None or self.cached_prompt_tokens is None:
            self.cached_prompt_tokens = None  # one unknown makes the total unknown
        else:
            self.cached_prompt_tokens += answer.cached_prompt_tokens
        return answer

    def stats(self) -> dict[str, Any]:
        cached = self.cached_prompt_tokens
        return {
            "llm_requests": self.requests,
            "backend_calls": self.requests,  # every request is its own engine request
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": cached,
            "computed_prompt_tokens": None if cached is None else self.prompt_tokens - cached,
            "output_tokens": self.output_tokens,
            "failed_requests": self.failed,
        }


# -- prompts and answers, as the program writes them ---------------------------------------------

_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with each `{name}` (or qualified `{alias.name}`) replaced by its value, in
    place (one pass: braces inside values stay as they are)."""
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def parse(output: OutputSpec, text: str) -> Any:
    """The value of an answer, or None when it breaks the output type (as halo reads it)."""
    answer = text.strip()
    if output.kind is OutputKind.TEXT:
        return answer
    if output.kind is OutputKind.BOOLEAN:
        word = answer.lower().strip(".!\"' ")
        if word.startswith("yes") or word == "true":
            return True
        if word.startswith("no") or word == "false":
            return False
        return None
    if output.kind is OutputKind.CHOICE:
        folded = answer.lower().strip(".!\"' ")
        return next((x for x in output.labels if answer == x or folded == x.lower()), None)
    import jsonschema

    try:
        value = json.loads(answer)
        jsonschema.validate(value, output.schema or {})
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None
    properties = (output.schema or {}).get("properties")
    if isinstance(value, dict) and properties:  # a record with exactly the schema's fields
        return {name: value.get(name) for name in properties}
    return value


_render_lock = threading.Lock()
_render_con: duckdb.DuckDBPyConnection | None = None


def as_varchar(value: Any) -> str | None:
    """A value as DuckDB renders it as VARCHAR (how SQL passes it into a template), e.g. a
    record as `{'interest': parts, 'risk': low}`."""
    global _render_con
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    with _render_lock:
        if _render_con is None:
            _render_con = duckdb.connect()
        rows = _render_con.execute("SELECT CAST($v AS VARCHAR)", {"v": value}).fetchall()
    return None if not rows or rows[0][0] is None else str(rows[0][0])


@dataclass(frozen=True)
class Step:
    """One LLM step of a workflow: a template, its output constraint, a token budget, a model."""

    template: str
    output: OutputSpec = field(default_factory=OutputSpec.text)
    max_tokens: int = 64
    model: str = "default"

    def prompt(self, values: Mapping[str, str]) -> str:
        return render(self.template, values)


async def ask_step(ask: Ask, step: Step, values: Mapping[str, Any]) -> Any:
    """The step's value for one row; a NULL input gives NULL without a request (as in SQL)."""
    if any(v is None for v in values.values()):
        return None
    answer = await ask(step.model, step.prompt({k: as_varchar(v) or "" for k, v in values.items()}),
                       step.output, step.max_tokens)
    return None if answer.text is None else parse(step.output, answer.text)


@dataclass(frozen=True)
class Reduce:
    """An LLM_AGG step: one answer from a list of items."""

    instruction: str
    max_tokens: int = 128
    model: str = "default"

    def prompt(self, items: Sequence[str]) -> str:
        lines = "\n".join(f"- {item}" for item in items)
        return f"{self.instruction.rstrip()}\n\nItems:\n{lines}\nAnswer:"


async def ask_reduce(ask: Ask, step: Reduce, items: Sequence[str | None]) -> str | None:
    """The reduce answer over the non-NULL items, in sorted order (halo aggregates
    `LIST(x ORDER BY x)` so that the answer does not depend on row order); None without items."""
    kept = sorted(item for item in items if item is not None)
    if not kept:
        return None
    answer = await ask(step.model, step.prompt(kept), OutputSpec.text(), step.max_tokens)
    return None if answer.text is None else answer.text.strip()


async def first_k(
    rows: Sequence[Any], keep: Callable[[Any], Awaitable[bool | None]], k: int, *, eager: bool
) -> list[Any]:
    """The first `k` rows (in order) that `keep` accepts. `eager`: ask about every row at once
    and cut afterwards, as a plain asyncio program does; otherwise ask one row at a time and stop
    at `k` (the fewest requests, used for the workload's lower bound)."""
    if eager:
        verdicts = await asyncio.gather(*(keep(row) for row in rows))
        return [row for row, ok in zip(rows, verdicts, strict=True) if ok][:k]
    kept: list[Any] = []
    for row in rows:
        if len(kept) == k:
            break
        if await keep(row):
            kept.append(row)
    return kept


# -- data --------------------------------------------------------------------------------------


@dataclass
class Context:
    """What one query's program runs with: the model (through a per-query Tally) and the data."""

    ask: Ask
    database: duckdb.DuckDBPyConnection
    eager: bool = True
    """True: the program as an application developer writes it. False: the workload's logical
    run (`bound.py`), which asks the fewest requests: LIMIT over an LLM filter one row at a time
    (see `first_k`), W8's conjunction with its per-note predicate first."""

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of a SQL query, run on a DuckDB cursor in a worker thread (the event loop
        keeps serving model answers meanwhile)."""

        def fetch() -> list[tuple[Any, ...]]:
            cursor = self.database.cursor()
            try:
                return cursor.execute(sql, list(params)).fetchall()
            finally:
                cursor.close()

        return await asyncio.to_thread(fetch)


# -- W1 / W4: summarize -> extract a profile -> recommend --------------------------------------

W1_RECENT = """SELECT c.c_mktsegment, o.o_comment
FROM customer c JOIN orders o ON o.o_custkey = c.c_custkey
WHERE c.c_custkey = ? ORDER BY o.o_orderdate DESC, o.o_orderkey LIMIT 4"""


def w1_steps(models: tuple[str, str, str]) -> tuple[Reduce, Step, Step]:
    """The chain's three steps on the given models (W1: all default; W4: small, small, large)."""
    return (
        Reduce(_W1_ROLE + "Summarize what this customer orders and any problems they had.",
               24, models[0]),
        Step(_W1_ROLE + "Extract the customer's profile from this summary: {summary}",
             OutputSpec.json(json.loads(_PROFILE_SCHEMA)), 40, models[1]),
        Step(_W1_ROLE + "Recommend one next action for the account manager. "
             "Segment: {c_mktsegment}. Profile: {profile}. Summary: {summary}", OutputSpec.text(),
             24, models[2]),
    )


async def _chain(ctx: Context, custkey: int, models: tuple[str, str, str]) -> list[dict[str, Any]]:
    summarize, extract, recommend = w1_steps(models)
    recent = await ctx.rows(W1_RECENT, custkey)
    if not recent:
        return []
    summary = await ask_reduce(ctx.ask, summarize, [comment for _, comment in recent])
    profile = await ask_step(ctx.ask, extract, {"summary": summary})
    recommendation = await ask_step(
        ctx.ask, recommend,
        {"c_mktsegment": recent[0][0], "profile": profile, "summary": summary},
    )
    return [{"c_custkey": custkey, "summary": summary, "profile": profile,
             "recommendation": recommendation}]


async def w1(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return await _chain(ctx, params["custkey"], ("default", "default", "default"))


async def w4(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return await _chain(ctx, params["custkey"], (SMALL_MODEL, SMALL_MODEL, LARGE_MODEL))


# -- W2: answer -> critique -> revise per order ------------------------------------------------

W2_QUESTIONS = """SELECT o_orderkey,
       'Will order ' || o_orderkey || ' (priority ' || o_orderpriority || ', status '
           || o_orderstatus || ') be delivered on time? Clerk note: ' || o_comment AS question
FROM orders WHERE o_custkey = ? ORDER BY o_orderkey LIMIT 3"""

W2_ANSWER = Step(_W2_ROLE + "Answer the question in one sentence. Question: {question}",
                 max_tokens=24)
W2_CRITIQUE = Step(_W2_ROLE + "Critique the answer: point out what it gets wrong or leaves out. "
                   "Question: {question} Answer: {answer}", max_tokens=24)
W2_REVISE = Step(_W2_ROLE + "Revise the answer so that it addresses the critique. "
                 "Question: {question} Answer: {answer} Critique: {critique}", max_tokens=24)


async def w2_row(ask: Ask, orderkey: int, question: str) -> dict[str, Any]:
    """One order's chain: each step awaits the previous one, other orders run meanwhile."""
    answer = await ask_step(ask, W2_ANSWER, {"question": question})
    critique = await ask_step(ask, W2_CRITIQUE, {"question": question, "answer": answer})
    revised = await ask_step(
        ask, W2_REVISE, {"question": question, "answer": answer, "critique": critique}
    )
    return {"o_orderkey": orderkey, "answer": answer, "critique": critique, "revised": revised}


async def w2(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    questions = await ctx.rows(W2_QUESTIONS, params["custkey"])
    return list(await asyncio.gather(*(w2_row(ctx.ask, key, q) for key, q in questions)))


# -- W3: three judges per listing, then the chair ----------------------------------------------

W3_LISTINGS = """SELECT p_partkey,
       p_name || ' (' || p_type || ', size ' || p_size || '): ' || p_comment AS item
FROM part WHERE p_brand = ? AND p_size >= ? ORDER BY p_partkey LIMIT 3"""

W3_JUDGES = tuple(
    (name, Step(text, OutputSpec.choice(["accept", "reject"]), 16)) for name, text in _W3_JUDGES
)
W3_CHAIR = Reduce(
    "You are the chair of a review panel. Combine the judges' votes on this part listing "
    "into one final decision with a short reason.", 24,
)


async def w3_listing(ask: Ask, partkey: int, item: str) -> dict[str, Any]:
    """Fan-out to the three judges at once, fan-in to the chair."""
    labels = await asyncio.gather(*(ask_step(ask, step, {"item": item}) for _, step in W3_JUDGES))
    votes = [None if label is None else f"{name}: {label}"
             for (name, _), label in zip(W3_JUDGES, labels, strict=True)]
    return {"p_partkey": partkey, "decision": await ask_reduce(ask, W3_CHAIR, votes)}


async def w3(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    listings = await ctx.rows(W3_LISTINGS, params["brand"], params["size"])
    return list(await asyncio.gather(*(w3_listing(ctx.ask, key, item) for key, item in listings)))


# -- W5: four dashboard shapes per (nation, month) ---------------------------------------------

W5_ORDERS = """FROM orders JOIN customer ON o_custkey = c_custkey
WHERE c_nationkey = ? AND o_orderdate >= CAST(? AS DATE)
  AND o_orderdate < CAST(? AS DATE) + INTERVAL 1 MONTH"""

W5_PROBLEM = Step(_W5_ROLE + "Does this order note report a delay or a problem? Note: {o_comment}",
                  OutputSpec.boolean(), 2)
W5_RATE = Step(_W5_ROLE + "Rate this supplier from its note. Note: {s_comment}",
               OutputSpec.choice(["reliable", "unreliable", "unclear"]), 16)
W5_URGENCY = Step(_W5_ROLE + "How urgent is this note? Note: {o_comment}",
                  OutputSpec.choice(["low", "medium", "high"]), 16)
W5_REPLY = Step(_W5_ROLE + "Draft a one-line reply to the customer. Note: {o_comment}",
                max_tokens=16)
W5_SCORE = Step(_W5_ROLE + "Rate the customer's satisfaction from 1 to 5. Note: {o_comment}",
                OutputSpec.choice(["1", "2", "3", "4", "5"]), 16)


async def w5(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    nation, first_day = params["nation"], f"{params['month']}-01"
    shape = params["shape"]

    async def problem(note: str) -> bool | None:
        return await ask_step(ctx.ask, W5_PROBLEM, {"o_comment": note})

    if shape == 0:  # LLM filter under a top-3 by price
        candidates = await ctx.rows(
            f"SELECT o_orderkey, o_totalprice, o_comment {W5_ORDERS} "
            "ORDER BY o_totalprice DESC, o_orderkey", nation, first_day, first_day)
        top = await first_k(candidates, lambda row: problem(row[2]), 3, eager=ctx.eager)
        return [{"o_orderkey": key, "o_totalprice": price} for key, price, _ in top]
    if shape == 1:  # LLM projection
        suppliers = await ctx.rows(
            "SELECT s_suppkey, s_name, s_comment FROM supplier WHERE s_nationkey = ? "
            "ORDER BY s_suppkey", nation)
        ratings = await asyncio.gather(
            *(ask_step(ctx.ask, W5_RATE, {"s_comment": note}) for _, _, note in suppliers))
        return [{"s_suppkey": key, "s_name": name, "rating": rating}
                for (key, name, _), rating in zip(suppliers, ratings, strict=True)]
    orders = await ctx.rows(
        f"SELECT o_orderkey, o_orderpriority, o_comment {W5_ORDERS} ORDER BY o_orderkey",
        nation, first_day, first_day)
    if shape == 2:  # a filter, then a classification and a reply for the rows it keeps

        async def triage(key: int, note: str) -> dict[str, Any] | None:
            if not await problem(note):
                return None
            urgency, reply = await asyncio.gather(
                ask_step(ctx.ask, W5_URGENCY, {"o_comment": note}),
                ask_step(ctx.ask, W5_REPLY, {"o_comment": note}))
            return {"o_orderkey": key, "urgency": urgency, "reply": reply}

        rows = await asyncio.gather(*(triage(key, note) for key, _, note in orders))
        return [row for row in rows if row is not None]
    # shape 3: satisfaction scores, averaged per order priority
    scores = await asyncio.gather(
        *(ask_step(ctx.ask, W5_SCORE, {"o_comment": note}) for _, _, note in orders))
    groups: dict[str, list[int | None]] = {}
    for (_, priority, _), score in zip(orders, scores, strict=True):
        groups.setdefault(priority, []).append(None if score is None else int(score))
    out = []
    for priority in sorted(groups):
        known = [s for s in groups[priority] if s is not None]
        out.append({"o_orderpriority": priority, "orders": len(groups[priority]),
                    "satisfaction": sum(known) / len(known) if known else None})
    return out


# -- W6: six SQL tools, one explanation each, then the review ----------------------------------

W6_EXPLAIN = Step(
    "You prepare account reviews for a wholesale parts supplier. Explain in one sentence "
    "what this tool result says about the customer. Tool: {tool}. Result: {result}",
    max_tokens=16,
)
W6_REVIEW = Reduce(
    "You prepare account reviews for a wholesale parts supplier. Write the review of the "
    "customer from these findings.", 24,
)


async def w6_tool(ctx: Context, custkey: int, name: str, sql: str) -> str | None:
    """One tool: its SQL result, then the model's one-sentence explanation of it."""
    rows = await ctx.rows(sql.replace("{c}", "?"), custkey)
    result = rows[0][0] if rows else None
    return await ask_step(ctx.ask, W6_EXPLAIN, {"tool": name, "result": result})


async def w6(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    custkey = params["custkey"]
    findings = await asyncio.gather(*(w6_tool(ctx, custkey, n, sql) for n, sql in _W6_TOOLS))
    return [{"c_custkey": custkey, "review": await ask_reduce(ctx.ask, W6_REVIEW, findings)}]


# -- W7: dashboard panels over the half month's order summaries ----------------------------------

W7_NOTES = f"""FROM orders
WHERE o_orderdate >= DATE '{_W7_FROM}' AND o_orderdate < DATE '{_W7_TO}'"""

W7_SUMMARY = Step(_W7_SUMMARY, max_tokens=16)
W7_PROBLEM = Step(_W7_PROBLEM, OutputSpec.boolean(), 2)
W7_TONE = Step(_W7_TONE, OutputSpec.choice(["calm", "concerned", "upset"]), 16)


async def w7_summary(ask: Ask, note: str) -> str | None:
    return await ask_step(ask, W7_SUMMARY, {"o_comment": note})  # type: ignore[no-any-return]


async def w7(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dashboard panel. The SQL's CTE summarizes every order of the half month, but each
    panel shows a handful of them and picks them without looking at a summary (a customer, a
    priority's top 3 by price, the latest 2 by date). So the developer's program fetches the
    panel's rows with that SQL and summarizes those, as the panel's own work: it computes what
    the query asks for and nothing else, and shares nothing with the other panels of the batch
    but the engine's prefix cache (a panel that shows an order another panel shows summarizes it
    again). Shape 2 (the LLM filter) asks about each of the customer's orders, then summarizes
    the ones it keeps; shape 3 summarizes the latest two, then asks each summary's tone."""
    shape, ask = params["shape"], ctx.ask
    if shape == 0:  # a customer's orders with their summaries
        rows = await ctx.rows(f"SELECT o_orderkey, o_orderdate, o_comment {W7_NOTES} "
                              "AND o_custkey = ? ORDER BY o_orderkey", params["custkey"])
        summaries = await asyncio.gather(*(w7_summary(ask, note) for _, _, note in rows))
        return [{"o_orderkey": key, "o_orderdate": day, "summary": summary}
                for (key, day, _), summary in zip(rows, summaries, strict=True)]
    if shape == 1:  # the largest orders of one priority
        rows = await ctx.rows(f"SELECT o_orderkey, o_totalprice, o_comment {W7_NOTES} "
                              "AND o_orderpriority = ? ORDER BY o_totalprice DESC, o_orderkey "
                              "LIMIT 3", params["priority"])
        summaries = await asyncio.gather(*(w7_summary(ask, note) for _, _, note in rows))
        return [{"o_orderkey": key, "o_totalprice": price, "summary": summary}
                for (key, price, _), summary in zip(rows, summaries, strict=True)]
    if shape == 2:  # a customer's orders whose note reports a problem

        async def problem_order(key: int, note: str) -> dict[str, Any] | None:
            if not await ask_step(ask, W7_PROBLEM, {"o_comment": note}):
                return None
            return {"o_orderkey": key, "summary": await w7_summary(ask, note)}

        rows = await ctx.rows(f"SELECT o_orderkey, o_comment {W7_NOTES} AND o_custkey = ? "
                              "ORDER BY o_orderkey", params["custkey"])
        kept = await asyncio.gather(*(problem_order(key, note) for key, note in rows))
        return [row for row in kept if row is not None]
    # shape 3: the tone of the latest summaries

    async def tone(key: int, note: str) -> dict[str, Any]:
        summary = await w7_summary(ask, note)
        return {"o_orderkey": key, "tone": await ask_step(ask, W7_TONE, {"summary": summary})}

    rows = await ctx.rows(f"SELECT o_orderkey, o_comment {W7_NOTES} "
                          "ORDER BY o_orderdate DESC, o_orderkey LIMIT 2")
    return list(await asyncio.gather(*(tone(key, note) for key, note in rows)))


# -- W8: order notes x part materials, an LLM join predicate and a per-note urgency --------------

W8_NOTES = "SELECT o_orderkey, o_comment FROM orders WHERE o_custkey = ? ORDER BY o_orderkey"
W8_MATERIALS = ("SELECT DISTINCT split_part(p_type, ' ', 3) AS material FROM part "
                "ORDER BY material")

W8_MATCH = Step(_W8_MATCH, OutputSpec.boolean(), 2)
W8_URGENCY = Step(_W8_URGENCY, OutputSpec.choice(list(_W8_LEVELS)), 16)


async def w8(ctx: Context, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A customer's order notes joined with the part materials by the LLM predicate, kept where
    the note's urgency is 'critical'. As written, the join predicate comes first: per note, the
    program asks about every material at once, and only for a note that matched one asks its
    urgency, once per note (it is the note's property; asking it again for each matching pair
    would be a program nobody writes). It does not move the urgency ahead of the join: that
    reordering is the optimizer's job being measured. The logical run (`eager=False`) asks the
    per-note urgency first and the pairs of critical notes only, the plan with the fewest
    requests whenever a note is not critical or matches a material."""
    notes = await ctx.rows(W8_NOTES, params["custkey"])
    materials = [material for (material,) in await ctx.rows(W8_MATERIALS)]
    ask = ctx.ask

    async def matches(note: str) -> list[str]:
        verdicts = await asyncio.gather(
            *(ask_step(ask, W8_MATCH, {"n.o_comment": note, "m.material": material})
              for material in materials))
        return [m for m, ok in zip(materials, verdicts, strict=True) if ok]

    async def critical(note: str) -> bool:
        return await ask_step(ask, W8_URGENCY, {"n.o_comment": note}) == "critical"

    async def pairs(key: int, note: str) -> list[dict[str, Any]]:
        if ctx.eager:
            matched = await matches(note)
            keep = bool(matched) and await critical(note)
        else:
            keep = await critical(note)
            matched = await matches(note) if keep else []
        return [{"o_orderkey": key, "material": material} for material in matched] if keep else []

    found = await asyncio.gather(*(pairs(key, note) for key, note in notes))
    return [row for rows in found for row in rows]


Program = Callable[[Context, Mapping[str, Any]], Awaitable[list[dict[str, Any]]]]

PROGRAMS: dict[str, Program] = {
    "W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "W8": w8,
}
"""The plain program of each row workload, by key (the agent workloads' are in
`agent_programs.AGENT_PROGRAMS`; `all_programs()` has both)."""


def all_programs() -> dict[str, Program]:
    """Every workload's plain program by key: the row workloads' and the agent workloads'."""
    from tpc_agentic_bench.agent_programs import AGENT_PROGRAMS  # it builds on this module

    return {**PROGRAMS, **AGENT_PROGRAMS}


# -- running a batch ---------------------------------------------------------------------------


@dataclass
class ProgramOutcome:
    """One query run as a program: its rows (or error), its counts, its own latency."""

    table: pa.Table | None
    stats: dict[str, Any]
    error: str | None = None


def program_for(workload: Workload) -> Program:
    """The plain program of `workload`; ValueError when it has none (or no parameters)."""
    program = all_programs().get(workload.key)
    if program is None or len(workload.params) != len(workload.queries):
        raise ValueError(f"workload {workload.key} has no plain-program version")
    return program


async def run_query(
    program: Program, ask: Ask, database: duckdb.DuckDBPyConnection, params: Mapping[str, Any],
    *, eager: bool = True,
) -> ProgramOutcome:
    """One query's program with its own Tally; a failure becomes the query's error."""
    tally = Tally(ask)
    began = time.perf_counter()
    try:
        rows = await program(Context(tally, database, eager), params)
        table, error = pa.Table.from_pylist(rows), None
    except Exception as exc:  # a failing query is a finding to report, not a crash
        table, error = None, f"{type(exc).__name__}: {exc}"
    stats = tally.stats()
    stats["seconds"] = time.perf_counter() - began
    return ProgramOutcome(table, stats, error)


async def run_batch(
    workload: Workload,
    ask: Ask,
    database: duckdb.DuckDBPyConnection,
    *,
    eager: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[ProgramOutcome]:
    """Every query of the batch as its own task, all in flight at once; outcomes in input order."""
    program = program_for(workload)
    done = 0

    async def one(params: Mapping[str, Any]) -> ProgramOutcome:
        nonlocal done
        outcome = await run_query(program, ask, database, params, eager=eager)
        done += 1
        if progress is not None:
            progress(done)
        return outcome

    return list(await asyncio.gather(*(one(p) for p in workload.params)))

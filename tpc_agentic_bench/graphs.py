"""The workloads as LangGraph graphs: the `langgraph` system.

The same workflows as `programs.py` (same SQL for the data, same steps and prompts), written the
way LangGraph users write them: one node per LLM step, a row's chain as its own small graph,
fan-out to rows and to voting judges with `Send` and fan-in through a reducer, and every query
of the batch invoked at once (`asyncio.gather` of `ainvoke`, what `abatch` does, with each
query timed). The model sits behind an OpenAI-compatible server (`clients.OpenAIClient`); the
nodes find it, and the DuckDB connection, in the run's config (`configurable`), as LangGraph
passes runtime resources.

    >>> graph = workload_graph("W2")                                   # doctest: +SKIP
    >>> await graph.ainvoke({"params": {"custkey": 7}}, config)       # doctest: +SKIP
    {'params': {...}, 'rows': [...], ...}
"""

from __future__ import annotations

import asyncio
import functools
import operator
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypedDict

import duckdb
import pyarrow as pa
from langchain_core.runnables import RunnableConfig

from tpc_agentic_bench.agent_programs import (
    W2A_ANALYST,
    W2A_CRITIC,
    W2A_REVISER,
    W3A_JUDGES,
    W5A_ANALYST,
    W6A_REVIEWER,
    Agent,
    AgentRun,
    SqlTool,
    input_json,
    take_turn,
    tool_entry,
)
from tpc_agentic_bench.programs import (
    W1_RECENT,
    W2_ANSWER,
    W2_CRITIQUE,
    W2_QUESTIONS,
    W2_REVISE,
    W3_CHAIR,
    W3_JUDGES,
    W3_LISTINGS,
    W5_ORDERS,
    W5_PROBLEM,
    W5_RATE,
    W5_REPLY,
    W5_SCORE,
    W5_URGENCY,
    W6_EXPLAIN,
    W6_REVIEW,
    W7_NOTES,
    W7_PROBLEM,
    W7_SUMMARY,
    W7_TONE,
    W8_MATCH,
    W8_MATERIALS,
    W8_NOTES,
    W8_URGENCY,
    Ask,
    Context,
    ProgramOutcome,
    Tally,
    ask_reduce,
    ask_step,
    w1_steps,
)
from tpc_agentic_bench.workloads import _W6_TOOLS, LARGE_MODEL, SMALL_MODEL, Workload


def _ctx(config: RunnableConfig) -> Context:
    return config["configurable"]["ctx"]  # type: ignore[no-any-return]


def _ask(config: RunnableConfig) -> Ask:
    return _ctx(config).ask


class QueryState(TypedDict, total=False):
    """A query's state: its parameters in, its loaded rows, its result rows out."""

    params: dict[str, Any]
    items: list[dict[str, Any]]
    done: Annotated[list[dict[str, Any]], operator.add]
    """Rows finished by fanned-out branches (a reducer: branches append)."""
    rows: list[dict[str, Any]]


def _fan_out(node: str, after: str) -> Callable[[QueryState], Any]:
    """Send every loaded item to `node` (one branch each); with none, go straight to `after`."""

    def route(state: QueryState) -> Any:
        from langgraph.types import Send

        return [Send(node, item) for item in state.get("items", [])] or after

    return route


def _collect(key: str) -> Callable[[QueryState], Any]:
    async def collect(state: QueryState) -> dict[str, Any]:
        return {"rows": sorted(state.get("done", []), key=lambda row: row[key])}

    return collect


def _map_graph(load: Any, work: Any, key: str) -> Any:
    """load -> Send(work) per item -> collect: the map/fan-in shape most workloads share."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    graph.add_node("work", work)
    graph.add_node("collect", _collect(key))
    graph.add_edge(START, "load")
    graph.add_conditional_edges("load", _fan_out("work", "collect"), ["work", "collect"])
    graph.add_edge("work", "collect")
    graph.add_edge("collect", END)
    return graph.compile()


# -- W1 / W4: summarize -> extract -> recommend, one node each --------------------------------


class ChainState(TypedDict, total=False):
    params: dict[str, Any]
    segment: str
    comments: list[str]
    summary: str | None
    profile: dict[str, Any] | None
    rows: list[dict[str, Any]]


def _chain_graph(models: tuple[str, str, str]) -> Any:
    from langgraph.graph import END, START, StateGraph

    summarize, extract, recommend = w1_steps(models)

    async def load(state: ChainState, config: RunnableConfig) -> dict[str, Any]:
        recent = await _ctx(config).rows(W1_RECENT, state["params"]["custkey"])
        if not recent:
            return {"comments": [], "segment": None}
        return {"segment": recent[0][0], "comments": [comment for _, comment in recent]}

    async def summarize_node(state: ChainState, config: RunnableConfig) -> dict[str, Any]:
        return {"summary": await ask_reduce(_ask(config), summarize, state["comments"])}

    async def extract_node(state: ChainState, config: RunnableConfig) -> dict[str, Any]:
        return {"profile": await ask_step(_ask(config), extract, {"summary": state["summary"]})}

    async def recommend_node(state: ChainState, config: RunnableConfig) -> dict[str, Any]:
        values = {"c_mktsegment": state["segment"], "profile": state["profile"],
                  "summary": state["summary"]}
        recommendation = await ask_step(_ask(config), recommend, values)
        return {"rows": [{"c_custkey": state["params"]["custkey"], "summary": state["summary"],
                          "profile": state["profile"], "recommendation": recommendation}]}

    graph = StateGraph(ChainState)
    graph.add_node("load", load)
    graph.add_node("summarize", summarize_node)
    graph.add_node("extract", extract_node)
    graph.add_node("recommend", recommend_node)
    graph.add_edge(START, "load")
    graph.add_conditional_edges(
        "load", lambda state: "summarize" if state["comments"] else END, ["summarize", END]
    )
    graph.add_edge("summarize", "extract")
    graph.add_edge("extract", "recommend")
    graph.add_edge("recommend", END)
    return graph.compile()


# -- W2: per order, answer -> critique -> revise as its own graph -------------------------------


class OrderState(TypedDict, total=False):
    o_orderkey: int
    question: str
    answer: str | None
    critique: str | None
    revised: str | None


def _w2_order_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    async def answer(state: OrderState, config: RunnableConfig) -> dict[str, Any]:
        return {"answer": await ask_step(_ask(config), W2_ANSWER, {"question": state["question"]})}

    async def critique(state: OrderState, config: RunnableConfig) -> dict[str, Any]:
        values = {"question": state["question"], "answer": state["answer"]}
        return {"critique": await ask_step(_ask(config), W2_CRITIQUE, values)}

    async def revise(state: OrderState, config: RunnableConfig) -> dict[str, Any]:
        values = {"question": state["question"], "answer": state["answer"],
                  "critique": state["critique"]}
        return {"revised": await ask_step(_ask(config), W2_REVISE, values)}

    graph = StateGraph(OrderState)
    for name, node in (("answer", answer), ("critique", critique), ("revise", revise)):
        graph.add_node(name, node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", "critique")
    graph.add_edge("critique", "revise")
    graph.add_edge("revise", END)
    return graph.compile()


def _w2_graph() -> Any:
    order_graph = _w2_order_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        questions = await _ctx(config).rows(W2_QUESTIONS, state["params"]["custkey"])
        return {"items": [{"o_orderkey": key, "question": q} for key, q in questions]}

    async def order(item: OrderState, config: RunnableConfig) -> dict[str, Any]:
        final = await order_graph.ainvoke(item, config)
        return {"done": [{k: final.get(k) for k in
                          ("o_orderkey", "answer", "critique", "revised")}]}

    return _map_graph(load, order, "o_orderkey")


# -- W3: per listing, three judges in parallel, fan-in to the chair ------------------------------


class PanelState(TypedDict, total=False):
    p_partkey: int
    item: str
    votes: Annotated[dict[str, str | None], operator.or_]
    decision: str | None


def _w3_panel_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(PanelState)
    for name, step in W3_JUDGES:

        async def judge(state: PanelState, config: RunnableConfig, name: str = name,
                        step: Any = step) -> dict[str, Any]:
            label = await ask_step(_ask(config), step, {"item": state["item"]})
            return {"votes": {name: None if label is None else f"{name}: {label}"}}

        graph.add_node(f"judge_{name}", judge)
        graph.add_edge(START, f"judge_{name}")
        graph.add_edge(f"judge_{name}", "chair")

    async def chair(state: PanelState, config: RunnableConfig) -> dict[str, Any]:
        votes = [state["votes"].get(name) for name, _ in W3_JUDGES]
        return {"decision": await ask_reduce(_ask(config), W3_CHAIR, votes)}

    graph.add_node("chair", chair)
    graph.add_edge("chair", END)
    return graph.compile()


def _w3_graph() -> Any:
    panel = _w3_panel_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        params = state["params"]
        listings = await _ctx(config).rows(W3_LISTINGS, params["brand"], params["size"])
        return {"items": [{"p_partkey": key, "item": item, "votes": {}} for key, item in listings]}

    async def listing(item: PanelState, config: RunnableConfig) -> dict[str, Any]:
        final = await panel.ainvoke(item, config)
        return {"done": [{"p_partkey": final["p_partkey"], "decision": final.get("decision")}]}

    return _map_graph(load, listing, "p_partkey")


# -- W5: the four dashboard shapes ---------------------------------------------------------------


def _w5_args(params: Mapping[str, Any]) -> tuple[int, str, str]:
    first_day = f"{params['month']}-01"
    return params["nation"], first_day, first_day


class TriageState(TypedDict, total=False):
    o_orderkey: int
    o_comment: str
    problem: bool | None
    urgency: str | None
    reply: str | None


def _w5_triage_graph() -> Any:
    """Shape 2 per order: the filter, then (only for orders it keeps) urgency and reply in
    parallel."""
    from langgraph.graph import END, START, StateGraph

    async def problem(state: TriageState, config: RunnableConfig) -> dict[str, Any]:
        return {"problem": await ask_step(_ask(config), W5_PROBLEM,
                                          {"o_comment": state["o_comment"]})}

    async def urgency(state: TriageState, config: RunnableConfig) -> dict[str, Any]:
        return {"urgency": await ask_step(_ask(config), W5_URGENCY,
                                          {"o_comment": state["o_comment"]})}

    async def reply(state: TriageState, config: RunnableConfig) -> dict[str, Any]:
        return {"reply": await ask_step(_ask(config), W5_REPLY, {"o_comment": state["o_comment"]})}

    graph = StateGraph(TriageState)
    graph.add_node("problem", problem)
    graph.add_node("urgency", urgency)
    graph.add_node("reply", reply)
    graph.add_edge(START, "problem")
    graph.add_conditional_edges(
        "problem", lambda state: ["urgency", "reply"] if state.get("problem") else END,
        ["urgency", "reply", END],
    )
    graph.add_edge("urgency", END)
    graph.add_edge("reply", END)
    return graph.compile()


def _w5_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    triage_graph = _w5_triage_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        params = state["params"]
        ctx = _ctx(config)
        shape = params["shape"]
        if shape == 0:
            rows = await ctx.rows(f"SELECT o_orderkey, o_totalprice, o_comment {W5_ORDERS} "
                                  "ORDER BY o_totalprice DESC, o_orderkey", *_w5_args(params))
            return {"items": [{"rank": i, "o_orderkey": k, "o_totalprice": p, "o_comment": c}
                              for i, (k, p, c) in enumerate(rows)]}
        if shape == 1:
            rows = await ctx.rows("SELECT s_suppkey, s_name, s_comment FROM supplier "
                                  "WHERE s_nationkey = ? ORDER BY s_suppkey", params["nation"])
            return {"items": [{"s_suppkey": k, "s_name": n, "s_comment": c} for k, n, c in rows]}
        rows = await ctx.rows(f"SELECT o_orderkey, o_orderpriority, o_comment {W5_ORDERS} "
                              "ORDER BY o_orderkey", *_w5_args(params))
        return {"items": [{"o_orderkey": k, "o_orderpriority": p, "o_comment": c}
                          for k, p, c in rows]}

    async def check(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:  # shape 0
        ok = await ask_step(_ask(config), W5_PROBLEM, {"o_comment": item["o_comment"]})
        return {"done": [item] if ok else []}

    async def top(state: QueryState) -> dict[str, Any]:
        kept = sorted(state.get("done", []), key=lambda row: row["rank"])[:3]
        return {"rows": [{"o_orderkey": r["o_orderkey"], "o_totalprice": r["o_totalprice"]}
                         for r in kept]}

    async def rate(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:  # shape 1
        rating = await ask_step(_ask(config), W5_RATE, {"s_comment": item["s_comment"]})
        return {"done": [{"s_suppkey": item["s_suppkey"], "s_name": item["s_name"],
                          "rating": rating}]}

    async def triage(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:  # shape 2
        final = await triage_graph.ainvoke(
            {"o_orderkey": item["o_orderkey"], "o_comment": item["o_comment"]}, config)
        if not final.get("problem"):
            return {"done": []}
        return {"done": [{"o_orderkey": final["o_orderkey"], "urgency": final.get("urgency"),
                          "reply": final.get("reply")}]}

    async def score(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:  # shape 3
        label = await ask_step(_ask(config), W5_SCORE, {"o_comment": item["o_comment"]})
        return {"done": [{"o_orderpriority": item["o_orderpriority"],
                          "score": None if label is None else int(label)}]}

    async def group(state: QueryState) -> dict[str, Any]:
        groups: dict[str, list[int | None]] = {}
        for row in state.get("done", []):
            groups.setdefault(row["o_orderpriority"], []).append(row["score"])
        out = []
        for priority in sorted(groups):
            known = [s for s in groups[priority] if s is not None]
            out.append({"o_orderpriority": priority, "orders": len(groups[priority]),
                        "satisfaction": sum(known) / len(known) if known else None})
        return {"rows": out}

    fan_in = {0: "top", 1: "collect_suppliers", 2: "collect_orders", 3: "group"}
    branch = {0: "check", 1: "rate", 2: "triage", 3: "score"}

    def route(state: QueryState) -> Any:
        from langgraph.types import Send

        shape = state["params"]["shape"]
        return [Send(branch[shape], item) for item in state.get("items", [])] or fan_in[shape]

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    for name, node in (("check", check), ("rate", rate), ("triage", triage), ("score", score),
                       ("top", top), ("group", group),
                       ("collect_suppliers", _collect("s_suppkey")),
                       ("collect_orders", _collect("o_orderkey"))):
        graph.add_node(name, node)
    graph.add_edge(START, "load")
    graph.add_conditional_edges("load", route, [*branch.values(), *fan_in.values()])
    for shape, name in branch.items():
        graph.add_edge(name, fan_in[shape])
    for name in fan_in.values():
        graph.add_edge(name, END)
    return graph.compile()


# -- W6: six SQL tools, fan-out of explanations, fan-in to the review ---------------------------


def _w6_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    async def tools(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        ctx = _ctx(config)
        custkey = state["params"]["custkey"]
        results = await asyncio.gather(
            *(ctx.rows(sql.replace("{c}", "?"), custkey) for _, sql in _W6_TOOLS))
        return {"items": [{"tool": name, "result": rows[0][0] if rows else None}
                          for (name, _), rows in zip(_W6_TOOLS, results, strict=True)]}

    async def explain(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        finding = await ask_step(_ask(config), W6_EXPLAIN, item)
        return {"done": [{"finding": finding}]}

    async def review(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        findings = [row["finding"] for row in state.get("done", [])]
        return {"rows": [{"c_custkey": state["params"]["custkey"],
                          "review": await ask_reduce(_ask(config), W6_REVIEW, findings)}]}

    graph = StateGraph(QueryState)
    graph.add_node("tools", tools)
    graph.add_node("explain", explain)
    graph.add_node("review", review)
    graph.add_edge(START, "tools")
    graph.add_conditional_edges("tools", _fan_out("explain", "review"), ["explain", "review"])
    graph.add_edge("explain", "review")
    graph.add_edge("review", END)
    return graph.compile()


# -- W7: per panel, its rows fanned out, each through its LLM steps ------------------------------


class PanelRowState(TypedDict, total=False):
    """One order of a W7 panel: the shape decides its steps (filter, summary, tone)."""

    shape: int
    rank: int
    row: dict[str, Any]
    o_comment: str
    problem: bool | None
    summary: str | None
    tone: str | None


W7_COLUMNS = {0: ("o_orderkey", "o_orderdate", "summary"), 1: ("o_orderkey", "o_totalprice", "summary"),
              2: ("o_orderkey", "summary"), 3: ("o_orderkey", "tone")}
"""Each W7 panel's output columns."""


def _w7_row_graph() -> Any:
    """shape 2: problem -> (kept) summarize; shape 3: summarize -> tone; else summarize."""
    from langgraph.graph import END, START, StateGraph

    async def problem(state: PanelRowState, config: RunnableConfig) -> dict[str, Any]:
        return {"problem": await ask_step(_ask(config), W7_PROBLEM,
                                          {"o_comment": state["o_comment"]})}

    async def summarize(state: PanelRowState, config: RunnableConfig) -> dict[str, Any]:
        return {"summary": await ask_step(_ask(config), W7_SUMMARY,
                                          {"o_comment": state["o_comment"]})}

    async def tone(state: PanelRowState, config: RunnableConfig) -> dict[str, Any]:
        return {"tone": await ask_step(_ask(config), W7_TONE, {"summary": state["summary"]})}

    graph = StateGraph(PanelRowState)
    graph.add_node("problem", problem)
    graph.add_node("summarize", summarize)
    graph.add_node("tone", tone)
    graph.add_conditional_edges(
        START, lambda state: "problem" if state["shape"] == 2 else "summarize",
        ["problem", "summarize"])
    graph.add_conditional_edges(
        "problem", lambda state: "summarize" if state.get("problem") else END, ["summarize", END])
    graph.add_conditional_edges(
        "summarize", lambda state: "tone" if state["shape"] == 3 else END, ["tone", END])
    graph.add_edge("tone", END)
    return graph.compile()


def _w7_graph() -> Any:
    row_graph = _w7_row_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        params, ctx = state["params"], _ctx(config)
        shape = params["shape"]
        if shape == 0:
            rows = await ctx.rows(f"SELECT o_orderkey, o_orderdate, o_comment {W7_NOTES} "
                                  "AND o_custkey = ? ORDER BY o_orderkey", params["custkey"])
        elif shape == 1:
            rows = await ctx.rows(f"SELECT o_orderkey, o_totalprice, o_comment {W7_NOTES} "
                                  "AND o_orderpriority = ? ORDER BY o_totalprice DESC, "
                                  "o_orderkey LIMIT 3", params["priority"])
        elif shape == 2:
            rows = await ctx.rows(f"SELECT o_orderkey, o_comment {W7_NOTES} AND o_custkey = ? "
                                  "ORDER BY o_orderkey", params["custkey"])
        else:
            rows = await ctx.rows(f"SELECT o_orderkey, o_comment {W7_NOTES} "
                                  "ORDER BY o_orderdate DESC, o_orderkey LIMIT 2")
        columns = W7_COLUMNS[shape]
        return {"items": [{"shape": shape, "rank": rank, "o_comment": row[-1],
                           "row": dict(zip(columns[:len(row) - 1], row[:-1], strict=True))}
                          for rank, row in enumerate(rows)]}

    async def panel_row(item: PanelRowState, config: RunnableConfig) -> dict[str, Any]:
        final = await row_graph.ainvoke(item, config)
        if final["shape"] == 2 and not final.get("problem"):
            return {"done": []}
        row = {**final["row"], **{c: final.get(c) for c in W7_COLUMNS[final["shape"]]
                                  if c not in final["row"]}}
        return {"done": [{"rank": final["rank"], "row": row}]}

    async def collect(state: QueryState) -> dict[str, Any]:
        return {"rows": [d["row"] for d in sorted(state.get("done", []), key=lambda d: d["rank"])]}

    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    graph.add_node("row", panel_row)
    graph.add_node("collect", collect)
    graph.add_edge(START, "load")
    graph.add_conditional_edges("load", _fan_out("row", "collect"), ["row", "collect"])
    graph.add_edge("row", "collect")
    graph.add_edge("collect", END)
    return graph.compile()


# -- W8: per note, the join predicate fanned out over the materials, then the urgency -----------


class NoteState(TypedDict, total=False):
    o_orderkey: int
    o_comment: str
    materials: list[str]
    matched: Annotated[list[str], operator.add]
    """Materials the join predicate accepted (a reducer: the fanned-out checks append)."""
    urgency: str | None


def _w8_note_graph() -> Any:
    """Send(match) per material -> gather -> urgency only when a material matched (the
    program's order, `programs.w8`)."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def match(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        values = {"n.o_comment": item["o_comment"], "m.material": item["material"]}
        ok = await ask_step(_ask(config), W8_MATCH, values)
        return {"matched": [item["material"]] if ok else []}

    async def gather(state: NoteState) -> dict[str, Any]:
        return {}

    async def urgency(state: NoteState, config: RunnableConfig) -> dict[str, Any]:
        return {"urgency": await ask_step(_ask(config), W8_URGENCY,
                                          {"n.o_comment": state["o_comment"]})}

    graph = StateGraph(NoteState)
    graph.add_node("match", match)
    graph.add_node("gather", gather)
    graph.add_node("urgency", urgency)
    graph.add_conditional_edges(
        START, lambda state: [Send("match", {"o_comment": state["o_comment"], "material": m})
                              for m in state["materials"]] or "gather", ["match", "gather"])
    graph.add_edge("match", "gather")
    graph.add_conditional_edges(
        "gather", lambda state: "urgency" if state.get("matched") else END, ["urgency", END])
    graph.add_edge("urgency", END)
    return graph.compile()


def _w8_graph() -> Any:
    note_graph = _w8_note_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        ctx = _ctx(config)
        notes = await ctx.rows(W8_NOTES, state["params"]["custkey"])
        materials = [material for (material,) in await ctx.rows(W8_MATERIALS)]
        return {"items": [{"o_orderkey": key, "o_comment": note, "materials": materials,
                           "matched": []} for key, note in notes]}

    async def note(item: NoteState, config: RunnableConfig) -> dict[str, Any]:
        final = await note_graph.ainvoke(item, config)
        if final.get("urgency") != "critical":
            return {"done": []}
        return {"done": [{"o_orderkey": final["o_orderkey"], "material": m}
                         for m in final["matched"]]}

    async def collect(state: QueryState) -> dict[str, Any]:
        return {"rows": sorted(state.get("done", []),
                               key=lambda row: (row["o_orderkey"], row["material"]))}

    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    graph.add_node("note", note)
    graph.add_node("collect", collect)
    graph.add_edge(START, "load")
    graph.add_conditional_edges("load", _fan_out("note", "collect"), ["note", "collect"])
    graph.add_edge("note", "collect")
    graph.add_edge("collect", END)
    return graph.compile()


# -- agents: the tool loop as a graph (model <-> tool), the workloads around it -----------------


class AgentState(TypedDict, total=False):
    """One agent run over one input row (`agent_programs.run_agent` as a graph)."""

    agent: Agent
    input_json: str
    transcript: list[str]
    step: int
    calls: int
    pending: tuple[SqlTool, dict[str, Any]] | None
    """The tool call the last reply asked for, not run yet."""
    done: bool
    answer: Any
    error: str | None


@functools.cache
def agent_loop_graph() -> Any:
    """The tool loop LangGraph users write: a model node, and a tool node it loops through until
    the model answers (or an invalid reply sends it back to the model with a note)."""
    from langgraph.graph import END, START, StateGraph

    async def model(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        step = state.get("step", 0) + 1
        transcript = state.get("transcript", [])
        turn = await take_turn(_ask(config), state["agent"], state["input_json"], transcript, step)
        update: dict[str, Any] = {"step": step, "done": turn.done, "answer": turn.answer,
                                  "error": turn.error, "pending": None}
        if turn.tool is not None:
            update["pending"] = (turn.tool, turn.arguments)
        elif turn.note is not None:
            update["transcript"] = [*transcript, turn.note]
        return update

    async def tool(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        assert state["pending"] is not None
        sql_tool, arguments = state["pending"]
        observation = await sql_tool.call(_ctx(config).database, arguments)
        entry = tool_entry(state["step"], sql_tool, arguments, observation)
        return {"transcript": [*state.get("transcript", []), entry], "pending": None,
                "calls": state.get("calls", 0) + 1}

    def route(state: AgentState) -> str:
        if state.get("done"):
            return END
        return "tool" if state.get("pending") is not None else "model"

    graph = StateGraph(AgentState)
    graph.add_node("model", model)
    graph.add_node("tool", tool)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["model", "tool", END])
    graph.add_edge("tool", "model")
    return graph.compile()


async def run_agent_graph(agent: Agent, row: Mapping[str, Any], config: RunnableConfig) -> AgentRun:
    """One agent run through the tool-loop graph."""
    final = await agent_loop_graph().ainvoke(
        {"agent": agent, "input_json": input_json(row), "transcript": [], "step": 0, "calls": 0},
        config,
    )
    return AgentRun(final.get("answer"), final["step"], final.get("calls", 0), final.get("error"))


class ReflectionState(TypedDict, total=False):
    """W2A per order: analyst -> critic -> reviser (when the critic did not say ok)."""

    o_orderkey: int
    question: str
    draft: str | None
    ok: bool | None
    critique: str | None
    final: str | None


def _w2a_order_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    async def analyst(state: ReflectionState, config: RunnableConfig) -> dict[str, Any]:
        row = {"o_orderkey": state["o_orderkey"], "question": state["question"]}
        draft = (await run_agent_graph(W2A_ANALYST, row, config)).answer
        return {"draft": draft, "final": draft}

    async def critic(state: ReflectionState, config: RunnableConfig) -> dict[str, Any]:
        row = {k: state.get(k) for k in ("o_orderkey", "question", "draft")}
        run = await run_agent_graph(W2A_CRITIC, row, config)
        return {"ok": run.get("ok"), "critique": run.get("critique")}

    async def reviser(state: ReflectionState, config: RunnableConfig) -> dict[str, Any]:
        row = {k: state.get(k) for k in ("o_orderkey", "question", "draft", "ok", "critique")}
        revision = (await run_agent_graph(W2A_REVISER, row, config)).answer
        return {} if revision is None else {"final": revision}

    graph = StateGraph(ReflectionState)
    for name, node in (("analyst", analyst), ("critic", critic), ("reviser", reviser)):
        graph.add_node(name, node)
    graph.add_edge(START, "analyst")
    graph.add_edge("analyst", "critic")
    graph.add_conditional_edges("critic", lambda state: END if state.get("ok") else "reviser",
                                ["reviser", END])
    graph.add_edge("reviser", END)
    return graph.compile()


def _w2a_graph() -> Any:
    order_graph = _w2a_order_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        questions = await _ctx(config).rows(W2_QUESTIONS, state["params"]["custkey"])
        return {"items": [{"o_orderkey": key, "question": q} for key, q in questions]}

    async def order(item: ReflectionState, config: RunnableConfig) -> dict[str, Any]:
        final = await order_graph.ainvoke(item, config)
        return {"done": [{k: final.get(k)
                          for k in ("o_orderkey", "draft", "ok", "critique", "final")}]}

    return _map_graph(load, order, "o_orderkey")


def _w3a_panel_graph() -> Any:
    """W3's panel with the judges as agents: three judge nodes in parallel, then the chair."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(PanelState)
    for name, agent in W3A_JUDGES:

        async def judge(state: PanelState, config: RunnableConfig, name: str = name,
                        agent: Agent = agent) -> dict[str, Any]:
            row = {"p_partkey": state["p_partkey"], "item": state["item"]}
            answer = (await run_agent_graph(agent, row, config)).answer
            return {"votes": {name: None if answer is None else f"{name}: {answer}"}}

        graph.add_node(f"judge_{name}", judge)
        graph.add_edge(START, f"judge_{name}")
        graph.add_edge(f"judge_{name}", "chair")

    async def chair(state: PanelState, config: RunnableConfig) -> dict[str, Any]:
        votes = [state["votes"].get(name) for name, _ in W3A_JUDGES]
        return {"decision": await ask_reduce(_ask(config), W3_CHAIR, votes)}

    graph.add_node("chair", chair)
    graph.add_edge("chair", END)
    return graph.compile()


def _w3a_graph() -> Any:
    panel = _w3a_panel_graph()

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        params = state["params"]
        listings = await _ctx(config).rows(W3_LISTINGS, params["brand"], params["size"])
        return {"items": [{"p_partkey": key, "item": item, "votes": {}} for key, item in listings]}

    async def listing(item: PanelState, config: RunnableConfig) -> dict[str, Any]:
        final = await panel.ainvoke(item, config)
        return {"done": [{"p_partkey": final["p_partkey"], "decision": final.get("decision")}]}

    return _map_graph(load, listing, "p_partkey")


def _w5a_graph() -> Any:
    """load the top-3 orders -> Send(judge) per order -> fan-in: count the verdicts (shape 0)
    or list them with the customer's name (shape 1)."""
    from langgraph.graph import END, START, StateGraph

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        params = state["params"]
        orders = await _ctx(config).rows(
            f"SELECT o_orderkey, o_custkey, o_orderpriority, o_comment, c_name {W5_ORDERS} "
            "ORDER BY o_totalprice DESC, o_orderkey LIMIT 3", *_w5_args(params))
        return {"items": [{"rank": rank, "c_name": name,
                           "row": {"o_orderkey": key, "o_custkey": cust,
                                   "o_orderpriority": priority, "o_comment": note}}
                          for rank, (key, cust, priority, note, name) in enumerate(orders)]}

    async def judge(item: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        run = await run_agent_graph(W5A_ANALYST, item["row"], config)
        return {"done": [{**item, "verdict": run.answer, "steps": run.steps}]}

    async def report(state: QueryState) -> dict[str, Any]:
        judged = sorted(state.get("done", []), key=lambda d: d["rank"])
        if state["params"]["shape"] == 1:
            return {"rows": [{"o_orderkey": d["row"]["o_orderkey"], "c_name": d["c_name"],
                              "verdict": d["verdict"], "steps": d["steps"]} for d in judged]}
        groups: dict[str | None, list[int]] = {}
        for d in judged:
            groups.setdefault(d["verdict"], []).append(d["row"]["o_orderkey"])
        ordered = sorted(groups, key=lambda verdict: (verdict is None, verdict or ""))
        return {"rows": [{"verdict": v, "orders": len(groups[v]), "first_order": min(groups[v])}
                         for v in ordered]}

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    graph.add_node("judge", judge)
    graph.add_node("report", report)
    graph.add_edge(START, "load")
    graph.add_conditional_edges("load", _fan_out("judge", "report"), ["judge", "report"])
    graph.add_edge("judge", "report")
    graph.add_edge("report", END)
    return graph.compile()


def _w6a_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    async def load(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        customers = await _ctx(config).rows(
            "SELECT c_custkey, c_name, c_mktsegment FROM customer WHERE c_custkey = ?",
            state["params"]["custkey"])
        return {"items": [{"c_custkey": k, "c_name": n, "c_mktsegment": s}
                          for k, n, s in customers]}

    async def review(state: QueryState, config: RunnableConfig) -> dict[str, Any]:
        rows = []
        for row in state.get("items", []):
            run = await run_agent_graph(W6A_REVIEWER, row, config)
            rows.append({"c_custkey": row["c_custkey"], "review": run.answer, "steps": run.steps,
                         "calls": run.tool_calls})
        return {"rows": rows}

    graph = StateGraph(QueryState)
    graph.add_node("load", load)
    graph.add_node("review", review)
    graph.add_edge(START, "load")
    graph.add_edge("load", "review")
    graph.add_edge("review", END)
    return graph.compile()


GRAPHS: dict[str, Callable[[], Any]] = {
    "W1": lambda: _chain_graph(("default", "default", "default")),
    "W2": _w2_graph,
    "W3": _w3_graph,
    "W4": lambda: _chain_graph((SMALL_MODEL, SMALL_MODEL, LARGE_MODEL)),
    "W5": _w5_graph,
    "W6": _w6_graph,
    "W7": _w7_graph,
    "W8": _w8_graph,
    "W2A": _w2a_graph,
    "W3A": _w3a_graph,
    "W5A": _w5a_graph,
    "W6A": _w6a_graph,
}
"""The LangGraph version of each workload that has one, by key (compiled on first use)."""


@functools.cache
def workload_graph(key: str) -> Any:
    """The compiled graph of workload `key`; ValueError when it has none."""
    try:
        build = GRAPHS[key]
    except KeyError:
        raise ValueError(f"workload {key} has no LangGraph version") from None
    return build()


async def run_graph_batch(
    workload: Workload,
    ask: Ask,
    database: duckdb.DuckDBPyConnection,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[ProgramOutcome]:
    """Every query of the batch as one graph invocation, all in flight at once."""
    if len(workload.params) != len(workload.queries):
        raise ValueError(f"workload {workload.key} has no parameters for its graph")
    graph = workload_graph(workload.key)
    done = 0

    async def one(params: Mapping[str, Any]) -> ProgramOutcome:
        nonlocal done
        tally = Tally(ask)
        config: RunnableConfig = {
            "configurable": {"ctx": Context(tally, database)}, "recursion_limit": 50
        }
        began = time.perf_counter()
        try:
            final = await graph.ainvoke({"params": dict(params)}, config)
            table, error = pa.Table.from_pylist(final.get("rows", [])), None
        except Exception as exc:  # a failing query is a finding to report, not a crash
            table, error = None, f"{type(exc).__name__}: {exc}"
        stats = tally.stats()
        stats["seconds"] = time.perf_counter() - began
        done += 1
        if progress is not None:
            progress(done)
        return ProgramOutcome(table, stats, error)

    return list(await asyncio.gather(*(one(p) for p in workload.params)))

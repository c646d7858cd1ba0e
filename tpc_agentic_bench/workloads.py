"""The six workloads: each a batch of N parameterized SQL queries over TPC-H's text columns.

`AGENT_WORKLOADS` adds agent-workflow variants of W2, W3, W5 and W6 (W2A..W6A): the same batches
as `AGENT(...)` table functions with SQL tools, their CREATE TOOL / CREATE AGENT statements in
`Workload.setup_sql`.

A workload is plain data (its SQL text, the statements that must run first on every session, the
model names it uses); the systems in `systems.py` decide how the batch runs. Parameters (customer
keys, nations, brands, months) are picked from the loaded TPC-H data by deterministic SQL, so the
same scale factor and N always give the same batch.

    >>> import duckdb
    >>> con = duckdb.connect()
    >>> build_workload("W1", con, 4)                                # doctest: +SKIP
    Workload(key='W1', name='multi-step retrieval', ...)

Every prompt starts with its workload's role preamble and keeps row data last (STYLE.md rule 6),
as an application would write them: prompts then share long prefixes, which is what prefix
caching and batch consolidation can exploit. Text answers are capped (`max_tokens`) because the
tiny random-weight test model never stops on its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb


@dataclass(frozen=True)
class Workload:
    """One workload instance: a batch of queries ready to run."""

    key: str
    """Short id, "W1".."W6", or "W2A".."W6A" for the agent variants."""
    name: str
    description: str
    queries: tuple[str, ...]
    """The batch, in input order; every query has a deterministic ORDER BY."""
    models: tuple[str, ...] = ("default",)
    """Model names the queries call; the harness defines every name but "default" with
    CREATE MODEL on each session (see `harness.ModelSetup`)."""
    setup_sql: tuple[str, ...] = ()
    """Statements the harness runs on every fresh session before the batch (CREATE TOOL /
    CREATE AGENT of the agent workloads); they are not timed and not part of the batch."""
    shapes: int = 1
    """Distinct query shapes in the batch (its first `shapes` queries cover all of them); the
    harness runs those once before timing, so that one-time work (starting an engine, compiling
    an output grammar) is not charged to whichever system happens to run first."""
    params: tuple[dict[str, Any], ...] = ()
    """The values each query was built from (customer key, brand and size, shape, nation and
    month), in input order: the plain-program baselines (`programs.py`) run the same query from
    them without parsing its SQL. Empty for a workload that has no program."""

    def head(self, n: int) -> Workload:
        """The workload cut to its first `n` queries (warm-ups, scaling steps)."""
        return dataclasses.replace(self, queries=self.queries[:n], params=self.params[:n])


def sql_string(text: str) -> str:
    """A SQL string literal.

    >>> sql_string("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def _sample(con: duckdb.DuckDBPyConnection, sql: str, n: int) -> list[tuple]:
    """The first `n` rows of `sql`, cycled when it has fewer (tiny scale factors)."""
    rows = con.sql(sql).fetchall()
    if not rows:
        raise ValueError(f"no parameter rows for the workload: {sql}")
    return [rows[i % len(rows)] for i in range(n)]


def _customers(con: duckdb.DuckDBPyConnection, n: int, salt: int) -> list[int]:
    # A fixed multiplicative shuffle spreads the picks over the key range; any scale works.
    sql = (
        "SELECT o_custkey FROM orders GROUP BY o_custkey HAVING count(*) >= 3 "
        f"ORDER BY (o_custkey * 7919 + {salt}) % 10007, o_custkey LIMIT {n}"
    )
    return [int(row[0]) for row in _sample(con, sql, n)]


# -- W1 multi-step retrieval ---------------------------------------------------------------------

_W1_ROLE = (
    "You are the account assistant of a wholesale parts supplier. You help account managers "
    "prepare customer calls. Be concise and factual, and answer in one short sentence. "
)
_PROFILE_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "interest": {"enum": ["parts", "logistics", "pricing", "service"]},
            "risk": {"enum": ["low", "medium", "high"]},
        },
        "required": ["interest", "risk"],
    }
)


def _chain_query(custkey: int, role: str, models: tuple[str, str, str] | None) -> str:
    """summarize orders -> extract a profile -> recommend, for one customer, as chained CTEs."""

    def model(step: int) -> str:
        return f", model => {sql_string(models[step])}" if models else ""

    summarize = sql_string(role + "Summarize what this customer orders and any problems they had.")
    extract = sql_string(role + "Extract the customer's profile from this summary: {summarized.summary}")
    recommend = sql_string(
        role + "Recommend one next action for the account manager. "
        "Segment: {profiled.c_mktsegment}. Profile: {profiled.profile}. "
        "Summary: {profiled.summary}"
    )
    return f"""WITH recent AS (
    SELECT c.c_custkey, c.c_mktsegment, o.o_comment
    FROM customer c JOIN orders o ON o.o_custkey = c.c_custkey
    WHERE c.c_custkey = {custkey}
    ORDER BY o.o_orderdate DESC, o.o_orderkey
    LIMIT 4
), summarized AS (
    SELECT c_custkey, c_mktsegment,
           LLM_AGG({summarize}, o_comment, max_tokens => 24{model(0)}) AS summary
    FROM recent GROUP BY c_custkey, c_mktsegment
), profiled AS (
    SELECT c_custkey, c_mktsegment, summary,
           LLM_EXTRACT({extract}, {sql_string(_PROFILE_SCHEMA)}, max_tokens => 40{model(1)}) AS profile
    FROM summarized
)
SELECT c_custkey, summary, profile,
       LLM({recommend}, max_tokens => 24{model(2)}) AS recommendation
FROM profiled ORDER BY c_custkey"""


def w1_multi_step(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    customers = _customers(con, n, salt=1)
    queries = tuple(_chain_query(c, _W1_ROLE, None) for c in customers)
    return Workload(
        "W1",
        "multi-step retrieval",
        "per customer: summarize recent orders (LLM_AGG) -> extract a profile (LLM_EXTRACT) -> "
        "recommend (LLM), as chained CTEs",
        queries,
        params=tuple({"custkey": c} for c in customers),
    )


# -- W2 adversarial reasoning --------------------------------------------------------------------

_W2_ROLE = (
    "You are a logistics analyst of a wholesale parts supplier reviewing open orders. "
    "Think about delivery risk, priority and the clerk's note before you answer. "
)


def _w2_questions(custkey: int) -> str:
    """The opening CTE W2 and W2A share: three delivery questions about one customer's orders."""
    return f"""WITH questions AS (
    SELECT o_orderkey,
           'Will order ' || o_orderkey || ' (priority ' || o_orderpriority || ', status '
               || o_orderstatus || ') be delivered on time? Clerk note: ' || o_comment AS question
    FROM orders WHERE o_custkey = {custkey}
    ORDER BY o_orderkey LIMIT 3
), """


def w2_adversarial(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    answer = sql_string(_W2_ROLE + "Answer the question in one sentence. Question: {questions.question}")
    critique = sql_string(
        _W2_ROLE + "Critique the answer: point out what it gets wrong or leaves out. "
        "Question: {answered.question} Answer: {answered.answer}"
    )
    revise = sql_string(
        _W2_ROLE + "Revise the answer so that it addresses the critique. "
        "Question: {critiqued.question} Answer: {critiqued.answer} "
        "Critique: {critiqued.critique}"
    )
    queries = []
    customers = _customers(con, n, salt=2)
    for custkey in customers:
        queries.append(_w2_questions(custkey) + f"""answered AS (
    SELECT o_orderkey, question, LLM({answer}, max_tokens => 24) AS answer FROM questions
), critiqued AS (
    SELECT o_orderkey, question, answer,
           LLM({critique}, max_tokens => 24) AS critique
    FROM answered
)
SELECT o_orderkey, answer, critique,
       LLM({revise}, max_tokens => 24) AS revised
FROM critiqued ORDER BY o_orderkey""")
    return Workload(
        "W2",
        "adversarial reasoning",
        "per customer's orders: answer -> critique -> revise (three chained LLM maps)",
        tuple(queries),
        params=tuple({"custkey": c} for c in customers),
    )


# -- W3 multi-agent voting -----------------------------------------------------------------------

_W3_JUDGES = (
    ("strict", "You are a strict quality inspector. Decide whether this part listing can be "
               "published as it is. Listing: {item}"),
    ("sales", "You are an optimistic sales manager. Decide whether this part listing can be "
              "published as it is. Listing: {item}"),
    ("legal", "You are a cautious legal reviewer. Decide whether this part listing can be "
              "published as it is. Listing: {item}"),
)


def _listing_size(index: int) -> int:
    """The minimum part size of query `index` of W3/W3A: with brand `index % 25` it gives 1,250
    distinct (brand, size) pairs before repeating (the first 50 as in the recorded runs)."""
    return 1 + (index * 7 + index // 50) % 50


def w3_voting(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    brands = _sample(con, "SELECT DISTINCT p_brand FROM part ORDER BY p_brand", n)
    labels = "['accept', 'reject']"
    verdict = sql_string(
        "You are the chair of a review panel. Combine the judges' votes on this part listing "
        "into one final decision with a short reason."
    )
    queries = []
    for index, (brand,) in enumerate(brands):
        size = _listing_size(index)
        judges = ",\n           ".join(
            f"LLM_CLASSIFY({sql_string(text)}, {labels}) AS {name}" for name, text in _W3_JUDGES
        )
        votes = " UNION ALL ".join(
            f"SELECT p_partkey, '{name}: ' || {name} AS vote FROM judged" for name, _ in _W3_JUDGES
        )
        queries.append(f"""WITH listings AS (
    SELECT p_partkey, p_name || ' (' || p_type || ', size ' || p_size || '): ' || p_comment AS item
    FROM part WHERE p_brand = {sql_string(brand)} AND p_size >= {size}
    ORDER BY p_partkey LIMIT 3
), judged AS (
    SELECT p_partkey,
           {judges}
    FROM listings
), votes AS ({votes})
SELECT p_partkey, LLM_AGG({verdict}, vote, max_tokens => 24) AS decision
FROM votes GROUP BY p_partkey ORDER BY p_partkey""")
    return Workload(
        "W3",
        "multi-agent voting",
        "per part listing: three judges with different instructions (LLM_CLASSIFY) over the "
        "same input, then an aggregating call (LLM_AGG) over their votes",
        tuple(queries),
        params=tuple(
            {"brand": brand, "size": _listing_size(i)} for i, (brand,) in enumerate(brands)
        ),
    )


# -- W4 multi-model ------------------------------------------------------------------------------

SMALL_MODEL = "small"
LARGE_MODEL = "large"


def w4_multi_model(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    models = (SMALL_MODEL, SMALL_MODEL, LARGE_MODEL)  # cheap model for the early steps
    customers = _customers(con, n, salt=4)
    queries = tuple(_chain_query(c, _W1_ROLE, models) for c in customers)
    return Workload(
        "W4",
        "multi-model",
        "the W1 chain with two models: the small model summarizes and extracts, the large "
        "model recommends",
        queries,
        models=(SMALL_MODEL, LARGE_MODEL),
        params=tuple({"custkey": c} for c in customers),
    )


# -- W5 relational + LLM analytics ---------------------------------------------------------------

_W5_ROLE = "You review order and supplier notes for a wholesale parts supplier. "
_PROBLEM = sql_string(_W5_ROLE + "Does this order note report a delay or a problem? Note: {o_comment}")


def _w5_query(shape: int, nation: int, month: str) -> str:
    orders = (
        "FROM orders JOIN customer ON o_custkey = c_custkey "
        f"WHERE c_nationkey = {nation} "
        f"AND o_orderdate >= DATE '{month}-01' AND o_orderdate < DATE '{month}-01' + INTERVAL 1 MONTH"
    )
    if shape == 0:  # LLM filter under a relational top-k
        return f"""SELECT o_orderkey, o_totalprice {orders}
  AND LLM_FILTER({_PROBLEM})
ORDER BY o_totalprice DESC, o_orderkey LIMIT 3"""
    if shape == 1:  # LLM projection
        rate = sql_string(_W5_ROLE + "Rate this supplier from its note. Note: {s_comment}")
        return f"""SELECT s_suppkey, s_name,
       LLM_CLASSIFY({rate}, ['reliable', 'unreliable', 'unclear']) AS rating
FROM supplier WHERE s_nationkey = {nation} ORDER BY s_suppkey"""
    if shape == 2:  # several LLM calls in one query: a filter, then a classification and a map
        urgency = sql_string(_W5_ROLE + "How urgent is this note? Note: {o_comment}")
        reply = sql_string(_W5_ROLE + "Draft a one-line reply to the customer. Note: {o_comment}")
        return f"""SELECT o_orderkey,
       LLM_CLASSIFY({urgency}, ['low', 'medium', 'high']) AS urgency,
       LLM({reply}, max_tokens => 16) AS reply
{orders}
  AND LLM_FILTER({_PROBLEM})
ORDER BY o_orderkey"""
    # aggregation over LLM outputs, grouped relationally
    score = sql_string(_W5_ROLE + "Rate the customer's satisfaction from 1 to 5. Note: {o_comment}")
    return f"""SELECT o_orderpriority, count(*) AS orders,
       avg(CAST(LLM_CLASSIFY({score}, ['1', '2', '3', '4', '5']) AS INTEGER)) AS satisfaction
{orders}
GROUP BY o_orderpriority ORDER BY o_orderpriority"""


def w5_analytics(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    months = [f"{1993 + (g % 5)}-{1 + (g * 5) % 12:02d}" for g in range(n)]
    queries = []
    params = []
    for i in range(n):
        group = i // 4  # the four shapes of a group look at the same nation and month
        nation = (group * 7 + 3) % 25
        queries.append(_w5_query(i % 4, nation, months[group]))
        params.append({"shape": i % 4, "nation": nation, "month": months[group]})
    return Workload(
        "W5",
        "relational + LLM analytics",
        "dashboard batches of four query shapes per (nation, month): LLM filter under a "
        "top-k, LLM projection, filter + two maps, and a GROUP BY over LLM scores",
        tuple(queries),
        shapes=min(4, n),
        params=tuple(params),
    )


# -- W6 fan-out ----------------------------------------------------------------------------------

_W6_TOOLS = (
    ("order_count", "SELECT CAST(count(*) AS VARCHAR) AS order_count FROM orders "
                    "WHERE o_custkey = {c}"),
    ("total_spent", "SELECT CAST(round(sum(o_totalprice), 2) AS VARCHAR) AS total_spent "
                    "FROM orders WHERE o_custkey = {c}"),
    ("late_lines", "SELECT CAST(count(*) AS VARCHAR) AS late_lines FROM lineitem JOIN orders "
                   "ON l_orderkey = o_orderkey WHERE o_custkey = {c} AND l_receiptdate > l_commitdate"),
    ("returned_lines", "SELECT CAST(count(*) AS VARCHAR) AS returned_lines FROM lineitem "
                       "JOIN orders ON l_orderkey = o_orderkey WHERE o_custkey = {c} "
                       "AND l_returnflag = 'R'"),
    ("favourite_ship_mode", "SELECT min(l_shipmode) AS favourite_ship_mode FROM lineitem "
                            "JOIN orders ON l_orderkey = o_orderkey WHERE o_custkey = {c}"),
    ("account", "SELECT c_mktsegment || ', balance ' || c_acctbal || ': ' || c_comment AS account "
                "FROM customer WHERE c_custkey = {c}"),
)
"""W6's SQL "tools" (and W6A's SQL tools), `{c}` the customer key. Each names its column: an SQL
tool's result shows the agent its column names, and an unnamed expression's name would be
whatever text the SQL engine prints for it (halo's tool runner re-renders a tool's SQL, so
`CAST(... AS VARCHAR)` would read `CAST(... AS TEXT)` there and not in a plain program)."""


def w6_fan_out(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    explain = sql_string(
        "You prepare account reviews for a wholesale parts supplier. Explain in one sentence "
        "what this tool result says about the customer. Tool: {tool}. Result: {result}"
    )
    review = sql_string(
        "You prepare account reviews for a wholesale parts supplier. Write the review of the "
        "customer from these findings."
    )
    queries = []
    customers = _customers(con, n, salt=6)
    for custkey in customers:
        tools = "\n    UNION ALL ".join(
            f"SELECT {sql_string(name)} AS tool, ({sql.format(c=custkey)}) AS result"
            for name, sql in _W6_TOOLS
        )
        queries.append(f"""WITH tool_results AS (
    {tools}
), findings AS (
    SELECT tool, LLM({explain}, max_tokens => 16) AS finding FROM tool_results
)
SELECT {custkey} AS c_custkey, LLM_AGG({review}, finding, max_tokens => 24) AS review
FROM findings""")
    return Workload(
        "W6",
        "fan-out",
        "per customer: six SQL 'tool' sub-queries, each result explained by the model (fan-out), "
        "then one review over all findings (LLM_AGG, fan-in)",
        tuple(queries),
        params=tuple({"custkey": c} for c in customers),
    )


# -- W7 dashboard over a shared LLM CTE ----------------------------------------------------------

_W7_ROLE = "You summarize order notes for the account dashboard of a wholesale parts supplier. "
_W7_FROM, _W7_TO = "1995-03-01", "1995-03-16"
"""The dashboard's window: the first half of March 1995 (~950 orders at SF 0.1)."""
_W7_SUMMARY = _W7_ROLE + "Summarize the order note in one short sentence. Note: {o_comment}"
_W7_PROBLEM = _W7_ROLE + "Does this order note report a delay or a problem? Note: {o_comment}"
_W7_TONE = _W7_ROLE + "What is the tone of this summary? Summary: {summary}"
_W7_PRIORITIES = ("1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW")


def _w7_summaries() -> str:
    summarize = sql_string(_W7_SUMMARY)
    return f"""WITH notes AS (
    SELECT o_orderkey, o_custkey, o_orderpriority, o_totalprice, o_orderdate, o_comment,
           LLM({summarize}, max_tokens => 16) AS summary
    FROM orders WHERE o_orderdate >= DATE '{_W7_FROM}' AND o_orderdate < DATE '{_W7_TO}'
)
"""


def w7_dashboard(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    window = f"o_orderdate >= DATE '{_W7_FROM}' AND o_orderdate < DATE '{_W7_TO}'"
    customers = [int(r[0]) for r in _sample(
        con,
        f"SELECT o_custkey FROM orders WHERE {window} GROUP BY o_custkey "
        "ORDER BY (o_custkey * 7919 + 7) % 10007, o_custkey",
        n,
    )]
    priorities = _W7_PRIORITIES
    problem, tone = sql_string(_W7_PROBLEM), sql_string(_W7_TONE)
    queries = []
    params = []
    for i in range(n):
        shape, customer, priority = i % 4, customers[i], priorities[(i // 4) % len(priorities)]
        params.append({"shape": shape, "custkey": customer, "priority": priority})
        if shape == 0:  # a customer's orders with their summaries
            panel = f"""SELECT o_orderkey, o_orderdate, summary FROM notes
WHERE o_custkey = {customer} ORDER BY o_orderkey"""
        elif shape == 1:  # the largest orders of one priority
            panel = f"""SELECT o_orderkey, o_totalprice, summary FROM notes
WHERE o_orderpriority = {sql_string(priority)}
ORDER BY o_totalprice DESC, o_orderkey LIMIT 3"""
        elif shape == 2:  # a customer's orders whose note reports a problem
            panel = f"""SELECT o_orderkey, summary FROM notes
WHERE o_custkey = {customer} AND LLM_FILTER({problem})
ORDER BY o_orderkey"""
        else:  # the tone of the latest summaries
            panel = f"""SELECT o_orderkey,
       LLM_CLASSIFY({tone}, ['calm', 'concerned', 'upset']) AS tone
FROM notes ORDER BY o_orderdate DESC, o_orderkey LIMIT 2"""
        queries.append(_w7_summaries() + panel)
    return Workload(
        "W7",
        "dashboard",
        "panels over one shared LLM CTE (summaries of a half month's orders) with selective "
        "filters and LIMITs: a customer's orders, the top orders of a priority, a customer's "
        "problem orders (LLM filter), the tone of the latest summaries",
        tuple(queries),
        shapes=min(4, n),
        params=tuple(params),
    )


# -- W8 semantic join ----------------------------------------------------------------------------

_W8_ROLE = "You review order notes of a wholesale parts supplier. "
_W8_MATCH = _W8_ROLE + "Could the order note \"{n.o_comment}\" be about parts made of {m.material}?"
_W8_URGENCY = _W8_ROLE + "How urgent is this order note? Note: {n.o_comment}"
_W8_LEVELS = ("low", "medium", "high", "critical")


def w8_semantic_join(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    match, urgency = sql_string(_W8_MATCH), sql_string(_W8_URGENCY)
    customers = _customers(con, n, salt=8)
    queries = tuple(
        f"""WITH notes AS (
    SELECT o_orderkey, o_comment FROM orders WHERE o_custkey = {customer}
), materials AS (
    SELECT DISTINCT split_part(p_type, ' ', 3) AS material FROM part
)
SELECT n.o_orderkey, m.material
FROM notes AS n, materials AS m
WHERE LLM_FILTER({match})
  AND LLM_CLASSIFY({urgency}, ['low', 'medium', 'high', 'critical']) = 'critical'
ORDER BY n.o_orderkey, m.material"""
        for customer in customers
    )
    return Workload(
        "W8",
        "semantic join",
        "per customer: order notes joined with part materials by an LLM predicate over the "
        "pairs, plus a per-note urgency classification (written after the join predicate)",
        queries,
        params=tuple({"custkey": c} for c in customers),
    )


# -- agent workflows (issue 7): W2, W3, W5 and W6 as AGENT table functions with SQL tools ---------
#
# Agents and tools are session state: each workload's `setup_sql` defines them (CREATE OR
# REPLACE, so re-running on a session is harmless). Names carry the workload key so workloads
# never see each other's definitions. Every text reply is capped (max_tokens, maxLength) because
# the random-weight tiny model only stops where the reply's JSON schema makes it stop.

_ORDER_LINES_SQL = (
    "SELECT l_linenumber, l_shipdate, l_commitdate, l_receiptdate, l_shipmode FROM lineitem "
    "WHERE l_orderkey = :orderkey ORDER BY l_linenumber"
)
_ORDER_LINES_ABOUT = "Line items of an order with their ship, commit and receipt dates."
_ORDER_LINES_TOOL = (
    "CREATE OR REPLACE TOOL {name} AS SQL "
    + sql_string(_ORDER_LINES_SQL)
    + " WITH (parameters => '{{\"orderkey\": \"integer\"}}', "
    f"description => {sql_string(_ORDER_LINES_ABOUT)})"
)


AGENT_MAX_TOKENS = 96
"""Tokens per agent reply: room for the JSON wrapper, a tool call or an answer of
`AGENT_TEXT_CHARS` characters (a cut-off reply does not parse and costs the agent a step)."""
AGENT_TEXT_CHARS = 40
"""Longest text answer (JSON schema maxLength) of the agents."""
_TEXT_OUTPUT = f"output => '{{\"type\": \"string\", \"maxLength\": {AGENT_TEXT_CHARS}}}'"


def _agent(name: str, instructions: str, options: str) -> str:
    return (
        f"CREATE OR REPLACE AGENT {name} WITH (instructions => {sql_string(instructions)}, "
        f"{options})"
    )


_W2A_ANALYST = _W2_ROLE + "Answer the question in one sentence."
_W2A_CRITIC = (_W2_ROLE + "Critique the draft answer to the question: point out what it gets "
               "wrong or leaves out. Set ok to true when nothing needs to change.")
_W2A_REVISER = (_W2_ROLE + "Revise the draft answer so that it addresses the critique. "
                "Answer in one sentence.")


def w2a_reflection_agents(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    setup = (
        _ORDER_LINES_TOOL.format(name="w2a_order_lines"),
        _agent("w2a_analyst", _W2A_ANALYST,
               f"tools => [w2a_order_lines], max_steps => 3, max_tokens => {AGENT_MAX_TOKENS}, "
               + _TEXT_OUTPUT),
        _agent("w2a_critic", _W2A_CRITIC,
               f"tools => [w2a_order_lines], max_steps => 2, max_tokens => {AGENT_MAX_TOKENS}, "
               "output => '{\"ok\": \"boolean\", \"critique\": {\"type\": \"string\", "
               f"\"maxLength\": {AGENT_TEXT_CHARS}}}}}'"),
        _agent("w2a_reviser", _W2A_REVISER,
               f"max_steps => 1, max_tokens => {AGENT_MAX_TOKENS}, "
               + _TEXT_OUTPUT),
    )
    queries = []
    customers = _customers(con, n, salt=2)
    for custkey in customers:
        queries.append(_w2_questions(custkey) + """answered AS (
    SELECT o_orderkey, question, answer AS draft
    FROM AGENT('w2a_analyst', input => (SELECT * FROM questions))
), critiqued AS (
    SELECT o_orderkey, question, draft, ok, critique
    FROM AGENT('w2a_critic', input => (SELECT * FROM answered))
), revised AS (
    SELECT o_orderkey, answer AS revision
    FROM AGENT('w2a_reviser', input => (SELECT * FROM critiqued WHERE NOT coalesce(ok, false)))
)
SELECT c.o_orderkey, c.draft, c.ok, c.critique, coalesce(r.revision, c.draft) AS final
FROM critiqued c LEFT JOIN revised r USING (o_orderkey)
ORDER BY c.o_orderkey""")
    return Workload(
        "W2A",
        "reflection agents",
        "W2 as agents: per customer's orders an analyst agent (SQL tool: the order's line items) "
        "answers, a critic agent reviews the draft, a reviser agent rewrites rejected drafts",
        tuple(queries),
        setup_sql=setup,
        params=tuple({"custkey": c} for c in customers),
    )


_PART_SUPPLY_SQL = (
    "SELECT ps_suppkey, ps_availqty, ps_supplycost FROM partsupp "
    "WHERE ps_partkey = :partkey ORDER BY ps_supplycost LIMIT 5"
)
_PART_SUPPLY_ABOUT = "Suppliers, stock and unit cost of a part."
_PART_SUPPLY_TOOL = (
    "CREATE OR REPLACE TOOL w3a_part_supply AS SQL "
    + sql_string(_PART_SUPPLY_SQL)
    + " WITH (parameters => '{\"partkey\": \"integer\"}', "
    f"description => {sql_string(_PART_SUPPLY_ABOUT)})"
)


def w3a_judge_instructions(text: str) -> str:
    """A W3 judge's template as a W3A judge agent's instructions (the listing is its input)."""
    return text.removesuffix(" Listing: {item}")


def w3a_voting_agents(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    setup = [_PART_SUPPLY_TOOL]
    for name, text in _W3_JUDGES:
        setup.append(_agent(
            f"w3a_{name}_judge", w3a_judge_instructions(text),
            f"tools => [w3a_part_supply], max_steps => 3, max_tokens => {AGENT_MAX_TOKENS}, "
            "output => ['accept', 'reject']",
        ))
    brands = _sample(con, "SELECT DISTINCT p_brand FROM part ORDER BY p_brand", n)
    verdict = sql_string(
        "You are the chair of a review panel. Combine the judges' votes on this part listing "
        "into one final decision with a short reason."
    )
    queries = []
    for index, (brand,) in enumerate(brands):
        size = _listing_size(index)
        votes = "\n    UNION ALL\n    ".join(
            f"SELECT p_partkey, '{name}: ' || answer AS vote "
            f"FROM AGENT('w3a_{name}_judge', input => (SELECT * FROM listings))"
            for name, _ in _W3_JUDGES
        )
        queries.append(f"""WITH listings AS (
    SELECT p_partkey, p_name || ' (' || p_type || ', size ' || p_size || '): ' || p_comment AS item
    FROM part WHERE p_brand = {sql_string(brand)} AND p_size >= {size}
    ORDER BY p_partkey LIMIT 3
), votes AS (
    {votes}
)
SELECT p_partkey, LLM_AGG({verdict}, vote, max_tokens => 24) AS decision
FROM votes GROUP BY p_partkey ORDER BY p_partkey""")
    return Workload(
        "W3A",
        "voting agents",
        "W3 as agents: three judge agents (SQL tool: the part's suppliers and stock) over the "
        "same listings, then LLM_AGG over their votes",
        tuple(queries),
        setup_sql=tuple(setup),
        params=tuple(
            {"brand": brand, "size": _listing_size(i)} for i, (brand,) in enumerate(brands)
        ),
    )


_CUSTOMER_ORDERS_SQL = (
    "SELECT o_orderkey, o_orderdate, o_orderpriority, o_totalprice FROM orders "
    "WHERE o_custkey = :custkey ORDER BY o_orderdate DESC, o_orderkey LIMIT 5"
)
_CUSTOMER_ORDERS_ABOUT = "The most recent orders of a customer."
_W5A_ANALYST = (_W5_ROLE + "Decide whether this order is delayed or has a problem; look up its "
                "line items or the customer's other orders when the note is not enough.")
_W5A_VERDICTS = ("on_time", "delayed", "problem")


def w5a_analytics_agent(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    setup = (
        _ORDER_LINES_TOOL.format(name="w5a_order_lines"),
        "CREATE OR REPLACE TOOL w5a_customer_orders AS SQL "
        + sql_string(_CUSTOMER_ORDERS_SQL)
        + " WITH (parameters => '{\"custkey\": \"integer\"}', "
        f"description => {sql_string(_CUSTOMER_ORDERS_ABOUT)})",
        _agent("w5a_delay_analyst", _W5A_ANALYST,
               "tools => [w5a_order_lines, w5a_customer_orders], max_steps => 3, "
               f"max_tokens => {AGENT_MAX_TOKENS}, output => ['on_time', 'delayed', 'problem']"),
    )
    months = [f"{1993 + (g % 5)}-{1 + (g * 5) % 12:02d}" for g in range(n)]
    queries = []
    params = []
    for i in range(n):
        group = i // 2  # the two shapes of a group look at the same nation and month
        nation, month = (group * 7 + 3) % 25, months[group]
        params.append({"shape": i % 2, "nation": nation, "month": month})
        orders = (
            "FROM orders JOIN customer ON o_custkey = c_custkey "
            f"WHERE c_nationkey = {nation} AND o_orderdate >= DATE '{month}-01' "
            f"AND o_orderdate < DATE '{month}-01' + INTERVAL 1 MONTH"
        )
        inputs = (
            f"SELECT o_orderkey, o_custkey, o_orderpriority, o_comment {orders} "
            "ORDER BY o_totalprice DESC, o_orderkey LIMIT 3"
        )
        if i % 2 == 0:  # the agent over a relational top-k, aggregated relationally
            queries.append(f"""SELECT answer AS verdict, count(*) AS orders, min(o_orderkey) AS first_order
FROM AGENT('w5a_delay_analyst', input => ({inputs}))
GROUP BY answer ORDER BY answer""")
        else:  # the same agent per row, joined back to the order's customer
            queries.append(f"""SELECT a.o_orderkey, c.c_name, a.answer AS verdict, a.steps
FROM AGENT('w5a_delay_analyst', input => ({inputs})) AS a
JOIN customer c ON c.c_custkey = a.o_custkey
ORDER BY a.o_orderkey""")
    return Workload(
        "W5A",
        "analytics agent",
        "W5 as an agent: per (nation, month) an analyst agent with two SQL tools over TPC-H "
        "(line items of an order, a customer's recent orders) judges the top-3 orders; the "
        "result is grouped, or joined back to customers",
        tuple(queries),
        setup_sql=setup,
        shapes=min(2, n),
        params=tuple(params),
    )


_W6A_REVIEWER = (
    "You prepare account reviews for a wholesale parts supplier. Look up what you need "
    "about the customer with the tools, then write the review of the customer."
)


def w6a_tool_description(name: str) -> str:
    """The description of W6A's SQL tool for W6's sub-query `name`."""
    return name.replace("_", " ") + " of a customer"


def w6a_fan_out_agent(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    setup = [
        f"CREATE OR REPLACE TOOL w6a_{name} AS SQL "
        + sql_string(sql.replace("{c}", ":custkey"))
        + " WITH (parameters => '{\"custkey\": \"integer\"}', "
        + f"description => {sql_string(w6a_tool_description(name))})"
        for name, sql in _W6_TOOLS
    ]
    tools = ", ".join(f"w6a_{name}" for name, _ in _W6_TOOLS)
    setup.append(_agent(
        "w6a_account_reviewer", _W6A_REVIEWER,
        f"tools => [{tools}], max_steps => 4, max_tokens => {AGENT_MAX_TOKENS}, "
        + _TEXT_OUTPUT,
    ))
    customers = _customers(con, n, salt=6)
    queries = tuple(
        f"""SELECT c_custkey, answer AS review, steps, len(tool_calls) AS calls
FROM AGENT('w6a_account_reviewer', input => (
    SELECT c_custkey, c_name, c_mktsegment FROM customer WHERE c_custkey = {custkey}))
ORDER BY c_custkey"""
        for custkey in customers
    )
    return Workload(
        "W6A",
        "fan-out agent",
        "W6 as an agent: per customer a reviewer agent whose six SQL tools are the W6 "
        "sub-queries (the model picks which to call) writes the account review",
        queries,
        setup_sql=tuple(setup),
        params=tuple({"custkey": c} for c in customers),
    )


WORKLOADS: dict[str, Callable[[duckdb.DuckDBPyConnection, int], Workload]] = {
    "W1": w1_multi_step,
    "W2": w2_adversarial,
    "W3": w3_voting,
    "W4": w4_multi_model,
    "W5": w5_analytics,
    "W6": w6_fan_out,
    "W7": w7_dashboard,
    "W8": w8_semantic_join,
}
"""The workloads by key, in report order: the default run (W1..W6 of issue 6, W7 and W8 where
plans matter, issue 12)."""

AGENT_WORKLOADS: dict[str, Callable[[duckdb.DuckDBPyConnection, int], Workload]] = {
    "W2A": w2a_reflection_agents,
    "W3A": w3a_voting_agents,
    "W5A": w5a_analytics_agent,
    "W6A": w6a_fan_out_agent,
}
"""Agent-workflow variants (issue 7): selected with `--agents` or `--workloads W2A,...`."""

ALL_WORKLOADS = {**WORKLOADS, **AGENT_WORKLOADS}
"""Every workload builder by key: the defaults, then the agent variants."""


def build_workload(key: str, con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    """The workload `key` with `n` queries, parameters drawn from the TPC-H data in `con`."""
    try:
        builder = ALL_WORKLOADS[key.upper()]
    except KeyError:
        raise ValueError(
            f"unknown workload {key!r} (choose from {', '.join(ALL_WORKLOADS)})"
        ) from None
    if n < 1:
        raise ValueError("a workload needs at least one query")
    return builder(con, n)

"""The six workloads: each a batch of N parameterized SQL queries over TPC-H's text columns.

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

import json
from collections.abc import Callable
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Workload:
    """One workload instance: a batch of queries ready to run."""

    key: str
    """Short id, "W1".."W6"."""
    name: str
    description: str
    queries: tuple[str, ...]
    """The batch, in input order; every query has a deterministic ORDER BY."""
    models: tuple[str, ...] = ("default",)
    """Model names the queries call; the harness defines every name but "default" with
    CREATE MODEL on each session (see `harness.ModelSetup`)."""
    shapes: int = 1
    """Distinct query shapes in the batch (its first `shapes` queries cover all of them); the
    harness runs those once before timing, so that one-time work (starting an engine, compiling
    an output grammar) is not charged to whichever system happens to run first."""


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
    queries = tuple(_chain_query(c, _W1_ROLE, None) for c in _customers(con, n, salt=1))
    return Workload(
        "W1",
        "multi-step retrieval",
        "per customer: summarize recent orders (LLM_AGG) -> extract a profile (LLM_EXTRACT) -> "
        "recommend (LLM), as chained CTEs",
        queries,
    )


# -- W2 adversarial reasoning --------------------------------------------------------------------

_W2_ROLE = (
    "You are a logistics analyst of a wholesale parts supplier reviewing open orders. "
    "Think about delivery risk, priority and the clerk's note before you answer. "
)


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
    for custkey in _customers(con, n, salt=2):
        queries.append(f"""WITH questions AS (
    SELECT o_orderkey,
           'Will order ' || o_orderkey || ' (priority ' || o_orderpriority || ', status '
               || o_orderstatus || ') be delivered on time? Clerk note: ' || o_comment AS question
    FROM orders WHERE o_custkey = {custkey}
    ORDER BY o_orderkey LIMIT 3
), answered AS (
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


def w3_voting(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    brands = _sample(con, "SELECT DISTINCT p_brand FROM part ORDER BY p_brand", n)
    labels = "['accept', 'reject']"
    verdict = sql_string(
        "You are the chair of a review panel. Combine the judges' votes on this part listing "
        "into one final decision with a short reason."
    )
    queries = []
    for index, (brand,) in enumerate(brands):
        size = 1 + (index * 7) % 50
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
    )


# -- W4 multi-model ------------------------------------------------------------------------------

SMALL_MODEL = "small"
LARGE_MODEL = "large"


def w4_multi_model(con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    models = (SMALL_MODEL, SMALL_MODEL, LARGE_MODEL)  # cheap model for the early steps
    queries = tuple(_chain_query(c, _W1_ROLE, models) for c in _customers(con, n, salt=4))
    return Workload(
        "W4",
        "multi-model",
        "the W1 chain with two models: the small model summarizes and extracts, the large "
        "model recommends",
        queries,
        models=(SMALL_MODEL, LARGE_MODEL),
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
    for i in range(n):
        group = i // 4  # the four shapes of a group look at the same nation and month
        queries.append(_w5_query(i % 4, (group * 7 + 3) % 25, months[group]))
    return Workload(
        "W5",
        "relational + LLM analytics",
        "dashboard batches of four query shapes per (nation, month): LLM filter under a "
        "top-k, LLM projection, filter + two maps, and a GROUP BY over LLM scores",
        tuple(queries),
        shapes=min(4, n),
    )


# -- W6 fan-out ----------------------------------------------------------------------------------

_W6_TOOLS = (
    ("order_count", "SELECT CAST(count(*) AS VARCHAR) FROM orders WHERE o_custkey = {c}"),
    ("total_spent", "SELECT CAST(round(sum(o_totalprice), 2) AS VARCHAR) FROM orders "
                    "WHERE o_custkey = {c}"),
    ("late_lines", "SELECT CAST(count(*) AS VARCHAR) FROM lineitem JOIN orders ON l_orderkey = "
                   "o_orderkey WHERE o_custkey = {c} AND l_receiptdate > l_commitdate"),
    ("returned_lines", "SELECT CAST(count(*) AS VARCHAR) FROM lineitem JOIN orders ON l_orderkey "
                       "= o_orderkey WHERE o_custkey = {c} AND l_returnflag = 'R'"),
    ("favourite_ship_mode", "SELECT min(l_shipmode) FROM lineitem JOIN orders ON l_orderkey = "
                            "o_orderkey WHERE o_custkey = {c}"),
    ("account", "SELECT c_mktsegment || ', balance ' || c_acctbal || ': ' || c_comment "
                "FROM customer WHERE c_custkey = {c}"),
)


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
    for custkey in _customers(con, n, salt=6):
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
    )


WORKLOADS: dict[str, Callable[[duckdb.DuckDBPyConnection, int], Workload]] = {
    "W1": w1_multi_step,
    "W2": w2_adversarial,
    "W3": w3_voting,
    "W4": w4_multi_model,
    "W5": w5_analytics,
    "W6": w6_fan_out,
}
"""Workload builders by key, in report order."""


def build_workload(key: str, con: duckdb.DuckDBPyConnection, n: int) -> Workload:
    """The workload `key` with `n` queries, parameters drawn from the TPC-H data in `con`."""
    try:
        builder = WORKLOADS[key.upper()]
    except KeyError:
        raise ValueError(f"unknown workload {key!r} (choose from {', '.join(WORKLOADS)})") from None
    if n < 1:
        raise ValueError("a workload needs at least one query")
    return builder(con, n)

"""How long the optimizer takes on a large statement: a 20-way join plus 5 LLM predicates.

    python -m halo_sql.optimizer.bench [--tables 20] [--predicates 5] [--repeat 5]

The join itself is DuckDB's to order (it is one relational source to this optimizer); the search
space is the order of the LLM predicates (and the rules' other rewrites), with statistics read
from DuckDB (row counts, argument samples, token counts). Prints the time of `optimize` alone
(the planner's work, parsing and binding, is reported apart) and the memo's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def build_sql(tables: int, predicates: int) -> str:
    joins = " ".join(f"JOIN t{i} ON t{i}.k = t{i - 1}.k" for i in range(1, tables))
    words = ["late", "broken", "a gift", "too loud", "expensive", "cheap", "fast", "red"]
    where = " AND ".join(
        f"LLM_FILTER('Does this text mention something {words[i % len(words)]}"
        f"{' in detail' * (i % 3)}? {{t{i % tables}.txt}}')"
        for i in range(predicates)
    )
    return f"SELECT t0.k, t{tables - 1}.txt FROM t0 {joins} WHERE t0.k % 3 = 0 AND {where}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halo_sql.optimizer.bench", description=__doc__)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--predicates", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200, help="rows per table")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import halo_sql
    from halo_sql.optimizer import OptimizerSettings, optimize, rule_names
    from halo_sql.optimizer.session_context import SessionContext

    con = halo_sql.connect(backend="sim")
    for i in range(args.tables):
        con.sql(
            f"CREATE TABLE t{i} AS SELECT range AS k, 'row ' || range || ' of table {i}' AS txt "
            f"FROM range({args.rows})"
        )
    session = con.session
    sql = build_sql(args.tables, args.predicates)
    session.optimizer_settings = OptimizerSettings(disabled=frozenset(rule_names()))
    began = time.perf_counter()
    raw = session.plan(sql)
    planning = time.perf_counter() - began
    session.optimizer_settings = OptimizerSettings()
    times = []
    plan = raw
    for _ in range(args.repeat):
        began = time.perf_counter()
        # A fresh context per run: statistics are cached per statement, so each run pays for
        # its DuckDB statistics queries and tokenization again.
        plan = optimize(raw, SessionContext(session, None), OptimizerSettings())
        times.append(time.perf_counter() - began)
    report = plan.optimizer
    print(f"statement: {args.tables}-way join, {args.predicates} LLM predicates, {args.rows} rows/table")
    print(f"planner (parse, bind, lift): {planning * 1000:.1f} ms")
    print(
        f"optimize: median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {args.repeat} runs"
    )
    print(
        f"memo: {report.groups} groups, {report.expressions} expressions, "
        f"{report.search.tasks} tasks, {report.search.rule_applications} rule applications"
    )
    print(f"estimated cost: {report.total.seconds:.3f} s, {report.total.requests:.0f} requests")
    print(f"under one second: {'yes' if max(times) < 1.0 else 'NO'}")
    con.close()
    return 0 if max(times) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

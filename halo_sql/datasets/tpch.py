"""TPC-H data generated with `tpchgen-cli` (deterministic), cached on disk, loaded into DuckDB.

    >>> import duckdb
    >>> con = duckdb.connect()
    >>> load_tpch(con, scale=0.01)                        # doctest: +SKIP
    {'customer': 1500, 'lineitem': 60175, ...}
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from halo_sql.errors import OperationalError

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HALO_CACHE_DIR", Path.cwd() / ".halo_cache"))


def generate_tpch(scale: float, cache_dir: str | Path | None = None) -> Path:
    """Parquet files of TPC-H at `scale`, generated once and reused (same scale, same data)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = root / f"tpch-sf{scale:g}"
    if all((out / f"{t}.parquet").is_file() for t in TABLES):
        return out
    root.mkdir(parents=True, exist_ok=True)
    # A private directory per generating process: two processes filling the cache at once
    # (parallel test runs, say) never write into each other's files.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".partial-", dir=root))
    cli = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    if not Path(cli).exists():
        raise OperationalError("tpchgen-cli is not installed: pip install tpchgen-cli")
    done = subprocess.run(
        [cli, "parquet", "-s", f"{scale:g}", "--output-dir", str(tmp)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise OperationalError(f"tpchgen-cli failed (scale {scale:g}): {done.stderr.strip()[-500:]}")
    if out.exists() and not all((out / f"{t}.parquet").is_file() for t in TABLES):
        shutil.rmtree(out, ignore_errors=True)  # left over from an interrupted run
    try:
        tmp.rename(out)  # atomic: a half-written directory is never mistaken for a cached one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: use its copy
        if not all((out / f"{t}.parquet").is_file() for t in TABLES):
            raise
    return out


def load_tpch(
    con: duckdb.DuckDBPyConnection,
    scale: float = 0.01,
    cache_dir: str | Path | None = None,
    *,
    tables: tuple[str, ...] = TABLES,
) -> dict[str, int]:
    """Create the TPC-H tables in `con` (replacing existing ones); returns row counts."""
    directory = generate_tpch(scale, cache_dir)
    counts = {}
    for table in tables:
        path = (directory / f"{table}.parquet").as_posix()
        con.sql(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_parquet('{path}')")
        counts[table] = int(con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    return counts

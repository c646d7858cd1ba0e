"""tpc_agentic_bench: the benchmark that measures every halo-sql optimization.

Six workloads (W1..W6, `workloads.py`) of N parameterized SQL queries over TPC-H's text columns
run under several systems (`systems.py`: naive, per_query, halo and its ablations, and the
baselines a user would write instead: the plain asyncio programs of `programs.py` on vLLM's
AsyncLLM, `vllm-async`, and their LangGraph versions of `graphs.py` on a vLLM server,
`langgraph`) on the same engine and model, side by side in one run (`harness.py`), against a
lower bound that belongs to the workload (`bound.py`); `modes.py` adds the scaling and online
runs; `report.py` prints the tables and writes the JSON and the PNG chart. Entry point:
`python -m tpc_agentic_bench run --quick`.
"""

from __future__ import annotations

from tpc_agentic_bench.harness import BenchConfig, run_benchmark
from tpc_agentic_bench.workloads import WORKLOADS, Workload, build_workload

__all__ = ["BenchConfig", "WORKLOADS", "Workload", "build_workload", "run_benchmark"]

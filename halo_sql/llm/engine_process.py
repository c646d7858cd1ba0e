"""The main module of the processes vLLM spawns for an engine (its engine core and workers).

A process started with multiprocessing's `spawn` method first imports its parent's main module.
While halo-sql starts an engine, that main module is this one instead of the user's script
(`vllm_compat.main_script_not_rerun`): the script is not run a second time, and the new process
applies the parent's logging choice (halo_sql.llm.logs) before it imports vLLM, so vLLM's import
time messages stay quiet there too. It does nothing else.
"""

from __future__ import annotations

from halo_sql.llm.logs import follow_environment

follow_environment()

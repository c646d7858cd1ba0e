"""Plain user scripts, without an `if __name__ == "__main__":` guard, run queries on vLLM.

vLLM starts its engine core in a process made with multiprocessing's `spawn` method, which
re-runs the parent's main script before anything else; halo-sql hides the script while the engine
starts (halo_sql.llm.vllm_compat.main_script_not_rerun). A script whose own code starts processes
and re-runs in them is told exactly what to change.
"""

from __future__ import annotations

import multiprocessing.spawn
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from halo_sql.llm.vllm_compat import main_script_not_rerun

REPO = Path(__file__).resolve().parent.parent


def run_script(path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return subprocess.run([sys.executable, str(path), *args], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_while_the_engine_starts_a_spawned_child_imports_halo_instead_of_the_main_script() -> None:
    main = sys.modules["__main__"]
    before = (getattr(main, "__file__", None), getattr(main, "__spec__", None))
    with main_script_not_rerun():
        data = multiprocessing.spawn.get_preparation_data("engine-core")
        assert "init_main_from_path" not in data
        # It quiets vLLM's import-time logging in the child, as the parent chose.
        assert data["init_main_from_name"] == "halo_sql.llm.engine_process"
    assert (getattr(main, "__file__", None), getattr(main, "__spec__", None)) == before


@pytest.mark.vllm
def test_a_plain_script_without_a_main_guard_runs_a_query_on_vllm(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(
        """
        import sys
        import halo_sql

        con = halo_sql.connect(model=sys.argv[1])
        t = con.sql("SELECT LLM('Say hi to {x}', max_tokens => 4) AS a FROM (VALUES ('bob')) v(x)")
        print("rows:", t.num_rows)
        print("file:", __file__)
        """
    ))
    done = run_script(script, str(tiny_model_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bootstrapping phase" not in done.stderr
    assert "rows: 1" in done.stdout
    assert f"file: {script}" in done.stdout  # the script's own attributes are back


def test_a_script_whose_own_processes_rerun_it_is_told_what_to_change(tmp_path: Path) -> None:
    script = tmp_path / "spawns.py"
    script.write_text(textwrap.dedent(
        """
        import multiprocessing, sys
        import halo_sql

        con = halo_sql.connect(model=sys.argv[1])
        if __name__ != "__main__":  # the spawned child, re-running this script
            con.sql("SELECT LLM('Say hi') AS a")
        child = multiprocessing.get_context("spawn").Process(target=print)
        child.start()
        child.join()
        print("child exit code:", child.exitcode)
        """
    ))
    done = run_script(script, str(tmp_path), timeout=120)
    assert "child exit code: 1" in done.stdout, done.stderr[-3000:]
    assert "ModelError" in done.stderr
    assert f"while it re-runs {script}" in done.stderr
    assert 'Put its top-level code under `if __name__ == "__main__":`' in done.stderr
    assert "bootstrapping phase" not in done.stderr

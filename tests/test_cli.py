"""The `halo-sql` command line: the shell as the default command, subcommands by name."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from halo_sql import cli

HALO_SQL = str(Path(sys.executable).with_name("halo-sql"))


@pytest.fixture
def shell_args(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """Arguments the shell command would have run with (the shell itself is not started)."""
    seen: list[argparse.Namespace] = []

    def record(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    shell = cli.COMMANDS["shell"]
    monkeypatch.setitem(cli.COMMANDS, "shell", cli.Command(shell.name, shell.help, shell.configure, record))
    return seen


def test_without_a_command_the_shell_runs(shell_args: list[argparse.Namespace]) -> None:
    assert cli.main(["shop.duckdb", "--backend", "sim", "-c", "SELECT 1", "-f", "a.sql"]) == 0
    args = shell_args[0]
    assert args.database == "shop.duckdb"
    assert args.backend == "sim" and args.model is None
    assert args.scripts == [("sql", "SELECT 1"), ("file", "a.sql")]
    assert args.mode == "table" and not args.read_only


def test_shell_is_also_a_named_command(shell_args: list[argparse.Namespace]) -> None:
    assert cli.main(["shell", "--model", "/models/tiny"]) == 0
    assert shell_args[0].database == ":memory:"
    assert shell_args[0].model == "/models/tiny"
    assert shell_args[0].scripts is None


def test_model_options_are_parsed_as_json_where_they_can_be(shell_args: list[argparse.Namespace]) -> None:
    cli.main(["--model-option", "max_model_len=4096", "--model-option", "dtype=float32",
              "--model-option", "enforce_eager=true"])
    assert shell_args[0].model_options == [("max_model_len", 4096), ("dtype", "float32"),
                                           ("enforce_eager", True)]


def test_malformed_model_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model-option", "no-equals-sign"])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: halo-sql" in text and "[DATABASE]" in text
    assert "make-tiny-model" in text and "shell" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import halo_sql

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"halo-sql {halo_sql.__version__}"


def test_a_new_subcommand_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[argparse.Namespace] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rows", type=int, default=10)

    def run(args: argparse.Namespace) -> int:
        ran.append(args)
        return 3

    monkeypatch.setitem(cli.COMMANDS, "bench", cli.Command("bench", "run the benchmark", configure, run))
    assert cli.main(["bench", "--rows", "5"]) == 3
    assert ran[0].rows == 5


def test_make_tiny_model_passes_the_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import halo_sql.llm.tiny_model as tiny_model

    calls: list[tuple[str, int]] = []

    def fake(directory: str, *, seed: int = 0) -> Path:
        calls.append((directory, seed))
        return Path(directory)

    monkeypatch.setattr(tiny_model, "write_tiny_model", fake)
    assert cli.main(["make-tiny-model", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert calls == [(str(tmp_path / "m"), 3)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")


@pytest.mark.slow
def test_make_tiny_model_writes_model_files(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    target = tmp_path / "tiny"
    assert cli.main(["make-tiny-model", str(target)]) == 0
    config = json.loads((target / "config.json").read_text())
    assert config["vocab_size"] > 0
    assert (target / "tokenizer.json").exists()


def test_make_tiny_model_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["make-tiny-model"])
    assert exit_info.value.code == 2
    assert "DIR" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_exits_1_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [HALO_SQL, str(tmp_path / "no" / "such" / "dir" / "db.duckdb"), "--backend", "sim", "-c", "SELECT 1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr


def test_the_console_script_runs_the_shell(tmp_path: Path) -> None:
    database = tmp_path / "kept.duckdb"
    first = subprocess.run([HALO_SQL, str(database), "--backend", "sim", "-c",
                            "CREATE TABLE t AS SELECT 42 AS answer"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([HALO_SQL, str(database), "--read-only", "--mode", "csv", "-c",
                             "SELECT answer FROM t"], capture_output=True, text=True, timeout=60)
    assert second.stdout == "answer\n42\n"

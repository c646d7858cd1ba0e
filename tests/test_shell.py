"""The `halo-sql` shell, used as a person uses it: in a pseudo-terminal (pexpect), through `-c`,
`-f` and pipes (subprocess), and the Shell object itself for output details."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from halo_sql.frontends.shell import Shell, _SQLCompleter, is_complete
from halo_sql.session import Session

HALO_SQL = str(Path(sys.executable).with_name("halo-sql"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\r")
PROMPT = "halo>"
CONTINUATION = r"\.\.\.>"


def _plain(text: str) -> str:
    return ANSI.sub("", text)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HALO_HISTORY=str(tmp_path / "history"), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm",
               COLUMNS="120", LINES="40")
    env.pop("HALO_MODEL", None)
    env.pop("HALO_BACKEND", None)
    return env


# -- in a pseudo-terminal ------------------------------------------------------------------------
@pytest.fixture
def shell_pty(tmp_path: Path) -> Iterator[pexpect.spawn]:
    """The real shell in a pseudo-terminal, on a sim model that sleeps 2 ms per request."""
    child = pexpect.spawn(
        HALO_SQL,
        ["--backend", "sim", "--model-option", "latency_per_request=0.002"],
        env=_env(tmp_path),
        encoding="utf-8",
        dimensions=(40, 120),
        timeout=20,
    )
    child.expect(PROMPT)
    yield child
    if child.isalive():
        child.sendintr()  # clear a half-typed statement, then leave with Ctrl-D
        child.sendeof()
        try:
            child.expect(pexpect.EOF, timeout=5)
        except pexpect.TIMEOUT:
            child.terminate(force=True)
    child.close()


def _run(child: pexpect.spawn, line: str, until: str) -> str:
    """Send one line, wait for `until` (a regex in its output) and the next prompt; returns the
    output up to `until`. (prompt_toolkit redraws the prompt while a line is typed, so the
    prompt alone does not show that a statement finished.)"""
    child.sendline(line)
    child.expect(until)
    output = _plain(child.before + child.after)
    child.expect(PROMPT)
    return output


def test_multi_line_query_runs_when_the_semicolon_arrives(shell_pty: pexpect.spawn, tmp_path: Path) -> None:
    shell_pty.sendline("SELECT 6 * 7 AS answer,")
    shell_pty.expect(CONTINUATION)  # not run yet: no ';'
    shell_pty.sendline("'multi' AS line")
    shell_pty.expect(CONTINUATION)
    output = _run(shell_pty, ";", "1 row")
    assert re.search(r"│\s+42 │ multi\s+│", output), output
    shell_pty.sendeof()
    shell_pty.expect(pexpect.EOF)
    history = (tmp_path / "history").read_text()
    assert "SELECT 6 * 7 AS answer," in history and "'multi' AS line" in history


def test_failing_statement_prints_the_error_and_the_shell_goes_on(shell_pty: pexpect.spawn) -> None:
    output = _run(shell_pty, "SELECT * FROM no_such_table;", r"Error: [^\n]*\n")
    assert "no_such_table" in output
    output = _run(shell_pty, "SELECT LLM_FILTER('Is {nope} late?') FROM range(3);", r"Error: [^\n]*\n")
    assert "Error: line 1, column 8: template slot {nope}" in output
    assert "Traceback" not in output
    _run(shell_pty, "SELECT 6 * 7 AS answer;", r"│\s+42 │")


def test_mode_csv_prints_comma_separated_rows(shell_pty: pexpect.spawn) -> None:
    shell_pty.sendline(".mode csv")
    output = _run(shell_pty, "SELECT 1 AS x, 'a,b' AS y UNION ALL SELECT 2, NULL ORDER BY x;", r"\n2,\r?\n")
    assert output.splitlines()[-3:] == ["x,y", '1,"a,b"', "2,"]


def test_ctrl_c_cancels_the_running_llm_query_not_the_shell(shell_pty: pexpect.spawn) -> None:
    # 3,000 rows at 2 ms each: about 6 s of model time, in batches of 512 (~1 s each).
    _run(shell_pty, "CREATE TABLE reviews AS SELECT 'review ' || i AS text FROM range(3000) r(i);",
         "3,000 rows changed")
    shell_pty.sendline("SELECT LLM('Summarize {text}') AS summary FROM reviews;")
    shell_pty.expect(r"[1-9][\d,]*/3,000 rows")  # the progress line: rows done of rows to do
    shell_pty.expect("ETA")
    shell_pty.sendintr()
    shell_pty.expect("Cancelled: statement cancelled")
    assert "Traceback" not in _plain(shell_pty.before)
    shell_pty.expect(PROMPT)
    stats = _run(shell_pty, ".stats", r'"aborted_requests": \d+')
    sent = int(re.findall(r'"llm_requests": (\d+)', stats)[-1])
    aborted = int(re.findall(r'"aborted_requests": (\d+)', stats)[-1])
    # It stopped early, keeping what was answered: the requests still in the engine were aborted.
    assert 0 < sent - aborted < 3000
    _run(shell_pty, "SELECT 6 * 7 AS answer;", r"│\s+42 │")  # the shell is still there
    assert shell_pty.isalive()


def test_ctrl_c_at_the_prompt_clears_the_line(shell_pty: pexpect.spawn) -> None:
    shell_pty.send("SELECT 'half")
    shell_pty.sendintr()
    shell_pty.expect(PROMPT)
    _run(shell_pty, "SELECT 6 * 7 AS answer;", r"│\s+42 │")


# -- non-interactive -----------------------------------------------------------------------------
def _halo(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HALO_SQL, "--backend", "sim", *args], input=stdin, capture_output=True, text=True,
        env=_env(tmp_path), timeout=60,
    )


def test_c_prints_the_result_and_exits_0(tmp_path: Path) -> None:
    done = _halo(tmp_path, "--mode", "csv", "-c",
                 "SELECT LLM_FILTER('Is {x} even?') IS NOT NULL AS answered, 42 AS n FROM (SELECT 2 AS x)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "answered,n\ntrue,42\n"
    assert done.stderr == ""


def test_c_table_output_is_never_cut_off_a_terminal(tmp_path: Path) -> None:
    long = "x" * 300
    done = _halo(tmp_path, "-c", f"SELECT '{long}' AS wide")
    assert done.returncode == 0
    assert long in done.stdout


def test_c_failing_statement_exits_1_with_the_message_on_stderr(tmp_path: Path) -> None:
    done = _halo(tmp_path, "-c", "SELECT 1 AS first; SELECT * FROM nope; SELECT 3 AS third")
    assert done.returncode == 1
    assert "first" in done.stdout and "third" not in done.stdout  # stops at the failure
    assert done.stderr.startswith("Error: ") and "nope" in done.stderr
    assert "Traceback" not in done.stderr


def test_f_runs_a_file_and_names_the_failing_line(tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(
        "CREATE TABLE t AS SELECT i FROM range(3) r(i);\n"
        ".mode csv\n"
        "SELECT count(*) AS n\n  FROM t;\n"
        "\n"
        "SELECT LLM_FILTER('Is {missing} late?')\n  FROM t;\n"
    )
    done = _halo(tmp_path, "-f", str(script))
    assert done.returncode == 1
    assert done.stdout == "n\n3\n"
    assert "template slot {missing}" in done.stderr
    assert f"[{script}:6]" in done.stderr


def test_c_and_f_run_in_the_order_given(tmp_path: Path) -> None:
    script = tmp_path / "two.sql"
    script.write_text("SELECT 2 AS two;")
    done = _halo(tmp_path, "--mode", "csv", "-c", "SELECT 1 AS one", "-f", str(script), "-c", "SELECT 3 AS three")
    assert done.returncode == 0
    assert done.stdout.split() == ["one", "1", "two", "2", "three", "3"]


def test_piped_stdin_runs_statements_and_dot_commands(tmp_path: Path) -> None:
    done = _halo(
        tmp_path,
        stdin="CREATE TABLE t (a INTEGER);\nINSERT INTO t VALUES (1), (2);\n.mode json\n"
        "SELECT a FROM t ORDER BY a;\n.tables\nSELECT 'no semicolon at the end' AS last\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == '[{"a": 1},\n{"a": 2}]\nt\n[{"last": "no semicolon at the end"}]\n'


def test_piped_stdin_failure_exits_1(tmp_path: Path) -> None:
    done = _halo(tmp_path, stdin="SELECT 1;\nSELEC 2;\nSELECT 3;\n")
    assert done.returncode == 1
    assert "syntax error" in done.stderr and "[<stdin>:2]" in done.stderr


def test_unknown_backend_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([HALO_SQL, "--backend", "nope", "-c", "SELECT 1"], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=60)
    assert done.returncode == 2 and "invalid choice" in done.stderr


# -- the Shell object ----------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def session() -> Iterator[Session]:
    session = Session(backend="sim")
    session.execute("CREATE TABLE reviews AS SELECT i AS id, 'review ' || i AS text FROM range(100) r(i)")
    yield session
    session.connection.close()


def _shell(session: Session, **options: object) -> tuple[Shell, io.StringIO, io.StringIO]:
    out, err = options.pop("out", io.StringIO()), io.StringIO()
    shell = Shell(session, out=out, err=err, **options)  # type: ignore[arg-type]
    return shell, out, err  # type: ignore[return-value]


def test_is_complete_respects_strings_and_comments() -> None:
    assert is_complete("SELECT 1;")
    assert is_complete("SELECT 1; -- trailing comment")
    assert not is_complete("SELECT ';'")
    assert not is_complete("SELECT 'unterminated;")
    assert not is_complete("SELECT 1 /* ; */")
    assert not is_complete("")


def test_explain_prints_the_plan_as_text(session: Session) -> None:
    shell, out, _ = _shell(session)
    assert shell.run_script("EXPLAIN SELECT id FROM reviews WHERE LLM_FILTER('Is {text} late?');")
    text = out.getvalue()
    assert "LLMFilter: llm_filter(" in text and "\n  input" in text
    assert "│" not in text  # no table frame around a plan
    out.truncate(0)
    out.seek(0)
    assert shell.run_script("EXPLAIN ANALYZE SELECT id FROM reviews WHERE LLM_FILTER('Is {text} late?');")
    assert re.search(r"actual.*llm_requests=100", out.getvalue())  # what the run cost


def test_timer_prints_run_time_and_llm_cost_to_stderr(session: Session) -> None:
    shell, out, err = _shell(session, mode="csv")
    shell.run_script(".timer on\nSELECT LLM('Summarize {text}') AS s FROM reviews;")
    assert re.search(r"Run Time: \d+\.\d{3} s · 100 LLM requests in 1 batch · [\d,]+ prompt tokens", err.getvalue())
    assert "Run Time" not in out.getvalue()


def test_output_sends_results_to_a_file_until_reset(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    shell, out, _ = _shell(session, mode="csv")
    assert shell.run_script(f".output {target}\nSELECT count(*) AS n FROM reviews;\n.output\nSELECT 1 AS back;")
    assert target.read_text() == "n\n100\n"
    assert out.getvalue() == "back\n1\n"


def test_read_runs_a_file(session: Session, tmp_path: Path) -> None:
    script = tmp_path / "more.sql"
    script.write_text("CREATE TABLE extra AS SELECT 1 AS a;\nSELECT a FROM extra;\n")
    shell, out, _ = _shell(session, mode="csv")
    assert shell.run_script(f".read {script}")
    assert out.getvalue() == "a\n1\n"


def test_tables_schema_and_models(session: Session) -> None:
    shell, out, _ = _shell(session, mode="csv")
    assert shell.run_script("CREATE VIEW v AS SELECT id FROM reviews;\n.tables\n.schema reviews\n.models")
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["reviews", "v"]
    assert lines[2].startswith("CREATE TABLE reviews(id BIGINT, ") and lines[2].endswith(";")
    assert lines[3:] == ["name,backend,model,options,is_default", "default,sim,,{},true"]


def test_bad_dot_commands_fail_with_usage(session: Session) -> None:
    shell, _, err = _shell(session)
    assert not shell.run_script(".mode xml")
    assert "use .mode table|csv|json" in err.getvalue()
    assert not shell.run_script(".frobnicate")
    assert "unknown command .frobnicate" in err.getvalue()
    assert not shell.run_script(".schema missing")


def test_dml_prints_the_changed_row_count_not_a_table(session: Session) -> None:
    shell, out, _ = _shell(session, interactive=True)
    shell.run_script("INSERT INTO reviews VALUES (1000, 'new'), (1001, 'newer');")
    assert out.getvalue().strip() == "2 rows changed"
    quiet, out, _ = _shell(session, mode="csv")
    quiet.run_script("CREATE TABLE nothing (a INTEGER); DELETE FROM reviews WHERE id >= 1000;")
    assert out.getvalue() == ""


def test_long_results_are_cut_to_maxrows_interactively(session: Session) -> None:
    shell, out, _ = _shell(session, interactive=True)
    shell.run_script(".maxrows 6\nSELECT id FROM reviews ORDER BY id;")
    text = out.getvalue()
    assert "│  0 │" in text and "│ 99 │" in text and "│ 50 │" not in text
    assert re.search(r"│\s+…\s+│", text)
    assert "100 rows (6 shown; .maxrows 0 shows all)" in text


def test_wide_text_is_truncated_to_the_terminal(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    shell, out, _ = _shell(session, out=_Terminal(), interactive=True)
    shell.run_script("SELECT 1 AS id, repeat('long text ', 50) AS body, 'end' AS tail;")
    lines = [line for line in _plain(out.getvalue()).splitlines() if "│" in line]
    assert lines and all(len(line) <= 60 for line in lines)
    assert re.search(r"│ +1 │ long text long text .*… │ end +│", lines[1]), lines[1]


def test_values_render_readably(session: Session) -> None:
    shell, out, _ = _shell(session)
    shell.run_script("SELECT NULL AS n, true AS b, {'k': [1, 2]} AS s, 'two\nlines' AS t;")
    assert "NULL" in out.getvalue() and "true" in out.getvalue()
    assert '{"k": [1, 2]}' in out.getvalue() and "two\\nlines" in out.getvalue()


def test_completion_offers_tables_columns_models_and_llm_functions(session: Session) -> None:
    completer = _SQLCompleter(Shell(session))

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text, len(text)), CompleteEvent())]

    assert "reviews" in complete("SELECT * FROM rev")
    assert "text" in complete("SELECT tex")
    assert "LLM_FILTER" in complete("SELECT LLM_F")
    assert "llm_filter" in complete("select llm_f")
    assert "SELECT" in complete("SEL")
    assert "default" in complete("SELECT LLM('x', model => 'defa")
    assert ".timer" in complete(".ti")
    assert complete(".mode c") == ["csv"]
    session.execute("CREATE TABLE fresh (brand_new_column INTEGER)")
    Shell.run_script(completer.shell, "SELECT 1;")  # statements mark the catalog stale
    assert "brand_new_column" in complete("SELECT brand_")

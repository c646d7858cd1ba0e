"""PEP 249 (DB-API 2.0) compliance of `halo_sql.connect(...)`.

Laid out like the long-standing public DB-API compliance suites: module interface, exceptions,
connection, cursor (execute, description, rowcount, fetch*, arraysize, executemany, close), type
objects and constructors, then halo-sql's own additions (parameters inside LLM templates, Arrow /
pandas / polars output). Every test uses the deterministic sim backend.
"""

from __future__ import annotations

import datetime
import decimal
import importlib.util
from collections.abc import Iterator

import pyarrow as pa
import pytest

import halo_sql
from halo_sql.frontends import dbapi

driver = dbapi
"""The module under test (`halo_sql` re-exports it; see test_halo_sql_module_is_the_driver)."""

TABLE = "booze"
SAMPLES = ["Carlton Cold", "Carlton Draft", "Mountain Goat", "Redback", "Victoria Bitter", "XXXX"]
DDL = f"CREATE TABLE {TABLE} (name VARCHAR(20))"


@pytest.fixture
def con() -> Iterator[dbapi.Connection]:
    connection = driver.connect(backend="sim")
    yield connection
    connection.close()


@pytest.fixture
def cur(con: dbapi.Connection) -> dbapi.Cursor:
    return con.cursor()


def _populate(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.executemany(f"INSERT INTO {TABLE} VALUES (?)", [(s,) for s in SAMPLES])


# -- module interface ----------------------------------------------------------------------------
def test_apilevel_is_2_0() -> None:
    assert driver.apilevel == "2.0"


def test_threadsafety_is_a_pep_249_level() -> None:
    assert driver.threadsafety in (0, 1, 2, 3)


def test_paramstyle_is_qmark() -> None:
    assert driver.paramstyle == "qmark"


def test_halo_sql_module_is_the_driver() -> None:
    """`import halo_sql` is the DB-API module: globals, exceptions and type objects live there."""
    for name in ("apilevel", "threadsafety", "paramstyle", "connect", "STRING", "NUMBER",
                 "DATETIME", "BINARY", "ROWID", "Date", "Time", "Timestamp", "Binary",
                 "DateFromTicks", "TimeFromTicks", "TimestampFromTicks"):
        assert getattr(halo_sql, name) is getattr(dbapi, name), name


# -- exceptions ----------------------------------------------------------------------------------
def test_exception_hierarchy_follows_pep_249() -> None:
    assert issubclass(driver.Warning, Exception)
    assert issubclass(driver.Error, Exception)
    assert issubclass(driver.InterfaceError, driver.Error)
    assert issubclass(driver.DatabaseError, driver.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(driver, name), driver.DatabaseError), name


def test_exceptions_are_module_attributes_of_halo_sql() -> None:
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        assert getattr(halo_sql, name) is getattr(driver, name)


def test_exceptions_are_connection_attributes(con: dbapi.Connection) -> None:
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        assert getattr(con, name) is getattr(driver, name)


def test_bad_sql_raises_programming_error(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.ProgrammingError):
        cur.execute("SELEC 1")


def test_unknown_table_raises_programming_error(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.ProgrammingError, match="nope"):
        cur.execute("SELECT * FROM nope")


def test_bad_llm_call_raises_programming_error_naming_the_slot(cur: dbapi.Cursor) -> None:
    cur.execute("CREATE TABLE t (text VARCHAR)")
    with pytest.raises(driver.ProgrammingError, match="nope"):
        cur.execute("SELECT LLM_FILTER('Is {nope} late?') FROM t")


def test_constraint_violation_raises_integrity_error(cur: dbapi.Cursor) -> None:
    cur.execute("CREATE TABLE k (id INTEGER PRIMARY KEY)")
    cur.execute("INSERT INTO k VALUES (1)")
    with pytest.raises(driver.IntegrityError):
        cur.execute("INSERT INTO k VALUES (1)")


def test_bad_cast_raises_data_error(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.DataError):
        cur.execute("SELECT CAST('abc' AS INTEGER)")


# -- connection ----------------------------------------------------------------------------------
def test_connect_returns_a_connection() -> None:
    connection = halo_sql.connect(backend="sim")
    assert isinstance(connection, halo_sql.Connection)
    connection.close()


def test_commit_and_rollback_without_a_transaction_are_no_ops(con: dbapi.Connection) -> None:
    con.commit()
    con.rollback()


def test_rollback_undoes_an_open_transaction(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute(DDL)
    cur.execute("BEGIN")
    cur.execute(f"INSERT INTO {TABLE} VALUES ('Redback')")
    con.rollback()
    assert cur.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (0,)


def test_commit_keeps_an_open_transaction(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute(DDL)
    cur.execute("BEGIN")
    cur.execute(f"INSERT INTO {TABLE} VALUES ('Redback')")
    con.commit()
    con.rollback()
    assert cur.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (1,)


def test_cursor_returns_independent_cursors(con: dbapi.Connection) -> None:
    first, second = con.cursor(), con.cursor()
    first.execute("SELECT 1")
    second.execute("SELECT 2")
    assert first.fetchall() == [(1,)]
    assert second.fetchall() == [(2,)]


def test_closed_connection_raises_interface_error() -> None:
    connection = driver.connect(backend="sim")
    cur = connection.cursor()
    connection.close()
    with pytest.raises(driver.InterfaceError):
        cur.execute("SELECT 1")
    with pytest.raises(driver.InterfaceError):
        connection.cursor()
    with pytest.raises(driver.InterfaceError):
        connection.commit()
    with pytest.raises(driver.InterfaceError):
        connection.rollback()
    connection.close()  # closing twice is harmless


def test_connection_is_a_context_manager() -> None:
    with driver.connect(backend="sim") as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert connection.closed


def test_wrapping_a_duckdb_connection_leaves_it_open() -> None:
    import duckdb

    raw = duckdb.connect()
    raw.execute("CREATE TABLE mine AS SELECT 1 AS x")
    connection = driver.connect(connection=raw, backend="sim")
    assert connection.execute("SELECT x FROM mine").fetchall() == [(1,)]
    connection.close()
    assert raw.execute("SELECT x FROM mine").fetchall() == [(1,)]


# -- cursor: execute, description, rowcount ------------------------------------------------------
def test_description_is_none_before_execute_and_after_ddl(cur: dbapi.Cursor) -> None:
    assert cur.description is None
    cur.execute(DDL)
    assert cur.description is None


def test_description_has_seven_items_per_column(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name, 1 AS n FROM {TABLE}")
    assert [d[0] for d in cur.description] == ["name", "n"]
    assert all(len(d) == 7 for d in cur.description)
    assert cur.description[0][1] == driver.STRING
    assert cur.description[1][1] == driver.NUMBER


def test_description_type_codes_compare_equal_to_type_objects(cur: dbapi.Cursor) -> None:
    cur.execute(
        "SELECT 'a' AS s, 1::INTEGER AS i, 1.5::DOUBLE AS f, 1.25::DECIMAL(9,2) AS d, "
        "DATE '2024-01-02' AS day, TIMESTAMP '2024-01-02 03:04:05' AS ts, '\\x01'::BLOB AS b, "
        "[1, 2] AS l"
    )
    codes = {d[0]: d[1] for d in cur.description}
    assert codes["s"] == driver.STRING and codes["s"] != driver.NUMBER
    assert codes["i"] == driver.NUMBER and codes["f"] == driver.NUMBER
    assert codes["d"] == driver.NUMBER
    assert codes["day"] == driver.DATETIME and codes["ts"] == driver.DATETIME
    assert codes["b"] == driver.BINARY
    assert codes["l"] == "INTEGER[]" and codes["l"] != driver.NUMBER
    decimal_column = next(d for d in cur.description if d[0] == "d")
    assert decimal_column[4:6] == (9, 2)  # precision, scale


def test_description_of_an_llm_column(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT LLM_FILTER('Is {{name}} a beer?') AS beer, LLM('Describe {{name}}') AS d FROM {TABLE}")
    assert [d[1] for d in cur.description] == ["BOOLEAN", "VARCHAR"]


def test_rowcount_is_minus_one_before_execute_and_after_ddl(cur: dbapi.Cursor) -> None:
    assert cur.rowcount == -1
    cur.execute(DDL)
    assert cur.rowcount == -1


def test_rowcount_counts_inserted_updated_and_deleted_rows(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.execute(f"INSERT INTO {TABLE} VALUES ('a'), ('b')")
    assert cur.rowcount == 2
    cur.execute(f"UPDATE {TABLE} SET name = 'c' WHERE name = 'a'")
    assert cur.rowcount == 1
    cur.execute(f"DELETE FROM {TABLE}")
    assert cur.rowcount == 2


def test_rowcount_of_a_query_is_its_number_of_rows(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT * FROM {TABLE}")
    assert cur.rowcount == len(SAMPLES)


def test_insert_returns_no_result_set(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.execute(f"INSERT INTO {TABLE} VALUES ('Redback')")
    assert cur.description is None
    with pytest.raises(driver.Error):
        cur.fetchone()


def test_insert_returning_is_a_result_set(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.execute(f"INSERT INTO {TABLE} VALUES ('Redback') RETURNING name")
    assert cur.fetchall() == [("Redback",)]


def test_execute_returns_the_cursor(cur: dbapi.Cursor) -> None:
    assert cur.execute("SELECT 1") is cur


def test_execute_rejects_non_string_operations_and_string_parameters(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.ProgrammingError):
        cur.execute(42)  # type: ignore[arg-type]
    with pytest.raises(driver.ProgrammingError, match="sequence"):
        cur.execute("SELECT ?", "a")  # type: ignore[arg-type]


def test_wrong_number_of_parameters_is_a_programming_error(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.ProgrammingError):
        cur.execute("SELECT ?, ?", [1])


# -- cursor: fetching ----------------------------------------------------------------------------
def test_fetch_before_execute_raises_error(cur: dbapi.Cursor) -> None:
    for fetch in (cur.fetchone, cur.fetchall, cur.fetchmany):
        with pytest.raises(driver.Error):
            fetch()


def test_fetchone_returns_rows_then_none(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.execute(f"SELECT name FROM {TABLE}")
    assert cur.fetchone() is None
    cur.execute(f"INSERT INTO {TABLE} VALUES ('Victoria Bitter')")
    cur.execute(f"SELECT name FROM {TABLE}")
    assert cur.fetchone() == ("Victoria Bitter",)
    assert cur.fetchone() is None


def test_fetchmany_uses_size_then_arraysize(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name FROM {TABLE} ORDER BY name")
    assert cur.arraysize == 1
    assert cur.fetchmany() == [(SAMPLES[0],)]
    assert cur.fetchmany(2) == [(SAMPLES[1],), (SAMPLES[2],)]
    cur.arraysize = 2
    assert cur.fetchmany() == [(SAMPLES[3],), (SAMPLES[4],)]
    assert cur.fetchmany(10) == [(SAMPLES[5],)]
    assert cur.fetchmany() == []


def test_fetchall_returns_the_remaining_rows(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name FROM {TABLE} ORDER BY name")
    cur.fetchone()
    assert cur.fetchall() == [(s,) for s in SAMPLES[1:]]
    assert cur.fetchall() == []


def test_rows_are_tuples_of_python_values(cur: dbapi.Cursor) -> None:
    cur.execute(
        "SELECT 1 AS i, 1.5::DOUBLE AS f, 1.25::DECIMAL(9,2) AS d, DATE '2024-01-02' AS day, "
        "NULL AS n, true AS b"
    )
    assert cur.fetchone() == (1, 1.5, decimal.Decimal("1.25"), datetime.date(2024, 1, 2), None, True)


def test_cursor_is_iterable(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name FROM {TABLE} ORDER BY name")
    assert [row[0] for row in cur] == SAMPLES


def test_executemany_runs_once_per_parameter_set(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.executemany(f"INSERT INTO {TABLE} VALUES (?)", [(s,) for s in SAMPLES])
    assert cur.rowcount == len(SAMPLES)
    cur.execute(f"SELECT count(*) FROM {TABLE}")
    assert cur.fetchone() == (len(SAMPLES),)


def test_executemany_with_named_parameters(cur: dbapi.Cursor) -> None:
    cur.execute(DDL)
    cur.executemany(f"INSERT INTO {TABLE} VALUES ($name)", [{"name": s} for s in SAMPLES[:2]])
    assert cur.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (2,)


def test_setinputsizes_and_setoutputsize_are_accepted(cur: dbapi.Cursor) -> None:
    cur.setinputsizes([25])
    cur.setoutputsize(1000)
    cur.setoutputsize(1000, 0)


def test_callproc_is_not_supported(cur: dbapi.Cursor) -> None:
    with pytest.raises(driver.NotSupportedError):
        cur.callproc("lower", ["A"])


# -- cursor: close -------------------------------------------------------------------------------
def test_closed_cursor_raises_interface_error(cur: dbapi.Cursor) -> None:
    cur.execute("SELECT 1")
    cur.close()
    assert cur.closed
    with pytest.raises(driver.InterfaceError):
        cur.execute("SELECT 1")
    with pytest.raises(driver.InterfaceError):
        cur.fetchone()
    with pytest.raises(driver.InterfaceError):
        cur.fetchall()
    with pytest.raises(driver.InterfaceError):
        cur.executemany("SELECT ?", [(1,)])
    cur.close()  # closing twice is harmless


def test_cursor_is_a_context_manager(con: dbapi.Connection) -> None:
    with con.cursor() as cur:
        cur.execute("SELECT 1")
    assert cur.closed


# -- type objects and constructors ---------------------------------------------------------------
def test_type_objects_exist_and_differ() -> None:
    objects = [driver.STRING, driver.BINARY, driver.NUMBER, driver.DATETIME, driver.ROWID]
    assert len(set(objects)) == 5
    assert driver.STRING != driver.NUMBER


def test_constructors_build_python_values() -> None:
    assert driver.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert driver.Time(3, 4, 5) == datetime.time(3, 4, 5)
    assert driver.Timestamp(2024, 1, 2, 3, 4, 5) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert driver.Binary(b"ab") == b"ab"
    ticks = datetime.datetime(2024, 1, 2, 3, 4, 5).timestamp()
    assert driver.DateFromTicks(ticks) == datetime.date(2024, 1, 2)
    assert driver.TimeFromTicks(ticks) == datetime.time(3, 4, 5)
    assert driver.TimestampFromTicks(ticks) == datetime.datetime(2024, 1, 2, 3, 4, 5)


def test_constructed_values_bind_as_parameters(cur: dbapi.Cursor) -> None:
    cur.execute(
        "SELECT ? AS d, ? AS ts, ? AS b",
        [driver.Date(2024, 1, 2), driver.Timestamp(2024, 1, 2, 3, 4, 5), driver.Binary(b"ab")],
    )
    assert cur.fetchone() == (datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5), b"ab")
    assert [d[1] for d in cur.description] == [driver.DATETIME, driver.DATETIME, driver.BINARY]


# -- parameters, including inside LLM calls ------------------------------------------------------
def test_qmark_numeric_and_named_parameters(cur: dbapi.Cursor) -> None:
    assert cur.execute("SELECT ? + 1", [1]).fetchone() == (2,)
    assert cur.execute("SELECT $1 || $2 || $1", ["a", "b"]).fetchone() == ("aba",)
    assert cur.execute("SELECT $x * 2", {"x": 21}).fetchone() == (42,)


def test_qmark_parameter_binds_an_llm_template_as_data(cur: dbapi.Cursor) -> None:
    # A bound template is data: `{name}` in it is text, not a slot (tests/test_parameters.py).
    _populate(cur)
    cur.execute(f"SELECT name, LLM_FILTER(?) AS ok FROM {TABLE} ORDER BY name", ["Is {name} a lager?"])
    bound = cur.fetchall()
    literal = cur.execute(
        f"SELECT name, LLM_FILTER('Is {{{{name}}}} a lager?') AS ok FROM {TABLE} ORDER BY name"
    ).fetchall()
    assert bound == literal
    assert len(bound) == len(SAMPLES)


def test_named_parameters_bind_template_and_labels(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(
        f"SELECT LLM_CLASSIFY($template, [$a, $b]) AS kind FROM {TABLE}",
        {"template": "Kind of beer?", "a": "lager", "b": "ale"},
    )
    assert {row[0] for row in cur.fetchall()} <= {"lager", "ale"}
    assert cur.stats()["llm_requests"] == 1  # a template without slots: one question for all rows


def test_parameter_in_a_where_clause_next_to_an_llm_call(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name FROM {TABLE} WHERE name LIKE $1 AND LLM_FILTER('Is {{name}} good?') IS NOT NULL", ["C%"])
    assert {row[0] for row in cur.fetchall()} == {"Carlton Cold", "Carlton Draft"}


# -- halo-sql additions ---------------------------------------------------------------------------
def test_fetch_arrow_table_returns_the_remaining_rows(cur: dbapi.Cursor) -> None:
    _populate(cur)
    cur.execute(f"SELECT name FROM {TABLE} ORDER BY name")
    cur.fetchone()
    table = cur.fetch_arrow_table()
    assert isinstance(table, pa.Table)
    assert table.column("name").to_pylist() == SAMPLES[1:]


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas not installed")
def test_fetchdf_returns_a_pandas_dataframe(cur: dbapi.Cursor) -> None:
    _populate(cur)
    frame = cur.execute(f"SELECT name, LLM_FILTER('Is {{name}} cold?') AS cold FROM {TABLE}").fetchdf()
    assert list(frame.columns) == ["name", "cold"]
    assert len(frame) == len(SAMPLES)


@pytest.mark.skipif(importlib.util.find_spec("polars") is None, reason="polars not installed")
def test_pl_returns_a_polars_dataframe(cur: dbapi.Cursor) -> None:
    _populate(cur)
    frame = cur.execute(f"SELECT name FROM {TABLE}").pl()
    assert frame.height == len(SAMPLES)


def test_cursor_stats_report_llm_work(cur: dbapi.Cursor) -> None:
    _populate(cur)
    assert cur.stats()["llm_requests"] == 0  # the inserts of _populate: no LLM work
    cur.execute(f"SELECT LLM('Describe {{name}}') FROM {TABLE}")
    stats = cur.stats()
    assert stats["llm_requests"] == len(SAMPLES)
    assert stats["prompt_tokens"] > 0


def test_engine_api_still_returns_arrow(con: dbapi.Connection) -> None:
    table = con.sql("SELECT LLM_FILTER('Is {x} even?') AS even FROM (SELECT 2 AS x)")
    assert table is not None and table.column_names == ["even"]

"""The store's SQL kept as SQL (sql/*.sql, loaded by name): every statement named is used,
every name used is there, each one is valid on the database that runs it, and the
migrations are numbered and build the schema the code reads."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import psycopg
import pytest

from dropbox_daemon.store import statements
from dropbox_daemon.store.statements import (
    ADMIN,
    POSTGRES,
    QUERIES,
    SQLITE,
    Statements,
    migrations,
    parse_named,
)

PACKAGE = Path(statements.__file__).resolve().parents[1]
ALL = {"QUERIES": QUERIES, "SQLITE": SQLITE, "POSTGRES": POSTGRES, "ADMIN": ADMIN}


def used_names() -> dict[str, set[str]]:
    """{file: names} of every `<Statements>.<name>` the package reads, by AST; a module's
    `QUERIES as Q` import counts as QUERIES."""
    used: dict[str, set[str]] = {s.file: set() for s in ALL.values()}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        alias = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "dropbox_daemon.store.statements"
            ):
                for a in node.names:
                    if a.name in ALL:
                        alias[a.asname or a.name] = ALL[a.name]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in alias
            ):
                used[alias[node.value.id].file].add(node.attr)
    return used


def test_every_statement_named_is_used_and_every_name_used_is_there() -> None:
    used = used_names()
    for s in ALL.values():
        assert used[s.file] - set(s.named) == set(), f"sql/{s.file} lacks these"
        assert set(s.named) - used[s.file] == set(), f"sql/{s.file}: nothing runs these"


def test_a_named_file_parses_by_its_name_lines() -> None:
    text = "-- header\n\n-- name: one\nSELECT 1;\n-- a comment on two\n-- name: two\nSELECT\n  2 -- why\n"
    assert parse_named(text) == {"one": "SELECT 1", "two": "SELECT\n  2 -- why"}
    with pytest.raises(RuntimeError, match="named twice"):
        parse_named("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(AttributeError, match="names no statement 'nope'"):
        _ = Statements("queries.sql").nope


def test_migrations_are_numbered_one_to_n_on_both_backends() -> None:
    for backend in ("sqlite", "postgres"):
        found = migrations(backend)
        assert [m.version for m in found] == list(range(1, len(found) + 1))
        assert all(m.statements() for m in found)
    assert len(migrations("sqlite")) == 6 and len(migrations("postgres")) == 2


def placeholders(stmt: str, mark: str) -> int:
    return len(re.findall(re.escape(mark), re.sub(r"'[^']*'", "", stmt)))


def test_every_sqlite_statement_is_valid_on_the_migrated_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    for m in migrations("sqlite"):
        for stmt in m.statements():
            conn.execute(stmt)
    for s in (QUERIES, SQLITE):
        for name, stmt in s.named.items():
            try:
                conn.execute("EXPLAIN " + stmt, (None,) * placeholders(stmt, "?"))
            except sqlite3.Error as e:
                pytest.fail(f"sql/{s.file} {name}: {e}")


def test_every_postgresql_statement_is_valid_on_the_farm_schema(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for s, mark in ((QUERIES, "?"), (POSTGRES, "?"), (ADMIN, "%s")):
            for name, stmt in s.named.items():
                sql = stmt.replace("?", "%s") if mark == "?" else stmt
                try:
                    conn.execute("EXPLAIN " + sql, ("0",) * placeholders(stmt, mark))  # type: ignore[arg-type]
                except psycopg.Error as e:
                    pytest.fail(f"sql/{s.file} {name}: {e}")

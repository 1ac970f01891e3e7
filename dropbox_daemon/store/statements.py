"""The store's SQL, kept as SQL and loaded by name (as procrastinate keeps its queries).

sql/queries.sql holds the statements both backends run, sql/sqlite.sql and
sql/postgres.sql those of one backend, each under a `-- name: <name>` line with `?`
placeholders. sql/sqlite/NNN_*.sql and sql/postgres/NNN_*.sql are the numbered
migrations, applied in order and never edited once released (so the farm's first
file still calls its successors pg_NNN_*.sql, the name they had beside this module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
MIGRATION_FILE = re.compile(r"(\d{3})_(\w+)\.sql")


def _sql_dir():  # noqa: ANN202 (an importlib Traversable)
    return resources.files("dropbox_daemon.store").joinpath("sql")


def _without_comments(text: str) -> str:
    """The text without its whole-line `--` comments (statements may end in one)."""
    return "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("--"))


def parse_named(text: str, source: str = "<sql>") -> dict[str, str]:
    """{name: statement} of a file of `-- name:` blocks; a name given twice is an error."""
    parts = NAME_LINE.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        stmt = _without_comments(body).strip().rstrip(";").strip()
        if name in out or not stmt:
            raise RuntimeError(f"{source}: statement {name!r} is named twice or empty")
        out[name] = stmt
    return out


class Statements:
    """The named statements of one file: `Q.job` is the text of `-- name: job`."""

    def __init__(self, file: str) -> None:
        self.file = file

    @property
    def named(self) -> dict[str, str]:
        return _load(self.file)

    def __getattr__(self, name: str) -> str:
        if name.startswith("_") or name in ("file", "named"):
            raise AttributeError(name)
        try:
            return self.named[name]
        except KeyError:
            raise AttributeError(f"sql/{self.file} names no statement {name!r}") from None


@cache
def _load(file: str) -> dict[str, str]:
    return parse_named(_sql_dir().joinpath(file).read_text(encoding="utf-8"), f"sql/{file}")


QUERIES = Statements("queries.sql")  # both backends
SQLITE = Statements("sqlite.sql")
POSTGRES = Statements("postgres.sql")
ADMIN = Statements("postgres_admin.sql")  # the server itself: schema, rights, link (%s)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    def statements(self) -> list[str]:
        """The file's statements (no semicolons inside our statements or comments)."""
        return [s.strip() for s in _without_comments(self.text).split(";") if s.strip()]


@cache
def migrations(backend: str) -> tuple[Migration, ...]:
    """The numbered migrations of `backend` ("sqlite" or "postgres"), version 1 first."""
    found = []
    for f in _sql_dir().joinpath(backend).iterdir():
        m = MIGRATION_FILE.fullmatch(f.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), f.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {backend} migrations are not numbered 1..n: {found}")
    return tuple(found)

"""Secrets kept out of what people read: a password in a URL or a conninfo string, a token
in a query, shown as *** in logs, the CLI, doctor, task.json and the status page."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET = "***"
SECRET_KEYS = re.compile(r"pass|secret|token|key|sig|auth|cred", re.IGNORECASE)
CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def url(value: str) -> str:
    """`value` with any password (user:PASS@, password=..., ?token=...) replaced by ***."""
    if not value:
        return value
    if "://" not in value:  # a libpq conninfo string: key=value pairs
        return CONNINFO_PASSWORD.sub(lambda m: m.group(1) + SECRET, value)
    try:
        parts = urlsplit(value)
    except ValueError:
        return "(unparsable URL)"
    if not parts.netloc:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}{sep}{SECRET if sep else ''}@{hostport}"
    query = urlencode(
        [(k, SECRET if SECRET_KEYS.search(k) else v) for k, v in parse_qsl(parts.query, True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def endpoint(value: str) -> str:
    """A callback URL as shown in logs and answers: scheme, host and path, no query."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "(unparsable URL)"
    if not parts.netloc:
        return "(not a URL)"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"

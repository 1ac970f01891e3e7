"""Names from the share: which can be used as text, which a manifest may give for one of its
drop's files, and how any of them is shown to a person (controls and undecodable bytes
escaped). Pure functions; boundary.py acts on the files."""

from __future__ import annotations

from pathlib import PurePosixPath

MAX_NAME_BYTES = 255  # one path component, as most file systems allow


def name_problem(name: str) -> str | None:
    """Why a file name from the share cannot be used as text (None when it can)."""
    try:
        raw = name.encode("utf-8")  # the surrogates of undecodable bytes refuse to encode
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds control characters"
    if len(raw) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


# every control character as \xNN: for names and lines a person reads (a terminal escape,
# a forged line, a journald priority cannot come through)
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def shown(name: str) -> str:
    """A name from the share as it can be printed: undecodable bytes and controls escaped."""
    try:  # the bytes of an undecodable name as \xNN; any other lone surrogate as \uNNNN
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(CONTROLS)


def relative_problem(value: str) -> str | None:
    """Why a path a manifest names cannot lead to one of the drop's own files (None: it can):
    relative, no '..', no hidden part (so never .dropbox/), every part usable text."""
    if not value or "\x00" in value:
        return "is not a usable file name"
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or value.startswith("~"):
        return "is an absolute path"
    if ".." in pure.parts:
        return "leads out of the manifest's folder ('..')"
    for part in pure.parts:
        if part.startswith("."):
            return "names a hidden or temporary file, which is never read"
        if why := name_problem(part):
            return f"has a part that {why}"
    return None

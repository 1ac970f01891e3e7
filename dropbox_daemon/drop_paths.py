"""The media paths a manifest names: what a name may be (relative, inside its folder, no
hidden or unusable part) and what it must lead to (a regular file of one link, no symbolic
link on the way out of the inbox, within the size ceiling). Each problem is a RejectedDrop
with its own code, field and a hint a person can act on."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from dropbox_daemon.boundary import kind
from dropbox_daemon.errors import RejectedDrop
from dropbox_daemon.names import name_problem


def check_media_path(
    value: str, field: str, base_dir: Path, inbox_root: Path, *, max_bytes: int
) -> Path:
    """Resolve a media path named by a manifest; RejectedDrop unless it is a safe file."""
    pure = _usable_name(value, field)
    candidate = base_dir.joinpath(*pure.parts)
    if not os.path.lexists(candidate):
        raise RejectedDrop(
            f"{field}: file {value!r} not found beside the manifest",
            code="missing_file",
            field=field,
            hint="drop the media first and the manifest last, or fix the name (case matters)",
        )
    _refuse_links(value, field, base_dir, pure.parts, inbox_root)
    _check_file(os.lstat(candidate), value, field, max_bytes)
    return candidate


def _usable_name(value: str, field: str) -> PurePosixPath:
    """The name as parts, each usable; RejectedDrop (each problem its own code) if not."""
    if not value or "\x00" in value or "\n" in value:
        raise RejectedDrop(
            f"{field}: {value!r} is not a usable file name",
            code="invalid_path",
            field=field,
            hint="name a file beside the manifest, e.g. welcome.wav",
        )
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or value.startswith("~") or re.match(r"^[A-Za-z]:", value):
        raise RejectedDrop(
            f"{field}: absolute path {value!r} is not allowed",
            code="absolute_path",
            field=field,
            hint="put the file beside the manifest and name it relative to the manifest",
        )
    if ".." in pure.parts:
        raise RejectedDrop(
            f"{field}: {value!r} leads out of the manifest's folder ('..')",
            code="path_escape",
            field=field,
            hint="put the file beside the manifest inside the inbox",
        )
    if any(p.startswith(".") for p in pure.parts):
        raise RejectedDrop(
            f"{field}: {value!r} is a hidden or temporary name, which is never read",
            code="invalid_path",
            field=field,
            hint="rename the file to its final name before dropping the manifest",
        )
    # the checks above are relative_problem's, each with its own code; what is left of it:
    # every part a usable name (UTF-8 text, no control characters)
    if why := next(filter(None, map(name_problem, pure.parts)), None):
        raise RejectedDrop(
            f"{field}: {value!r} has a part that {why}",
            code="invalid_path",
            field=field,
            hint="name the file as it is called beside the manifest, in plain text",
        )
    return pure


def _check_file(st: os.stat_result, value: str, field: str, max_bytes: int) -> None:
    """A regular file of one link, not empty, within the ceiling; RejectedDrop if not."""
    if not stat.S_ISREG(st.st_mode):
        raise RejectedDrop(
            f"{field}: {value!r} is {kind(st)}, not a regular file",
            code="not_a_file",
            field=field,
            hint="name an audio or image/video file",
        )
    if st.st_nlink > 1:
        raise RejectedDrop(
            f"{field}: {value!r} is a hard link (it may belong to a file outside the inbox)",
            code="hard_link",
            field=field,
            hint="copy the file into the inbox instead of hard-linking it",
        )
    if st.st_size == 0:
        raise RejectedDrop(
            f"{field}: {value!r} is empty (0 bytes)",
            code="empty_file",
            field=field,
            hint="the file may still be copying; drop it again once complete",
        )
    if st.st_size > max_bytes:
        raise RejectedDrop(
            f"{field}: {value!r} is {st.st_size} bytes, over the limit of {max_bytes}",
            code="file_too_large",
            field=field,
            hint="shorten or compress it, or raise [limits] in config.toml",
        )


def _refuse_links(
    value: str, field: str, base_dir: Path, parts: tuple[str, ...], inbox_root: Path
) -> None:
    """RejectedDrop where any part of the path is a symbolic link: a link is never followed,
    whether it leads out of the inbox (path_escape) or to another drop's file (symlink)."""
    for i in range(1, len(parts) + 1):
        here = base_dir.joinpath(*parts[:i])
        if not os.path.islink(here):
            continue
        root = inbox_root.resolve()
        real = here.resolve()
        if not real.is_relative_to(root) or real.is_relative_to(root / ".dropbox"):
            raise RejectedDrop(
                f"{field}: {value!r} is a link that leads out of the inbox",
                code="path_escape",
                field=field,
                hint="copy the file into the inbox instead of linking to it",
            )
        raise RejectedDrop(
            f"{field}: {value!r} is a symbolic link; links are never followed (the file it "
            "points to may be another drop's)",
            code="symlink",
            field=field,
            hint="put the file itself beside the manifest",
        )

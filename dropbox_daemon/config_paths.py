"""Where a config's folders may lie against one another (checked once its paths are resolved).

An inbox is the writers' ground: any folder in it that holds a manifest is a drop, and a drop
is moved away whole when it is claimed. So no folder of the daemon may lie in an inbox: with
the outbox inside one, a writer's `job.json` dropped into the outbox hands every result over
as that drop's files; with the state folder inside, writers reach the database; with one inbox
inside another, a drop there belongs to both and the outer one can claim the inner one whole.
The outbox holds job folders named by job id (a job called as an inbox inside it would answer
there), and the state folder is the daemon's own. The state folder may hold an inbox (the
smoke inbox's default) and the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dropbox_daemon.errors import ConfigError


def within(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def layout_problems(inboxes: Sequence[tuple[str, Path]], out: Path, state: Path) -> list[str]:
    """What is wrong with where the inboxes (name, path), the outbox and the state folder lie
    (paths resolved); [] if nothing."""
    found = []
    for k, (name, path) in enumerate(inboxes):
        named = f"inbox {name!r} ({path})"
        for other, other_path in inboxes[k + 1 :]:
            if within(path, other_path) or within(other_path, path):
                found.append(
                    f"{named} and inbox {other!r} ({other_path}) overlap: a drop in one "
                    "would be a drop in the other too"
                )
        if within(out, path):
            found.append(
                f"the outbox ({out}) lies in {named}: a manifest a writer puts in the outbox "
                "would claim the results as its drop"
            )
        elif within(path, out):
            found.append(
                f"{named} lies in the outbox ({out}), which holds job folders named by job id"
            )
        if within(state, path):
            found.append(
                f"the state folder ({state}) lies in {named}: writers would reach the database"
            )
    if within(state, out):
        found.append(f"the state folder ({state}) lies in the outbox ({out}), which is shared")
    return found


def check_layout(inboxes: Sequence[tuple[str, Path]], out: Path, state: Path, source: Path) -> None:
    """ConfigError naming every overlap, with the layout that works."""
    problems = layout_problems(inboxes, out, state)
    if problems:
        raise ConfigError(
            f"{source}: " + "; ".join(problems),
            hint="give each inbox, the outbox and [daemon] state_dir a folder of its own, side "
            "by side (e.g. /srv/dropbox/inbox, /srv/dropbox/outbox, state on local disk "
            "/var/lib/dropbox-daemon); only the state folder may hold an inbox or the outbox",
        )

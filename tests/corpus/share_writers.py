"""The share's writers: what a careless or hostile person with write access to the inbox
can put there while a daemon runs, each built for real on disk (links, FIFOs, sockets,
devices, sparse files, deep and wide trees, names that are not text, forged coordination
files), with the answer it must get.

Every case is dropped into a running daemon beside bystanders: the claimed files of a
finished job (`ctx.victim`), files outside the inbox (`ctx.outside`), a folder of shared
assets in the inbox that is no drop (`ctx.assets`). tests/e2e/test_share_writers.py checks,
after each case, that the bystanders are unchanged byte for byte, that the case was answered
once, and that a normal job dropped after it is done within 30 s.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support import put_file, put_manifest


@dataclass
class Ctx:
    inbox: Path
    outside: Path
    assets: Path  # inbox/assets: files that belong to no drop
    victim: Path  # the claimed audio of a finished job, inside .dropbox/claimed/
    instance: str  # the running daemon's instance id
    media: object
    sockets: list[socket.socket]  # kept open until the test ends


@dataclass
class Case:
    name: str
    expect: str  # an error code (rejected with it), or "ignored" (never read, logged once)
    build: Callable[[Ctx], None]
    token: str = ""  # ignored: a part of the name the one log line shows (default: name)
    left: str | None = None  # rejected: a name error.json says stayed in the inbox

    @property
    def manifest(self) -> str:
        return f"{self.name}.json"


def media_pair(ctx: Ctx, name: str) -> tuple[str, str]:
    a, t = f"{name}-a.wav", f"{name}-t.png"
    put_file(ctx.inbox / a, ctx.media.tone)
    put_file(ctx.inbox / t, ctx.media.image)
    return a, t


def loose(name: str, expect: str, left: str | None = None, **fields) -> Case:  # noqa: ANN003
    """A loose manifest whose fields are given (a callable gets the Ctx); audio and template
    default to good files of its own."""

    def build(ctx: Ctx) -> None:
        a, t = media_pair(ctx, name)
        data = {"audio": a, "template": t}
        for k, v in fields.items():
            data[k] = v(ctx) if callable(v) else v
        put_manifest(ctx.inbox / f"{name}.json", data)

    return Case(name, expect, build, left=left)


def with_entry(name: str, expect: str, make: Callable[[Ctx, Path], None], **fields) -> Case:  # noqa: ANN003
    """A loose manifest whose audio is an entry `make` puts at <name>-x.wav."""

    def build(ctx: Ctx) -> None:
        _, t = media_pair(ctx, name)
        make(ctx, ctx.inbox / f"{name}-x.wav")
        put_manifest(
            ctx.inbox / f"{name}.json", {"audio": f"{name}-x.wav", "template": t, **fields}
        )

    return Case(name, expect, build)


def at_manifest(name: str, make: Callable[[Ctx, Path], None], token: str = "") -> Case:
    """Something that is not a file, put where a loose manifest goes: never read."""
    return Case(
        name, "ignored", lambda ctx: make(ctx, ctx.inbox / f"{name}.json"), token or f"/{name}.json"
    )


def job_folder(name: str, expect: str, fill: Callable[[Ctx, Path], None], token: str = "") -> Case:
    """A job folder with good media and a job.json; `fill` adds the hostile part."""

    def build(ctx: Ctx) -> None:
        tmp = ctx.inbox / f".{name}.tmp"
        tmp.mkdir()
        put_file(tmp / "a.wav", ctx.media.tone)
        put_file(tmp / "t.png", ctx.media.image)
        fill(ctx, tmp)
        if not os.path.lexists(tmp / "job.json"):
            (tmp / "job.json").write_text(json.dumps({"audio": "a.wav", "template": "t.png"}))
        os.rename(tmp, ctx.inbox / name)

    case = Case(name, expect, build, token or name)
    case.manifest_name = "job.json"  # type: ignore[attr-defined]
    return case


def forged(name: str, where: Callable[[Ctx], Path], body: bytes | Callable[[Path], None]) -> Case:
    """A coordination file under .dropbox/ written by a stranger: set aside, logged once."""

    def build(ctx: Ctx) -> None:
        path = where(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(body):
            body(path)
        else:
            tmp = path.with_name(f".{path.name}.forge")
            tmp.write_bytes(body)
            os.rename(tmp, path)

    return Case(name, "ignored", build, name)


# -- builders ------------------------------------------------------------------------------
def symlink_to(target: Callable[[Ctx], Path]) -> Callable[[Ctx, Path], None]:
    return lambda ctx, p: os.symlink(target(ctx), p)


def fifo(ctx: Ctx, p: Path) -> None:
    os.mkfifo(p)


def unix_socket(ctx: Ctx, p: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.listen(1)
    ctx.sockets.append(s)


def char_device(ctx: Ctx, p: Path) -> None:
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero


def folder(ctx: Ctx, p: Path) -> None:
    p.mkdir()
    (p / "inside.wav").write_bytes(b"x")


def sparse_8gb(ctx: Ctx, p: Path) -> None:
    with open(p, "wb") as f:
        f.truncate(8 << 30)


def hard_link_out(ctx: Ctx, p: Path) -> None:
    os.link(ctx.outside / "secret.wav", p)


def deep_tree(levels: int) -> Callable[[Ctx, Path], None]:
    def fill(ctx: Ctx, folder: Path) -> None:
        here = folder
        for _ in range(levels):
            os.mkdir(here := here / "d")
        (here / "bottom.txt").write_text("deep")

    return fill


def wide_tree(n: int) -> Callable[[Ctx, Path], None]:
    def fill(ctx: Ctx, folder: Path) -> None:
        many = folder / "many"
        many.mkdir()
        for i in range(n):
            (many / f"{i}").touch()

    return fill


def named(raw: bytes) -> Callable[[Ctx, Path], None]:
    """A manifest (of good media) under a name that is not text."""

    def make(ctx: Ctx, p: Path) -> None:
        a, t = media_pair(ctx, p.stem[:8] or "raw")
        body = json.dumps({"audio": a, "template": t}).encode()
        path = os.path.join(os.fsencode(ctx.inbox), raw)
        tmp = os.path.join(os.fsencode(ctx.inbox), b".raw.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, path)

    return make


def victim_rel(ctx: Ctx) -> str:
    return str(ctx.victim.relative_to(ctx.inbox))


def lease_dir(ctx: Ctx) -> Path:
    return ctx.inbox / ".dropbox" / "instances"


def claims_dir(ctx: Ctx) -> Path:
    return ctx.inbox / ".dropbox" / "claimed"


FAKE_CLAIM = "20260101T000000-0123456789"


def fake_claim(owner: dict) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        (path / "drop").mkdir(parents=True)
        (path / "drop" / "stolen.json").write_text('{"audio": "a", "template": "b"}')
        (path / "owner.json").write_text(json.dumps(owner))

    return make


def deep_meta(levels: int) -> dict:
    value: object = "bottom"
    for _ in range(levels):
        value = {"x": value}
    return value  # type: ignore[return-value]


def outside_files(outside: Path, media) -> None:  # noqa: ANN001
    """What lies outside the inbox before any case runs (the test digests it)."""
    (outside / "secret.wav").write_bytes(media.tone.read_bytes())
    (outside / "real.json").write_text(json.dumps({"audio": "a.wav", "template": "t.png"}))
    job = outside / "elsewhere-job"
    job.mkdir()
    put_file(job / "a.wav", media.tone)
    put_file(job / "t.png", media.image)
    (job / "job.json").write_text(json.dumps({"audio": "a.wav", "template": "t.png"}))


def _job_folder_link(ctx: Ctx) -> None:
    os.symlink(ctx.outside / "elsewhere-job", ctx.inbox / "linked-folder")


def _rejected_folder_with(make: Callable[[Ctx, Path], None]) -> Callable[[Ctx, Path], None]:
    def fill(ctx: Ctx, folder: Path) -> None:
        make(ctx, folder / "odd.wav")
        (folder / "job.json").write_text(
            json.dumps({"audio": "a.wav", "template": "t.png", "engine": "sora"})
        )

    return fill


CASES: list[Case] = [
    # a manifest that names another job's claimed files, or the daemon's own
    loose("steal-claimed", "invalid_value", left="*", engine="sora", audio=victim_rel),
    loose("steal-claimed-valid", "invalid_path", audio=victim_rel),
    loose(
        "steal-lease", "invalid_path", template=lambda c: f".dropbox/instances/{c.instance}.json"
    ),
    loose("steal-dotdot", "path_escape", audio=lambda c: f"assets/../{victim_rel(c)}"),
    loose("steal-hidden", "invalid_path", audio=".hidden/a.wav"),
    loose("rejected-dotdot", "invalid_value", engine="sora", audio="../outside.wav"),
    # links: into the inbox, into .dropbox/, out of it, dangling, in a rejected drop
    with_entry("link-asset", "symlink", symlink_to(lambda c: c.assets / "voice.wav")),
    with_entry("link-claimed", "path_escape", symlink_to(lambda c: c.victim)),
    with_entry("link-out", "path_escape", symlink_to(lambda c: c.outside / "secret.wav")),
    with_entry("link-dangling", "path_escape", symlink_to(lambda c: c.outside / "nothing")),
    with_entry("link-zero", "path_escape", symlink_to(lambda c: Path("/dev/zero"))),
    with_entry(
        "link-rejected", "invalid_value", symlink_to(lambda c: c.assets / "voice.wav"), engine="x"
    ),
    # what is not a file, named as media
    with_entry("media-fifo", "not_a_file", fifo),
    with_entry("media-socket", "not_a_file", unix_socket),
    with_entry("media-device", "not_a_file", char_device),
    with_entry("media-folder", "not_a_file", folder),
    with_entry("media-sparse", "file_too_large", sparse_8gb),
    with_entry("media-hardlink", "hard_link", hard_link_out),
    # what is not a file, where a manifest goes: never read, never blocks the loop
    at_manifest("zero", symlink_to(lambda c: Path("/dev/zero"))),
    at_manifest("urandom", symlink_to(lambda c: Path("/dev/urandom"))),
    at_manifest("pipe", fifo),
    at_manifest("sock", unix_socket),
    at_manifest("chardev", char_device),
    at_manifest("link-manifest", symlink_to(lambda c: c.outside / "real.json")),
    at_manifest("bad-utf8", named(b"\xff\xfebad-utf8.json"), token="bad-utf8"),
    at_manifest("ctrl-name", named(b"ctrl-name\n<0>evil.json"), token="ctrl-name"),
    # job folders: links, deep and wide trees, odd entries in a rejected one
    Case("linked-folder", "ignored", lambda c: _job_folder_link(c), "linked-folder"),
    job_folder("deep-folder", "too_deep", deep_tree(1000)),
    job_folder("wide-folder", "too_many_files", wide_tree(10_050)),
    job_folder(
        "folder-manifest-link",
        "ignored",
        lambda c, f: os.symlink(c.outside / "real.json", f / "job.json"),
    ),
    job_folder("folder-manifest-fifo", "ignored", lambda c, f: os.mkfifo(f / "job.json")),
    job_folder("folder-with-fifo", "invalid_value", _rejected_folder_with(fifo)),
    job_folder("folder-with-socket", "invalid_value", _rejected_folder_with(unix_socket)),
    job_folder(
        "folder-with-link",
        "invalid_value",
        _rejected_folder_with(symlink_to(lambda c: c.outside / "secret.wav")),
    ),
    # poison manifests: answered once, not retried for ever
    loose("meta-deep", "invalid_value", meta=deep_meta(300)),
    loose("newline-id", "bad_job_id", job_id="victim\n"),
    loose("surrogate-name", "invalid_path", audio="a\udcff.wav"),
    loose("control-name", "invalid_path", audio="a\x1b[2Jb.wav"),
    # forged coordination files under .dropbox/
    forged("forged-list", lambda c: lease_dir(c) / "forged-list.json", b"[]"),
    forged("forged-garbage", lambda c: lease_dir(c) / "forged-garbage.json", b"\xff{not json}"),
    forged(
        "forged-types",
        lambda c: lease_dir(c) / "forged-types.json",
        json.dumps({"instance": "forged-types", "pid": "x", "beat": []}).encode(),
    ),
    forged(
        "forged-misnamed",
        lambda c: lease_dir(c) / "forged-misnamed.json",
        json.dumps(
            {
                "instance": "someone-else",
                "host": "h",
                "pid": 1,
                "boot_id": "",
                "state_dir": "/",
                "started_at": 0.0,
                "state": "stopped",
            }
        ).encode(),
    ),
    forged("forged-fifo", lambda c: lease_dir(c) / "forged-fifo.json", lambda p: os.mkfifo(p)),
]

# read at start-up (claims a crash left) and by retention: written before a (re)start
AT_START: list[Case] = [
    forged("start-list", lambda c: lease_dir(c) / "start-list.json", b"[]"),
    forged(
        FAKE_CLAIM,
        lambda c: claims_dir(c) / FAKE_CLAIM,
        fake_claim({"instance": "ghost", "source": "/etc/passwd", "job_id": "../../x"}),
    ),
    forged("not-a-claim-name", lambda c: claims_dir(c) / "not-a-claim-name", lambda p: p.mkdir()),
]

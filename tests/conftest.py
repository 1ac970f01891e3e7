from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import (  # noqa: E402
    REPORT,
    DaemonProc,
    astronaut,
    make_face_video,
    make_image,
    make_speech,
    make_tone,
    make_video,
)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    """The figures tests measured in passing (support.REPORT), after the summary."""
    if REPORT:
        terminalreporter.section("figures measured by the tests")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _torch_threads_kept() -> object:
    """A wav2lip engine loaded in this process sets torch's threads for its model calls (one
    each where two run at once): put them back, so later tests run on every core."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


class Media:
    """Real media files, made once per session and cached under the pytest cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _get(self, name: str, make) -> Path:  # noqa: ANN001
        p = self.root / name
        if not p.exists() or p.stat().st_size == 0:
            tmp = p.with_name("tmp-" + name)
            make(tmp)
            tmp.rename(p)
        return p

    @property
    def tone(self) -> Path:  # 2 s of syllable-like tone
        return self._get("tone.wav", lambda p: make_tone(p, 2.0))

    @property
    def tone_long(self) -> Path:  # 20 s
        return self._get("tone20.wav", lambda p: make_tone(p, 20.0))

    @property
    def tone_44k(self) -> Path:
        return self._get("tone44k.mp3", lambda p: make_tone(p, 1.5, rate=44100))

    @property
    def tone_short(self) -> Path:  # 0.5 s
        return self._get("tone05.wav", lambda p: make_tone(p, 0.5))

    @property
    def tiny_image(self) -> Path:  # 64x48
        return self._get("tiny.png", lambda p: make_image(p, "64x48"))

    @property
    def video(self) -> Path:  # 1 s 320x240 25 fps
        return self._get("video.mp4", lambda p: make_video(p, 1.0))

    @property
    def image(self) -> Path:
        return self._get("still.png", lambda p: make_image(p))

    @property
    def face_image(self) -> Path:  # the astronaut, 512x512 png
        import cv2

        return self._get("face.png", lambda p: cv2.imwrite(str(p), astronaut()))

    @property
    def face_video(self) -> Path:  # 3 s, 256x256, drifting
        return self._get("face3.mp4", lambda p: make_face_video(p, 3.0))

    @property
    def face_video_30(self) -> Path:  # 30 s, 192x192, drifting: the loop test
        return self._get(
            "face30.mp4", lambda p: make_face_video(p, 30.0, size=192, pan=0.12, linear=True)
        )

    @property
    def fade_video(self) -> Path:  # 4 s with a 1 s fade to black from 1.5 s
        return self._get("fade.mp4", lambda p: make_face_video(p, 4.0, fade=(1.5, 2.5)))

    @property
    def tone_95(self) -> Path:
        return self._get("tone95.wav", lambda p: make_tone(p, 95.0))

    @property
    def wav2lip_checkpoint(self) -> Path:  # random weights, calibrated, in the published format
        def make(p: Path) -> None:
            from w2l_fixture import calibrated_net, save_published

            save_published(calibrated_net(), p)

        return self._get("wav2lip_random.pth", make)

    @property
    def speech(self) -> Path:
        return self._get("speech.wav", make_speech)

    @property
    def big_image(self) -> Path:  # 1280x720 still
        return self._get("still720.png", lambda p: make_image(p, "1280x720"))


@pytest.fixture(scope="session")
def media(request: pytest.FixtureRequest) -> Media:
    return Media(Path(request.config.cache.mkdir("media")))


@pytest.fixture
def daemon_factory(tmp_path: Path):  # noqa: ANN201
    made: list[DaemonProc] = []

    def make(**kw) -> DaemonProc:  # noqa: ANN003
        d = DaemonProc(tmp_path / f"d{len(made)}", **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.alive():
            d.stop(timeout=30)


@pytest.fixture
def daemon(daemon_factory) -> DaemonProc:  # noqa: ANN001
    return daemon_factory().start()


def _need_postgres(what: str = "PostgreSQL server binaries") -> None:
    import os

    from pg import REQUIRE_ENV

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{what} missing (apt-get install postgresql pgbouncer)")
    pytest.skip(f"needs {what}: apt-get install postgresql pgbouncer (.ci/run does)")


@pytest.fixture(scope="session")
def pg_server():  # noqa: ANN201
    """One real PostgreSQL server for the session (tests/pg.py says how it runs as root)."""
    from pg import PgServer, pg_bin

    if pg_bin() is None:
        _need_postgres()
    server = PgServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def pg_tls_server():  # noqa: ANN201
    """A second server that takes TCP logins over TLS only, its certificate signed by a CA
    the test made (pg_tls_server.ca)."""
    from pg import PgServer, pg_bin

    if pg_bin() is None:
        _need_postgres()
    server = PgServer(tls=True)
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server) -> str:  # noqa: ANN001
    """A fresh database on the session's server, the farm's schema applied (admin URL)."""
    return pg_server.new_database()


@pytest.fixture
def own_server(request):  # noqa: ANN001, ANN201
    """A server of the test's own, as it freezes it or makes it too small for the farm
    (max_connections: the test's indirect parameter, else 200)."""
    import signal

    from pg import PgServer, pg_bin

    if pg_bin() is None:
        _need_postgres()
    server = PgServer(max_connections=getattr(request, "param", 200))
    yield server
    server.freeze(signal.SIGCONT)
    server.close()


@pytest.fixture(scope="session")
def pgbouncers(pg_server):  # noqa: ANN001, ANN201
    """mode -> a PgBouncer in front of the session's server (made on first use)."""
    from pg import PgBouncer, pgbouncer_bin

    if pgbouncer_bin() is None:
        _need_postgres("pgbouncer")
    made: dict = {}

    def get(mode: str, role: str):  # noqa: ANN202
        key = (mode, role)
        if key not in made:
            made[key] = PgBouncer(pg_server, mode, [role])
        return made[key]

    yield get
    for b in made.values():
        b.close()


class FarmDb:
    """A fresh farm database of one kind, as a daemon reaches it: `url` and the [store]
    keys beside it (`store`), its role and the admin URL of the same database."""

    def __init__(self, url: str, store: dict, role: str, admin_url: str) -> None:
        self.url, self.store, self.role, self.admin_url = url, store, role, admin_url

    def settings(self):  # noqa: ANN201
        from dropbox_daemon.store.pg_conn import LinkSettings

        ssl = tuple((k, str(v)) for k, v in self.store.items() if k.startswith("ssl"))
        return LinkSettings(password_file=self.store.get("password_file", ""), ssl=ssl)


# how operators' databases differ: encoding, a pooler in front, TLS; always a DML-only role
FARM_DB_KINDS = ("sql_ascii", "latin1", "pgbouncer-transaction", "pgbouncer-session", "tls")


@pytest.fixture
def farm_db(request, tmp_path):  # noqa: ANN001, ANN201
    """farm_db(kind) -> FarmDb: the schema applied by the owner (admin), the daemons' role
    with rows rights only, logging in with a password (a file, or the URL for latin1)."""
    from pg import PASSWORD

    def make(kind: str) -> FarmDb:
        server = request.getfixturevalue("pg_tls_server" if kind == "tls" else "pg_server")
        encoding = {"sql_ascii": "SQL_ASCII", "latin1": "LATIN1"}.get(kind, "UTF8")
        admin = server.new_database(encoding)
        db = admin.rsplit("/", 1)[1].split("?")[0]
        role = server.dml_role(admin)
        pw = tmp_path / f"pw-{role}"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        store: dict = {"password_file": str(pw)}
        if kind == "latin1":  # the password in the URL: what must never be printed
            return FarmDb(server.url(role, db, password=True), {}, role, admin)
        if kind.startswith("pgbouncer"):
            bouncer = request.getfixturevalue("pgbouncers")(kind.split("-")[1], role)
            return FarmDb(bouncer.url(role, db), store, role, admin)
        if kind == "tls":
            store |= {"sslmode": "verify-full", "sslrootcert": str(server.ca)}
            return FarmDb(f"postgresql://{role}@localhost:{server.port}/{db}", store, role, admin)
        return FarmDb(server.url(role, db), store, role, admin)

    return make

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dropbox_daemon import config
from dropbox_daemon.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_repo_config_loads_with_defaults() -> None:
    cfg = config.load(REPO / "config.toml")
    assert cfg.inbox[0].name == "default" and cfg.inbox[0].path == REPO / "inbox"
    assert cfg.daemon.outbox == REPO / "outbox"
    assert cfg == config.load(REPO / "config.toml")  # deterministic
    assert len(cfg.config_hash()) == 12


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[[inbox]]\nname = "a"\npath = "x"\nsettle_seconds = "slow"\n',
            "inbox.[0].settle_seconds",
        ),
        ('[[inbox]]\nname = "a"\npath = "x"\nwatch = "inotify"\n', "inbox.[0].watch"),
        (
            '[daemon]\nmax_atempts = 3\n[[inbox]]\nname = "a"\npath = "x"\n',
            "daemon.max_atempts: unknown key",
        ),
        ("[daemon]\n", "at least one [[inbox]]"),
        ('[[inbox]]\nname = "a"\npath = "x"\n[[inbox]]\nname = "a"\npath = "y"\n', "repeated: a"),
        ("[[inbox]\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text: str, needle: str) -> None:  # noqa: ANN001
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(p) in e.value.message and needle in e.value.message, e.value.message


def test_env_selects_the_file(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    p = tmp_path / "c.toml"
    p.write_text('[[inbox]]\nname = "x"\npath = "in"\n')
    monkeypatch.setenv(config.ENV_CONFIG, str(p))
    assert config.load().inbox[0].path == tmp_path / "in"
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def run_daemon(config_file: Path) -> subprocess.CompletedProcess[str]:
    """`dropbox-daemon run` on a config that must not start: its exit and its words."""
    return subprocess.run(
        [sys.executable, "-m", "dropbox_daemon", "run", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reports_bad_config_and_exits_3(tmp_path) -> None:  # noqa: ANN001
    p = tmp_path / "c.toml"
    p.write_text('[[inbox]]\nname = "x"\npath = "in"\nkeep_days = -1\n')
    r = run_daemon(p)
    assert r.returncode == 3
    assert "keep_days" in r.stderr and str(p) in r.stderr


LAYOUTS = [  # (daemon table, inboxes as name=path, what the error names; "" where it loads)
    ({}, ["a=in", "smoke=.state/smoke-inbox"], ""),  # the repo's layout
    ({"outbox": "state/out", "state_dir": "state"}, ["a=in", "b=state/in"], ""),
    ({"outbox": "share/out"}, ["a=share"], "the outbox (OUT) lies in inbox 'a'"),
    ({"outbox": "share"}, ["a=share"], "the outbox (OUT) lies in inbox 'a'"),
    ({"outbox": "share"}, ["a=share/in"], "inbox 'a' (ROOT/share/in) lies in the outbox"),
    ({"state_dir": "in/.state"}, ["a=in"], "the state folder (STATE) lies in inbox 'a'"),
    (
        {"state_dir": "out/st", "outbox": "out"},
        ["a=in"],
        "the state folder (STATE) lies in the outbox",
    ),
    ({}, ["a=in", "b=in/b"], "inbox 'a' (ROOT/in) and inbox 'b' (ROOT/in/b) overlap"),
    ({}, ["a=in", "b=in"], "inbox 'a' (ROOT/in) and inbox 'b' (ROOT/in) overlap"),
    ({"outbox": "out"}, ["a=link"], "the outbox (OUT) lies in inbox 'a'"),  # link -> ROOT
]


@pytest.mark.parametrize(("daemon", "inboxes", "needle"), LAYOUTS)
def test_no_folder_of_the_daemon_lies_in_an_inbox(
    tmp_path: Path, daemon: dict, inboxes: list[str], needle: str
) -> None:
    (tmp_path / "link").symlink_to(tmp_path)  # an inbox named by a link to the outbox's parent
    data = {
        "daemon": daemon,
        "inbox": [dict(zip(("name", "path"), i.split("="), strict=True)) for i in inboxes],
    }
    if not needle:
        config.from_dict(data, source=tmp_path / "c.toml", env={})
        return
    with pytest.raises(ConfigError) as e:
        config.from_dict(data, source=tmp_path / "c.toml", env={})
    out, state = (
        tmp_path / daemon.get(k, d) for k, d in (("outbox", "outbox"), ("state_dir", ".state"))
    )
    expected = (
        needle.replace("ROOT", str(tmp_path)).replace("OUT", str(out)).replace("STATE", str(state))
    )
    assert expected in e.value.message, e.value.message
    assert "side by side" in e.value.hint


def test_a_daemon_whose_outbox_lies_in_its_inbox_does_not_start(tmp_path: Path) -> None:
    """A writer's job.json in an outbox inside the inbox would be claimed with every result in
    it as its drop's files: such a layout is refused before anything is watched."""

    share = tmp_path / "share"
    (share / "out" / "j1").mkdir(parents=True)
    (share / "out" / "j1" / "result.mp4").write_bytes(b"a result")
    (share / "out" / "job.json").write_text('{"audio": "j1/result.mp4", "template": "x.png"}')
    p = tmp_path / "c.toml"
    p.write_text('[daemon]\noutbox = "share/out"\n[[inbox]]\nname = "a"\npath = "share"\n')
    r = run_daemon(p)
    assert r.returncode == 3, r.stderr
    assert f"the outbox ({share / 'out'}) lies in inbox 'a'" in r.stderr, r.stderr
    assert (share / "out" / "j1" / "result.mp4").read_bytes() == b"a result"
    assert sorted(p.name for p in share.iterdir()) == ["out"]  # nothing claimed, nothing made


def test_default_instance_id_is_per_state_folder(tmp_path: Path) -> None:
    a = config.default_instance_id("render-1", tmp_path / "gpu0")
    b = config.default_instance_id("render-1", tmp_path / "gpu1")
    assert a != b and a.startswith("render-1-") and len(a) == len("render-1-") + 6
    assert a == config.default_instance_id("render-1", tmp_path / "gpu0")  # stable
    assert config.default_instance_id("a host/with spaces", tmp_path).startswith(
        "a-host-with-spaces-"
    )


def test_environment_overrides_the_file_for_per_gpu_units(tmp_path: Path) -> None:
    data = {"inbox": [{"name": "a", "path": "in"}], "daemon": {"state_dir": "s"}}
    env = {
        "DROPBOX_DAEMON_STATE_DIR": str(tmp_path / "gpu3"),
        "DROPBOX_DAEMON_INSTANCE": "box-gpu3",
        "DROPBOX_DAEMON_STORE_URL": "postgresql://dd@db:5432/farm",
    }
    cfg = config.from_dict(data, source=tmp_path / "c.toml", env=env)
    assert cfg.daemon.state_dir == tmp_path / "gpu3" and cfg.instance_id == "box-gpu3"
    assert cfg.store.url == "postgresql://dd@db:5432/farm"
    assert cfg.daemon_dir == cfg.daemon.outbox / "_daemon" / "box-gpu3"
    with pytest.raises(ConfigError, match="instance"):
        config.from_dict(data, source=tmp_path / "c.toml", env={"DROPBOX_DAEMON_INSTANCE": "a b"})
    with pytest.raises(ConfigError, match="store.url"):
        config.from_dict(
            data, source=tmp_path / "c.toml", env={"DROPBOX_DAEMON_STORE_URL": "mysql://x"}
        )


def test_environment_sets_the_status_page_and_the_weights_for_containers(tmp_path: Path) -> None:
    data = {"inbox": [{"name": "a", "path": "in"}], "http": {"listen": ""}}
    (tmp_path / "token").write_text("s3cret\n")
    env = {
        "DROPBOX_DAEMON_HTTP_LISTEN": "0.0.0.0:8765",
        "DROPBOX_DAEMON_HTTP_TOKEN_FILE": str(tmp_path / "token"),
        "DROPBOX_DAEMON_WAV2LIP": "models/wav2lip_gan.pth",
    }
    cfg = config.from_dict(data, source=tmp_path / "c.toml", env=env)
    assert cfg.http.listen == "0.0.0.0:8765" and cfg.http.bearer() == "s3cret"
    assert cfg.models.wav2lip == tmp_path / "models" / "wav2lip_gan.pth"  # beside the file
    with pytest.raises(ConfigError, match="listen"):
        config.from_dict(data, source=tmp_path / "c.toml", env={"DROPBOX_DAEMON_HTTP_LISTEN": "x"})


@pytest.mark.parametrize(
    "given, shown",
    [
        ("postgresql://render:S3cret@db:5432/farm", "postgresql://render:***@db:5432/farm"),
        (
            "postgresql://render@db/farm?password=S3cret&sslmode=require",
            "postgresql://render@db/farm?password=***&sslmode=require",
        ),
        ("host=db password=S3cret dbname=farm", "host=db password=*** dbname=farm"),
        ("https://hooks.example/h?token=S3cret&job=1", "https://hooks.example/h?token=***&job=1"),
        ("postgresql://db/farm", "postgresql://db/farm"),
    ],
)
def test_passwords_in_urls_are_shown_as_stars(given: str, shown: str) -> None:
    from dropbox_daemon import redact

    assert redact.url(given) == shown
    assert "S3cret" not in redact.endpoint(given)


def test_config_hash_covers_no_secret_and_errors_do_not_print_them(tmp_path: Path) -> None:
    base = {
        "daemon": {"state_dir": str(tmp_path / "s")},
        "inbox": [{"name": "a", "path": str(tmp_path / "in")}],
    }

    def cfg(**sections):  # noqa: ANN003, ANN202
        return config.from_dict({**base, **sections}, source=tmp_path / "c.toml", env={})

    plain = cfg(store={"url": "postgresql://u:one@db/farm"}, http={"token": "t1"})
    other = cfg(store={"url": "postgresql://u:two@db/farm"}, http={"token": "t2"})
    assert plain.config_hash() == other.config_hash()  # a secret is no part of how jobs render
    assert cfg(store={"url": "postgresql://u:one@db2/farm"}).config_hash() != plain.config_hash()
    with pytest.raises(ConfigError) as e:
        cfg(store={"url": "mysql://u:S3cret@db/farm"})
    assert "S3cret" not in str(e.value) and "***" in str(e.value)

"""Property tests (hypothesis) of the manifest parser and the media path checks: whatever comes
in, the answer is a Manifest, a path inside the inbox, or a RejectedDrop, never anything else."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.errors import RejectedDrop
from dropbox_daemon.manifest import Manifest, check_media_path, read_raw, validate

LIMITS = LimitsConfig(max_manifest_bytes=64 * 1024)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(
    [
        "version",
        "job_id",
        "audio",
        "template",
        "engine",
        "priority",
        "callback_url",
        "replace",
        "output",
        "meta",
        "extra",
    ]
)


@FUZZ
@given(st.dictionaries(fields, json_values, max_size=8))
def test_validate_answers_a_manifest_or_a_rejection(data: dict) -> None:
    try:
        m = validate(data)
    except RejectedDrop as e:
        assert e.code and e.message and e.field is not None
        return
    assert isinstance(m, Manifest) and "audio" in data and "template" in data


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([".json", ".toml"]))
def test_read_raw_never_raises_anything_else(tmp_path_factory, blob: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("raw") / f"m{suffix}"
    path.write_bytes(blob)
    try:
        data = read_raw(path, LIMITS)
    except RejectedDrop as e:
        assert e.code in (
            "manifest_syntax",
            "manifest_encoding",
            "empty_manifest",
            "manifest_too_large",
        )
        return
    assert isinstance(data, dict)


@FUZZ
@given(st.integers(min_value=1, max_value=3000))
def test_deep_nesting_never_crashes_the_parser(tmp_path_factory, depth: int) -> None:
    path = tmp_path_factory.mktemp("deep") / "m.json"
    path.write_text('{"meta": ' + "[" * depth + "]" * depth + ', "audio": "a", "template": "b"}')
    try:
        validate(read_raw(path, LIMITS))
    except RejectedDrop:
        pass


path_parts = st.sampled_from(
    [
        "a.wav",
        "..",
        ".",
        "sub",
        "~",
        "/",
        "//",
        "\\\\",
        "x\x00y",
        "link",
        "out",
        " ",
        "-rf",
        "\n",
        "..\\..",
        "C:",
        "%2e%2e",
        "a.wav/..",
        "",
    ]
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(path_parts, min_size=1, max_size=5), st.booleans())
def test_media_paths_never_leave_the_inbox(
    tmp_path_factory, parts: list[str], absolute: bool
) -> None:
    root = tmp_path_factory.mktemp("fz")
    inbox = root / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "a.wav").write_bytes(b"x")
    (inbox / "sub" / "a.wav").write_bytes(b"x")
    (root / "secret.wav").write_bytes(b"s")
    os.symlink(root / "secret.wav", inbox / "link")
    os.symlink(root, inbox / "out")
    value = ("/" if absolute else "") + "/".join(parts)
    try:
        got = check_media_path(value, "audio", inbox, inbox, max_bytes=1 << 20)
    except RejectedDrop as e:
        assert e.field == "audio" and e.code in (
            "invalid_path",
            "absolute_path",
            "path_escape",
            "missing_file",
            "not_a_file",
            "empty_file",
            "hard_link",
            "file_too_large",
        )
        return
    assert Path(got).resolve().is_relative_to(inbox.resolve())
    assert Path(got).resolve().is_file()


def test_json_and_toml_huge_integers_are_rejections(tmp_path) -> None:  # noqa: ANN001
    for name, text in (
        ("a.json", '{"audio": "a", "template": "b", "priority": ' + "9" * 5000 + "}"),
        ("b.toml", 'audio = "a"\ntemplate = "b"\npriority = ' + "9" * 4000 + "\n"),
    ):
        p = tmp_path / name
        p.write_text(text)
        try:
            validate(read_raw(p, LIMITS))
        except RejectedDrop as e:
            assert e.code in ("manifest_syntax", "invalid_value"), (name, e.code)
        else:
            raise AssertionError(f"{name} was accepted")

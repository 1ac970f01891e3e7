"""The worker's output lines become daemon log records: level, job id and text kept."""

from __future__ import annotations

from loguru import logger

from dropbox_daemon.worker import _log_worker_line


def capture(lines: list[str]) -> list[tuple[str, str | None, str]]:
    got: list[tuple[str, str | None, str]] = []
    sink = logger.add(
        lambda m: got.append(
            (m.record["level"].name, m.record["extra"].get("job_id"), m.record["message"])
        ),
        level="DEBUG",
    )
    try:
        for line in lines:
            _log_worker_line(42, line)
    finally:
        logger.remove(sink)
    return got


def test_worker_lines_keep_level_and_job_and_native_lines_are_warnings() -> None:
    assert capture(
        [
            "INFO engine preview loaded in 0.00 s on cpu",
            "ERROR [job=j-1] job j-1 failed: {braces} stay",
            "Fatal Python error: Segmentation fault",
            "DEBUGGING is not a level",
        ]
    ) == [
        ("INFO", None, "worker[42] engine preview loaded in 0.00 s on cpu"),
        ("ERROR", "j-1", "worker[42] job j-1 failed: {braces} stay"),
        ("WARNING", None, "worker[42] Fatal Python error: Segmentation fault"),
        ("WARNING", None, "worker[42] DEBUGGING is not a level"),
    ]

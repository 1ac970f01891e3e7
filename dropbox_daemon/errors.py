"""Every failure an operator can see has one exception type here.

Each carries a stable `code` (for scripts), a `message` (what happened) and a
`hint` (what to do); outbox.py turns them into error.json in one place.
"""

from __future__ import annotations

from typing import Any

# Exit codes of the CLI.
EXIT_OK = 0
EXIT_FAILURE = 1  # a job ended failed/rejected/cancelled, or a check failed
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 5
EXIT_DUPLICATE = 6  # submit --wait: the drop repeated a job_id and was not run


class DaemonError(Exception):
    """Root of every error the daemon reports to a person."""

    code = "internal"
    stage = "daemon"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str = "",
        field: str | None = None,
        stage: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if stage:
            self.stage = stage
        self.hint = hint
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The error.json / task.json form of this error."""
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "stage": self.stage,
        }
        if self.field is not None:
            out["field"] = self.field
        return out


class ConfigError(DaemonError):
    """config.toml cannot be read or does not validate; start-up stops."""

    code = "config"
    stage = "config"


class RejectedDrop(DaemonError):
    """A drop that cannot be parsed or validated: the job ends `rejected`."""

    code = "invalid_manifest"
    stage = "validate"


class MediaError(DaemonError):
    """An input or output file cannot be probed, decoded or encoded."""

    code = "media"
    stage = "media"


class RenderError(DaemonError):
    """Rendering failed after the inputs were accepted: the job ends `failed`."""

    code = "render_failed"
    stage = "rendering"


class EngineError(RenderError):
    """A lip-sync engine could not load or run."""

    code = "engine"


class JobCancelled(DaemonError):
    """The job was cancelled by an operator while it ran."""

    code = "cancelled"
    stage = "rendering"


class IllegalTransition(DaemonError):
    """A state change the state machine does not allow (a bug or a race)."""

    code = "illegal_transition"
    stage = "store"


class CliError(Exception):
    """A command's refusal: what happened, what to do, and its exit code. The CLI prints it
    to stderr, or with --json as {"error": {...}} on stdout, so a script can always parse
    the answer."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.exit_code, self.hint = message, exit_code, hint

"""What the daemon and its worker say to each other over their pipe: one model per message
kind, checked where it is sent and where it is received. A message that is none of them (a
bug on either side, or a worker of another version) is said in the log and set aside, never
acted on; the pipe carries plain dicts (model_dump), the models stay on each side.

daemon -> worker: JobOrder, Cancel, Stop.
worker -> daemon: Ready, then for each job Stage, Progress, Inputs, Log, Loads, Alive and one
Result (`worker_pid` is stamped by the daemon's side of the pipe, never sent).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

__all__ = [
    "FROM_WORKER",
    "TO_WORKER",
    "Alive",
    "Cancel",
    "FromWorker",
    "Inputs",
    "JobOrder",
    "JobSpec",
    "Loads",
    "Log",
    "Output",
    "Progress",
    "Ready",
    "Result",
    "Stage",
    "Stop",
    "ToWorker",
    "ValidationError",
    "resolve_output",
    "what_is_wrong",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- daemon -> worker ----------------------------------------------------------------------
class Output(_Message):
    """A job's output options, resolved once by the daemon: the manifest's [output], then
    its inbox's, then the defaults (the worker derives nothing from the config again)."""

    name: str = "result.mp4"
    height: int | None = None
    fps: float | None = None
    crf: int = 20
    ai_label: bool = True
    preset: str = "veryfast"
    watermark: str | None = None
    hdr: str = "tonemap"  # "keep": an HLG/PQ template's result stays HDR


def resolve_output(defaults: dict[str, Any], manifest: dict[str, Any] | None) -> Output:
    """The inbox's output defaults, each overridden by the manifest's [output] where it
    gives one (a value of None leaves the default)."""
    given = (manifest or {}).get("output") or {}
    return Output(**{**defaults, **{k: v for k, v in given.items() if v is not None}})


class JobSpec(_Message):
    """What the worker is told of a job: who it is, where its files are, what the drop asked
    for, and its output options (None: its inbox is no longer configured; the job fails)."""

    job_id: str = Field(min_length=1)
    trace_id: str = "-"
    inbox: str
    engine: str | None = None
    claim_dir: str | None = None  # where its drop was claimed; every intake names one
    outbox_dir: str = Field(min_length=1)
    manifest: dict[str, Any] = Field(default_factory=dict)
    output: Output | None = None


class JobOrder(_Message):
    """Render this job."""

    type: Literal["job"] = "job"
    job: JobSpec


class Cancel(_Message):
    type: Literal["cancel"] = "cancel"
    job_id: str


class Stop(_Message):
    """Exit once the job in hand is done."""

    type: Literal["stop"] = "stop"


ToWorker = Annotated[JobOrder | Cancel | Stop, Field(discriminator="type")]
TO_WORKER: TypeAdapter[JobOrder | Cancel | Stop] = TypeAdapter(ToWorker)


# -- worker -> daemon ----------------------------------------------------------------------
class _FromWorker(_Message):
    worker_pid: int | None = None  # stamped on receipt: a replaced worker's words are ignored


class Ready(_FromWorker):
    """Engines loaded (or not, and why): jobs may come."""

    type: Literal["ready"] = "ready"
    pid: int
    device: str
    engines: list[str] = []
    loads: dict[str, int] = {}
    load_errors: dict[str, str] = {}


class _About(_FromWorker):
    job_id: str


class Stage(_About):
    type: Literal["stage"] = "stage"
    stage: Literal["rendering", "encoding"]


class Progress(_About):
    type: Literal["progress"] = "progress"
    progress: float = Field(ge=0.0, le=1.0)
    frames: int | None = None
    fps: float | None = None


class Inputs(_About):
    """What the job's inputs turned out to be (probed by content), for task.json."""

    type: Literal["inputs"] = "inputs"
    inputs: list[dict[str, Any]]


class Log(_About):
    type: Literal["log"] = "log"
    message: str


class Loads(_About):
    """An engine loaded for this job: how often each has been loaded in this worker."""

    type: Literal["loads"] = "loads"
    loads: dict[str, int]


class Alive(_About):
    """Still working on a long step (a hang is silence)."""

    type: Literal["alive"] = "alive"


class Result(_About):
    """How the job ended: done with its output and timings, or with an error."""

    type: Literal["result"] = "result"
    outcome: Literal["done", "failed", "rejected", "cancelled"]
    output: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    device: str | None = None
    error: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _says_how(self) -> Result:
        if self.outcome == "done" and (self.output is None or self.timings is None):
            raise ValueError("a done result has its output and timings")
        if self.outcome != "done" and not (self.error and self.error.get("code")):
            raise ValueError(f"a {self.outcome} result has an error with a code")
        return self


FromWorker = Annotated[
    Ready | Stage | Progress | Inputs | Log | Loads | Alive | Result, Field(discriminator="type")
]
FROM_WORKER: TypeAdapter[Ready | Stage | Progress | Inputs | Log | Loads | Alive | Result] = (
    TypeAdapter(FromWorker)
)


def what_is_wrong(e: ValidationError) -> str:
    """A ValidationError in one line: where and what, for the log."""
    parts = []
    for err in e.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ())) or "message"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)

"""http: hand the lip-sync to an existing HTTP service, keep everything else here.

Two kinds of service: `sync`, HeyGem-style `POST /human/generate {audio_path,
video_path, save_path}` answering `{code, message, data: {save_path, task_id}}`
once the video is written; and `async`, `POST /submit` -> `{task_id}` then
`GET /status/{task_id}` until it says done. The service reads and writes files
on a shared volume; `path_map` says how it names this host's paths. 429, 5xx
and connection errors are retried with back-off (tenacity, policy in retry.py);
the returned video is then labelled and encoded by the pipeline like any other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
)

from dropbox_daemon.boundary import is_inside
from dropbox_daemon.config_net import HttpEngineConfig
from dropbox_daemon.errors import EngineError, JobCancelled
from dropbox_daemon.render.engines.base import (
    AudioFeatures,
    Engine,
    FaceFrame,
    Patch,
    RenderContext,
)
from dropbox_daemon.retry import RETRYABLE_ERRORS, delay, parse_retry_after, retryable_status

OK_CODES = {0, 200, 10000}  # what such services put in `code` for success
MAX_ANSWER_BYTES = 1 << 20  # a JSON answer; a service that sends more is refused
ALIVE_SECONDS = 1.0  # while a request waits, the daemon hears this often that the job lives
DONE = {"done", "success", "succeeded", "completed", "finished"}
FAILED = {"failed", "error", "cancelled", "canceled"}


def map_path(path: str, pairs: list[tuple[str, str]], *, to_remote: bool) -> str:
    """Translate a path between this host's view and the service's (longest prefix wins)."""
    best = None
    for local, remote in pairs:
        src, dst = (local, remote) if to_remote else (remote, local)
        if (path == src or path.startswith(src.rstrip("/") + "/")) and (
            best is None or len(src) > len(best[0])
        ):
            best = (src, dst)
    if best is None:
        return path
    return best[1].rstrip("/") + path[len(best[0].rstrip("/")) :]


class HttpEngine(Engine):
    name = "http"
    needs_faces = False

    def __init__(self, cfg: HttpEngineConfig) -> None:
        self.cfg = cfg

    def load(self) -> None:
        if not self.cfg.base_url:
            raise EngineError(
                "the http engine has no service configured",
                code="engine_unavailable",
                stage="preparing",
                hint="set [engines.http] base_url in config.toml, or use another engine",
            )

    def render(
        self, frames: Iterator[FaceFrame], audio: AudioFeatures, ctx: RenderContext
    ) -> Iterator[Patch | None]:
        for _ in frames:  # the frames are already the service's
            yield None

    # -- the remote job --------------------------------------------------------------
    def source_video(self, ctx: RenderContext, audio: Path, template: Path) -> Path | None:
        save = ctx.work_dir / "http-result.mp4"
        save.unlink(missing_ok=True)
        pairs = [tuple(p) for p in self.cfg.path_map]
        payload = {
            "audio_path": map_path(str(audio), pairs, to_remote=True),
            "video_path": map_path(str(template), pairs, to_remote=True),
            "save_path": map_path(str(save), pairs, to_remote=True),
        }
        headers = {"X-Trace-Id": ctx.trace_id, "X-Dropbox-Job": ctx.job_id}
        deadline = time.monotonic() + self.cfg.job_timeout_seconds
        with httpx.Client(
            base_url=self.cfg.base_url or "",
            headers=headers,
            timeout=self.cfg.request_timeout_seconds,
        ) as client:
            if self.cfg.mode == "sync":
                body = self._call(client, ctx, "POST", self.cfg.generate_path, json=payload)
                self._check_code(body, "generate")
                data = body.get("data") or {}
                ctx.log(
                    f"http service: task {data.get('task_id', '-')} done (trace {ctx.trace_id})"
                )
                remote = data.get("save_path") or payload["save_path"]
            else:
                remote = self._submit_and_poll(client, ctx, payload, deadline)
        local = Path(map_path(str(remote), pairs, to_remote=False))
        if not is_inside(local, ctx.work_dir):
            raise EngineError(
                f"the service named its video {str(remote)[:300]!r}, which is outside this job's "
                f"folder ({ctx.work_dir}); it is not read",
                code="engine_output",
                stage="rendering",
                hint="the service must write to the save_path it was given (check path_map)",
            )
        if not local.is_file() or local.stat().st_size == 0:
            raise EngineError(
                f"the service reported success but its video {local} is missing or empty",
                code="engine_output",
                stage="rendering",
                hint="check [engines.http] path_map: the service must write where this host can read",
            )
        return local

    def _submit_and_poll(
        self, client: httpx.Client, ctx: RenderContext, payload: dict, deadline: float
    ) -> str:
        body = self._call(client, ctx, "POST", self.cfg.submit_path, json=payload)
        self._check_code(body, "submit")
        task_id = body.get("task_id") or (body.get("data") or {}).get("task_id")
        if not task_id:
            raise EngineError(
                f"the service accepted the job but sent no task_id: {str(body)[:200]}",
                code="engine_protocol",
                stage="rendering",
                hint="check [engines.http] mode",
            )
        ctx.log(f"http service: submitted as task {task_id} (trace {ctx.trace_id})")
        while True:
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise JobCancelled(
                    f"cancelled while the service ran task {task_id}", stage="rendering"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"the service's task {task_id} did not finish within {self.cfg.job_timeout_seconds:.0f} s",
                    code="engine_timeout",
                    stage="rendering",
                    hint=f"look at task {task_id} on the service; raise [engines.http] job_timeout_seconds if it is just slow",
                )
            st = self._call(client, ctx, "GET", self.cfg.status_path.format(task_id=task_id))
            data = st.get("data") if isinstance(st.get("data"), dict) else st
            status = str(data.get("status", "")).lower()
            if status in DONE:
                ctx.log(f"http service: task {task_id} done")
                return data.get("save_path") or payload["save_path"]
            if status in FAILED:
                raise EngineError(
                    f"the service's task {task_id} failed: {data.get('message') or data.get('error') or status}",
                    code="engine_failed",
                    stage="rendering",
                    hint=f"look at task {task_id} on the service",
                )
            ctx.alive()
            time.sleep(self.cfg.poll_seconds)

    def _waiting(
        self, client: httpx.Client, ctx: RenderContext, method: str, path: str, **kw: Any
    ) -> httpx.Response:
        """One request, made in a thread while this one tells the daemon every few seconds
        that the job is alive (a long sync render is not a hung worker) and watches for a
        cancel; the answer is read up to MAX_ANSWER_BYTES + 1."""
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                with client.stream(method, path, **kw) as resp:
                    chunks, size = [], 0
                    for chunk in resp.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_ANSWER_BYTES:
                            break
                    resp._content = b"".join(chunks)  # what .json() and .text read
                    result["resp"] = resp
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                result["error"] = e

        t = threading.Thread(target=call, name="http-engine-call", daemon=True)
        t.start()
        while t.is_alive():
            t.join(ALIVE_SECONDS)
            ctx.alive()
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise JobCancelled(
                    f"cancelled while waiting for {method} {path}", stage="rendering"
                )
        if "error" in result:
            raise result["error"]
        return result["resp"]

    @staticmethod
    def _check_code(body: dict[str, Any], what: str) -> None:
        code = body.get("code")
        if code is not None and code not in OK_CODES:
            raise EngineError(
                f"the service refused {what}: code {code}: {body.get('message') or body.get('msg') or ''}",
                code="engine_failed",
                stage="rendering",
                hint="the service's own message says why",
            )

    def _call(
        self, client: httpx.Client, ctx: RenderContext, method: str, path: str, **kw: Any
    ) -> dict[str, Any]:
        """One request, retried on 429/5xx/connection errors; the JSON answer or EngineError."""

        def wait(state: RetryCallState) -> float:
            resp = state.outcome.result() if state.outcome and not state.outcome.failed else None
            ra = parse_retry_after(resp.headers.get("retry-after")) if resp is not None else None
            return delay(state.attempt_number, self.cfg.retry, ra)

        def before_sleep(state: RetryCallState) -> None:
            o = state.outcome
            what = (
                f"HTTP {o.result().status_code}"
                if o and not o.failed
                else f"{type(o.exception()).__name__}"
                if o
                else "?"
            )
            ctx.log(
                f"http service: {method} {path} attempt {state.attempt_number}: {what}; retrying"
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.max_attempts),
            wait=wait,
            retry=retry_if_result(lambda r: retryable_status(r.status_code))
            | retry_if_exception(lambda e: isinstance(e, RETRYABLE_ERRORS)),
            before_sleep=before_sleep,
            retry_error_callback=lambda state: (
                state.outcome.result() if not state.outcome.failed else state.outcome.exception()
            ),
        )
        try:
            resp = retrying(self._waiting, client, ctx, method, path, **kw)
        except httpx.HTTPError as e:
            resp = e
        return self._answer(resp, method, path)

    def _answer(self, resp: httpx.Response | Exception, method: str, path: str) -> dict[str, Any]:
        """The service's last answer as a JSON object, or the EngineError that says why not."""
        if isinstance(resp, Exception):
            raise EngineError(
                f"the service at {self.cfg.base_url} cannot be reached ({method} {path}): {resp}",
                code="engine_unreachable",
                stage="rendering",
                hint="is the service up? check [engines.http] base_url",
            )
        if resp.status_code >= 400:
            raise EngineError(
                f"the service answered {method} {path} with HTTP {resp.status_code} after "
                f"{self.cfg.max_attempts} attempt(s): {resp.text[:200]}",
                code="engine_http",
                stage="rendering",
                hint="the service's log says why",
            )
        if len(resp.content) > MAX_ANSWER_BYTES:
            raise EngineError(
                f"the service's answer to {method} {path} is over {MAX_ANSWER_BYTES} bytes",
                code="engine_protocol",
                stage="rendering",
                hint="the service should answer with a small JSON object",
            )
        try:
            body = resp.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
            return body
        except ValueError as e:
            raise EngineError(
                f"the service's answer to {method} {path} is not JSON: {resp.text[:200]}",
                code="engine_protocol",
                stage="rendering",
                hint="check [engines.http] mode",
            ) from e

"""The daemon's Prometheus metrics: prometheus_client's types, fed by every state change
(Store.on_change), written with its atomic textfile writer for node_exporter's textfile
collector (metrics.prom, beside health.json) and served on /metrics."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile
from prometheus_client.registry import Collector

from dropbox_daemon.store import TERMINAL, Job


class _InstanceLabelled(Collector):
    """Every sample of `inner` with an `instance` label, so a farm's files can be merged."""

    def __init__(self, inner: CollectorRegistry, instance: str) -> None:
        self.inner, self.instance = inner, instance

    def collect(self):  # noqa: ANN201
        for family in self.inner.collect():
            family.samples = [
                s._replace(labels={**s.labels, "instance": self.instance}) for s in family.samples
            ]
            yield family


class Metrics:
    """The daemon's Prometheus metrics; fed by every state change (Store.on_change)."""

    def __init__(self, instance: str = "") -> None:
        self.own = r = CollectorRegistry()
        # what is written and served: the same metrics, each with this daemon's instance label
        self.registry = CollectorRegistry()
        self.registry.register(_InstanceLabelled(r, instance))
        self.jobs = Counter(
            "dropbox_jobs",
            "Jobs that ended, by final state and inbox",
            ["state", "inbox"],
            registry=r,
        )
        self.queue = Gauge(
            "dropbox_queue_depth", "Jobs waiting or running, by state", ["state"], registry=r
        )
        self.render = Histogram(
            "dropbox_render_seconds",
            "Wall time of a job's render, from start to done",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
        )
        self.rtf = Histogram(
            "dropbox_realtime_factor",
            "Seconds of video rendered per wall-clock second",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 16),
        )
        self.pickup = Histogram(
            "dropbox_pickup_latency_seconds",
            "From the manifest's last write to the job being queued",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.worker_restarts = Counter(
            "dropbox_worker_restarts", "Worker processes replaced", registry=r
        )
        self.callback_failures = Counter(
            "dropbox_callback_failures", "Callbacks given up on", registry=r
        )
        self.last_success = Gauge(
            "dropbox_last_success_timestamp_seconds", "When a job last ended done", registry=r
        )
        self.disk_free = Gauge("dropbox_disk_free_bytes", "Free space", ["path"], registry=r)
        self.status = Gauge(
            "dropbox_health_status",
            "0 ok, 1 degraded, 2 failing, 3 stopping, 4 stopped",
            registry=r,
        )
        self.intake_given_up = Gauge(
            "dropbox_intake_given_up",
            "Claims whose intake kept failing, since start: rejected (intake_failed) or quarantined",
            ["outcome"],
            registry=r,
        )

    def on_change(self, job: Job, from_state: str | None) -> None:
        """Count a job's state change (called by the store after each transition)."""
        if job.state == "queued" and from_state == "received" and "pickup" in job.timings:
            self.pickup.observe(max(0.0, job.timings["pickup"]))
        if job.state not in TERMINAL:
            return
        self.jobs.labels(job.state, job.inbox).inc()
        if job.state == "done":
            self.last_success.set(job.finished_at or time.time())
            total = job.timings.get("total")
            if total:
                self.render.observe(total)
                duration = (job.output or {}).get("duration")
                if duration:
                    self.rtf.observe(duration / total)

    def write(self, path: Path) -> None:
        write_to_textfile(str(path), self.registry)

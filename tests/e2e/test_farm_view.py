"""One view of the farm: jobs, status, health and the status page show every instance."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from farm_support import drop_valid, farm, instance_of
from support import headless_chromium, wait_for
from test_web import free_port


@pytest.mark.parametrize("way", ["folder", "database"])
def test_jobs_status_health_and_page_show_three_instances(
    daemon_factory, media, tmp_path, way, request
) -> None:  # noqa: ANN001
    """Any daemon of the share shows every job and instance: by the farm's database, or on
    the shared folder alone from the share's records (its own store, its peers' task.json)."""
    url = request.getfixturevalue("pg_url") if way == "database" else ""
    # on a shared folder a daemon claims ahead of its running job (prefetch): 0 here, so that
    # each of the three long jobs goes to another daemon in both ways
    ds = farm(daemon_factory, tmp_path, 3, store_url=url, prefetch=0)
    port = free_port()
    ds[0].config.write_text(ds[0].config.read_text() + f'[http]\nlisten = "127.0.0.1:{port}"\n')
    for d in ds:
        d.start()
    names = {instance_of(d) for d in ds}
    # three long jobs at once: each daemon takes one (a busy daemon takes no second one)
    for n in range(3):
        drop_valid(ds[0].inbox, media, f"long{n}", long=True)
    for n in range(3):
        drop_valid(ds[0].inbox, media, f"quick{n}")
    tasks = {j: ds[0].wait_state(j, "done", timeout=120) for j in [f"long{n}" for n in range(3)]}
    assert {t["instance"] for t in tasks.values()} == names
    for n in range(3):
        ds[0].wait_state(f"quick{n}", "done", timeout=60)

    out = ds[1].cli("jobs").stdout  # any daemon of the farm sees every job
    assert "INSTANCE" in out and all(name in out for name in names), out
    for name in names:
        rows = json.loads(ds[2].cli("jobs", "--instance", name, "--json").stdout)
        assert rows and {r["instance"] for r in rows} == {name}
    status = json.loads(ds[0].cli("status", "--json").stdout)
    assert {i["instance"] for i in status["instances"]} == names
    assert all(i["state"] == "running" and i["host"] for i in status["instances"])
    text = ds[0].cli("status").stdout
    assert "instances (3;" in text and all(name in text for name in names), text

    api = f"http://127.0.0.1:{port}/api/jobs"  # the status page's list, page by page
    listed, cursor = [], None
    while True:
        body = httpx.get(api, params={"limit": 2, **({"before": cursor} if cursor else {})}).json()
        listed += [(j["job_id"], j["instance"]) for j in body["jobs"]]
        if not (cursor := body["next_before"]):
            break
    assert sorted(j for j, _ in listed) == sorted([*tasks, *(f"quick{n}" for n in range(3))])
    assert {i for _, i in listed} == names and body["counts"]["done"] == 6
    only = httpx.get(api, params={"instance": tasks["long0"]["instance"]}).json()["jobs"]
    assert only and {j["instance"] for j in only} == {tasks["long0"]["instance"]}

    for d in ds:  # heartbeat and metrics per instance, side by side in one outbox
        name = instance_of(d)
        folder = d.outbox / "_daemon" / name
        beat = wait_for(
            lambda f=folder: (
                (f / "health.json").exists() and json.loads((f / "health.json").read_text())
            ),
            30,
            f"health.json of {name}",
            d,
        )
        assert beat["instance"] == name and beat["store"] == "ok"
        if way == "database":
            assert beat["store_connection"]["server_encoding"] == "UTF8"
        assert set(beat["peers"]) == names - {name}
        assert f'instance="{name}"' in (folder / "metrics.prom").read_text()

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run does)")
    browser = headless_chromium()
    try:
        browser.get(f"http://127.0.0.1:{port}/")

        def shown() -> dict | None:
            return browser.execute_script(
                "const i = [...document.querySelectorAll('#instances tr')].map(r => r.dataset.instance);"
                "const j = [...document.querySelectorAll('#jobs td.instance')].map(td => td.textContent);"
                "return i.length && j.length ? {instances: i, jobs: j} : null;"
            )

        seen = wait_for(shown, 30, "the instances on the page", ds[0])
        assert set(seen["instances"]) == names and set(seen["jobs"]) == names, seen
        if way == "database":  # the header says how this daemon reaches the database
            link = browser.execute_script("return document.getElementById('store').textContent")
            assert link.startswith("database: not encrypted") and "UTF8, schema" in link, link
    finally:
        browser.quit()

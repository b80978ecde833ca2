"""The web UI in a real browser: Debian's Chromium, driven by Playwright, against the UI command.

A registered recording is materialized by clicking through the asset graph's launch dialog; the
test waits for the run to succeed in the UI, checks the v3.0 dataset on disk and saves a screenshot
of the materialized partition (also copied to build/screenshots/ for people to look at).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from dorobot_assets_tests.services import (
    REPO,
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    VENV_BIN,
    Service,
    free_port,
    http_ok,
    service_env,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that work on this kind of machine: as root, no GPU, and no background connections to
# Google's hosts (the network is closed, and refused connections slow every start).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT_COPY = REPO / "build" / "screenshots" / "ui_materialized_partition.png"


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        # CI installs Chromium first (.ci/run), so only a local run without it gets here.
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    return CHROMIUM


def test_materialize_a_partition_from_the_browser(tmp_path, make_sample, chromium):
    from playwright.sync_api import expect, sync_playwright

    rec = make_sample("bench_pick", episodes=2)
    output = tmp_path / "output"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        DAGSTER_HOME=tmp_path / "instance", DOROBOT_OUTPUT=output,
        DOROBOT_INBOX=tmp_path / "watched",  # empty: this partition is launched by hand, not by the sensor
    )
    ui = Service([str(VENV_BIN / "dorobot-assets"), "ui", "--host", "127.0.0.1", "--port", str(port)],
                 env, tmp_path / "ui.log", cwd=tmp_path)
    try:
        ui.wait_until(lambda: http_ok(f"{base}/server_info"), START_TIMEOUT_S, "UI answering")
        registered = subprocess.run([str(VENV_BIN / "dorobot-assets"), "register", str(rec)], env=env,
                                    capture_output=True, text=True, timeout=120)
        assert registered.returncode == 0, registered.stderr
        key = registered.stdout.split("\t")[0]
        assert key == "bench_pick"

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1700, "height": 1000})
                page.set_default_timeout(60_000)
                # No newsletter prompt to dismiss first: dagster.yaml turns it off (nux).

                page.goto(f"{base}/asset-groups/lerobot_v30")
                page.get_by_role("button", name="Materialize all").click()
                dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
                dialog.get_by_text("Select a partition or create one").click()
                page.get_by_role("menuitem").filter(has_text=re.compile(f"^{key}")).click()
                dialog.get_by_text("Launch runs to materialize").click()  # closes the partition list
                dialog.get_by_role("button", name="Launch 1 run").click()

                toast = page.get_by_role("region", name=re.compile("Notifications"))
                expect(toast.get_by_text(re.compile(r"Launched run"))).to_be_visible()
                toast.get_by_role("link", name="View", exact=True).click()
                expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+"))
                expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)

                info = json.loads((output / key / "meta" / "info.json").read_text())
                assert (info["codebase_version"], info["total_episodes"]) == ("v3.0", 2)
                assert sorted(p.name for p in (output / key / "meta").iterdir()) == [
                    "episodes", "info.json", "stats.json", "tasks.parquet"]

                page.goto(f"{base}/assets/info?view=partitions&partition={key}")
                expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
                expect(page.get_by_text("First 2 of 2 episodes.")).to_be_visible()  # the preview
                expect(page.get_by_text("observation.state").first).to_be_visible()
                screenshot = tmp_path / "ui_materialized_partition.png"
                page.screenshot(path=str(screenshot), full_page=True)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"the page at the failure: {tmp_path / 'failure.png'}\nUI log:\n{ui.log_tail()}")
                raise
            finally:
                browser.close()
        SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, SCREENSHOT_COPY)

        assert ui.stop(signal.SIGTERM) == 0, f"the UI did not stop on SIGTERM:\n{ui.log_tail()}"
    finally:
        ui.kill_leftovers()

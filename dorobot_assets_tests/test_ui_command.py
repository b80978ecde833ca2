"""`dorobot-assets ui`: the README's UI command. It serves the web UI and runs the daemon with the
inbox sensor on a persistent instance, and stops cleanly on SIGTERM and on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import dagster as dg

from dorobot_assets_tests.services import (
    DAGSTER_YAML_TEMPLATE,
    START_TIMEOUT_S,
    VENV_BIN,
    Service,
    free_port,
    http_ok,
    service_env,
)

SENSOR_QUERY = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { minIntervalSeconds sensorState { status ticks(limit: 5) { status skipReason timestamp } } }
  }
}"""


def graphql(base: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def inbox_sensor_state(base: str) -> dict:
    selector = {"repositoryLocationName": "dorobot_assets", "repositoryName": "__repository__",
                "sensorName": "inbox_sensor"}
    return graphql(base, SENSOR_QUERY, {"selector": selector})["sensorOrError"]


def start_ui(tmp_path, home, port, name, sigint_ignored=False) -> Service:
    env = service_env(DAGSTER_HOME=home, DOROBOT_INBOX=tmp_path / "inbox", DOROBOT_OUTPUT=tmp_path / "output")
    return Service([str(VENV_BIN / "dorobot-assets"), "ui", "--host", "127.0.0.1", "--port", str(port)],
                   env, tmp_path / f"{name}.log", cwd=tmp_path, sigint_ignored=sigint_ignored)


def test_ui_command_serves_a_persistent_instance_and_stops_cleanly(tmp_path, monkeypatch):
    home = tmp_path / "instance"  # does not exist yet: the command creates it
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml's storage follows $DAGSTER_HOME
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    # Started as a background job of a script (SIGINT ignored), stopped with SIGTERM.
    ui = start_ui(tmp_path, home, port, "ui-1", sigint_ignored=True)
    try:
        ui.wait_until(lambda: http_ok(f"{base}/server_info"), START_TIMEOUT_S, "UI answering")
        assert (home / "dagster.yaml").read_text() == DAGSTER_YAML_TEMPLATE.read_text()
        # The daemon runs the sensor without anyone switching it on; its ticks say why nothing ran.
        # A tick is listed while it runs (STARTED); wait for one that has finished.
        ticks = ui.wait_until(
            lambda: [t for t in inbox_sensor_state(base)["sensorState"]["ticks"] or () if t["status"] != "STARTED"] or None,
            START_TIMEOUT_S, "a finished tick of inbox_sensor")
        state = inbox_sensor_state(base)
        assert state["sensorState"]["status"] == "RUNNING" and state["minIntervalSeconds"] == 30
        assert ticks[0]["status"] == "SKIPPED" and "nothing new to convert" in ticks[0]["skipReason"]
        first_tick = ticks[-1]["timestamp"]

        assert ui.stop(signal.SIGTERM) == 0, f"the UI did not stop on SIGTERM:\n{ui.log_tail()}"
        assert ui.all_gone(), f"left running after SIGTERM:\n{ui.describe_leftovers()}"
    finally:
        ui.kill_leftovers()

    # The instance is SQLite in DAGSTER_HOME, with the project's settings.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert concurrency.pool_config.default_pool_limit == 1  # the video_encoder pool
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert (home / "history" / "runs.db").is_file() and (home / "schedules" / "schedules.db").is_file()

    # Started again from a terminal and stopped with Ctrl-C (SIGINT to the whole foreground group):
    # the history of the first start is still there.
    ui = start_ui(tmp_path, home, port, "ui-2")
    try:
        ui.wait_until(lambda: http_ok(f"{base}/server_info"), START_TIMEOUT_S, "UI answering again")
        timestamps = [t["timestamp"] for t in inbox_sensor_state(base)["sensorState"]["ticks"]]
        assert first_tick in timestamps

        os.killpg(ui.pid, signal.SIGINT)  # the group this test started the UI in
        assert ui.stop(None) is not None, f"the UI did not stop on Ctrl-C:\n{ui.log_tail()}"
        assert ui.all_gone(), f"left running after Ctrl-C:\n{ui.describe_leftovers()}"
    finally:
        ui.kill_leftovers()

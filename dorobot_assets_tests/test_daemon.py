"""A real `dagster-daemon run` with the inbox sensor: a recording dropped into the inbox with a
`.ready` marker is converted with no other action, and converted again once it changes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import dagster as dg

from dorobot_assets.defs.sensors import FINGERPRINT_TAG, SOURCE_TAG
from dorobot_assets.lib import inbox
from dorobot_assets.lib.v21 import recording_fingerprint
from dorobot_assets_tests.services import (
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    VENV_BIN,
    Service,
    dagster_home_with_template,
    service_env,
)


def conversions(instance: dg.DagsterInstance, key: str) -> list[dg.DagsterRun]:
    """Runs the sensor launched for partition ``key``, oldest first."""
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key, "dagster/sensor_name": "inbox_sensor"}))
    return list(reversed(runs))


def finished(instance: dg.DagsterInstance, key: str, count: int):
    """The first ``count`` conversions once all of them succeeded; fails fast on a failed one."""
    runs = conversions(instance, key)
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    if failed:
        errors = [e.message for e in instance.all_logs(failed[0].run_id) if e.is_error]
        raise AssertionError(f"conversion run {failed[0].run_id} failed: {errors[-3:]}")
    done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    return done[:count] if len(done) >= count else None


def sensor_ticks(instance: dg.DagsterInstance) -> list:
    ticks = []
    for state in instance.all_instigator_state():
        if state.name == "inbox_sensor":
            ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return ticks


def test_daemon_converts_a_dropped_recording_once_per_change(tmp_path, make_sample):
    home = dagster_home_with_template(Path(os.environ["DAGSTER_HOME"]))
    inbox_dir, output = tmp_path / "inbox", tmp_path / "output"
    inbox_dir.mkdir()
    env = service_env(
        DAGSTER_HOME=home, DOROBOT_INBOX=inbox_dir, DOROBOT_OUTPUT=output,
        # Not waiting for the default 30 s interval; a settle time of an hour proves the marker works.
        **{inbox.INTERVAL_ENV: 1, inbox.SETTLE_ENV: 3600},
        DOROBOT_STATS="copy",  # reaches the runs the sensor launches (checked below)
    )
    daemon = Service([str(VENV_BIN / "dagster-daemon"), "run", "-m", "dorobot_assets"], env,
                     tmp_path / "daemon.log", cwd=tmp_path)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            daemon.wait_until(lambda: sensor_ticks(instance), START_TIMEOUT_S, "first tick of inbox_sensor")

            rec = make_sample("Arm Session", episodes=2)  # lands in the inbox folder
            (rec / inbox.READY_MARKER).touch()
            dataset_info = output / "arm_session" / "meta" / "info.json"
            first, = daemon.wait_until(lambda: finished(instance, "arm_session", 1), RUN_TIMEOUT_S,
                                       "successful conversion of the dropped recording")
            info = json.loads(dataset_info.read_text())
            assert (info["codebase_version"], info["total_episodes"]) == ("v3.0", 2)
            assert first.tags[SOURCE_TAG] == str(rec)
            assert first.tags["dagster/run_key"] == f"arm_session:{recording_fingerprint(rec)}"
            converted_once = dataset_info.stat().st_mtime_ns
            stats_record, = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("episode_stats"), asset_partitions=["arm_session"]), limit=1
            ).records
            assert stats_record.asset_materialization.metadata["mode"].value == "copy"

            (rec / "meta" / "tasks.jsonl").touch()  # a re-upload of one file
            first, second = daemon.wait_until(lambda: finished(instance, "arm_session", 2), RUN_TIMEOUT_S,
                                              "second conversion after the recording changed")
            assert second.tags[FINGERPRINT_TAG] == recording_fingerprint(rec) != first.tags[FINGERPRINT_TAG]
            assert dataset_info.stat().st_mtime_ns != converted_once

            # The unchanged recording is left alone: two more ticks, no third run.
            seen = len(sensor_ticks(instance))
            daemon.wait_until(lambda: len(sensor_ticks(instance)) >= seen + 2, START_TIMEOUT_S, "two more ticks")
            assert len(conversions(instance, "arm_session")) == 2

        assert daemon.stop(signal.SIGTERM) is not None, f"the daemon ignored SIGTERM:\n{daemon.log_tail()}"
        assert daemon.all_gone(), f"still running after the daemon stopped:\n{daemon.describe_leftovers()}"
    finally:
        daemon.kill_leftovers()

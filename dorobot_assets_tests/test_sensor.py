"""The inbox sensor evaluated in-process against a real (temporary) Dagster instance.

The daemon test (test_daemon.py) runs the same sensor for real; these tests cover its decisions:
readiness, settle time, the marker, clashes, the cursor, the cap and invalid folders.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from dorobot_assets.defs.partitions import recordings
from dorobot_assets.defs.resources import StorageResource
from dorobot_assets.defs.sensors import SOURCE_TAG, inbox_sensor
from dorobot_assets.lib import inbox
from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.keys import RecordingRegistry
from dorobot_assets.lib.v21 import recording_fingerprint


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """The inbox make_sample writes into, an output folder, and the env the sensor reads."""
    inbox_dir = tmp_path / "inbox"
    inbox_dir.mkdir(exist_ok=True)
    output = tmp_path / "output"
    monkeypatch.setenv("DOROBOT_INBOX", str(inbox_dir))
    monkeypatch.setenv("DOROBOT_OUTPUT", str(output))
    monkeypatch.setenv(inbox.SETTLE_ENV, "60")
    monkeypatch.delenv(inbox.MAX_RUNS_ENV, raising=False)
    return inbox_dir, output


@pytest.fixture
def instance():
    return dg.DagsterInstance.ephemeral()  # in memory: partitions, runs, materializations


def tick(instance, cursor=None):
    """One sensor evaluation; the instance then holds the partitions it added, as the daemon does."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": StorageResource()})
    result = inbox_sensor(context)
    if isinstance(result, dg.SkipReason):
        return result, cursor
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, result.cursor


def skipped(result) -> str | None:
    """The skip message of a tick that requested nothing, else None."""
    if isinstance(result, dg.SkipReason):
        return result.skip_message
    return result.skip_reason.skip_message if result.skip_reason else None


def requested(result) -> list[tuple[str, str]]:
    if isinstance(result, dg.SkipReason):
        return []
    return [(r.partition_key, r.run_key) for r in result.run_requests]


def test_marked_recording_becomes_partition_and_run(folders, instance, make_sample):
    inbox_dir, output = folders
    rec = make_sample("Lab Session 1", episodes=2)
    (rec / inbox.READY_MARKER).touch()

    result, cursor = tick(instance)

    fingerprint = recording_fingerprint(rec)
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["lab_session_1"]]
    assert requested(result) == [("lab_session_1", f"lab_session_1:{fingerprint}")]
    assert result.run_requests[0].tags[SOURCE_TAG] == str(rec)
    # The key -> folder mapping is kept where the runs look it up.
    assert RecordingRegistry(output / ".dorobot_work").lookup("lab_session_1") == rec
    assert StorageResource().source_dir("lab_session_1") == rec


def test_unmarked_recording_waits_for_the_settle_time(folders, instance, make_sample, monkeypatch):
    rec = make_sample("fresh", episodes=2)

    result, cursor = tick(instance)
    assert "fresh" in skipped(result) and "settle time 60 s" in skipped(result)
    assert not instance.get_dynamic_partitions(recordings.name)

    # Nothing changed for the settle time (here: a settle time the copy is already older than).
    monkeypatch.setenv(inbox.SETTLE_ENV, "0")
    result, cursor = tick(instance, cursor)
    assert requested(result) == [("fresh", f"fresh:{recording_fingerprint(rec)}")]


def test_settle_time_counts_from_the_newest_change(tmp_path, make_sample):
    rec = make_sample("rec", episodes=2)
    scan = inbox.scan_folder(rec)
    registry = RecordingRegistry(tmp_path / "work")
    settings = inbox.InboxSettings(settle_seconds=60)

    early = inbox.plan_tick(rec.parent, None, scan.last_change + 59, settings, registry.register)
    late = inbox.plan_tick(rec.parent, early.cursor, scan.last_change + 61, settings, registry.register)

    assert early.conversions == [] and [p for p, _ in early.waiting] == [rec]
    assert [c.key for c in late.conversions] == ["rec"]


def test_unchanged_recording_is_not_requested_again(folders, instance, make_sample):
    rec = make_sample("rec", episodes=2)
    (rec / inbox.READY_MARKER).touch()
    first, cursor = tick(instance)
    assert len(requested(first)) == 1

    again, _ = tick(instance, cursor)
    assert "1 unchanged" in skipped(again)
    # Even with the cursor lost, the request repeats the run key, which Dagster never runs twice.
    lost, _ = tick(instance, None)
    assert requested(lost) == requested(first)


def test_touched_recording_is_converted_again_under_the_same_key(folders, instance, make_sample):
    rec = make_sample("rec", episodes=2)
    (rec / inbox.READY_MARKER).touch()
    first, cursor = tick(instance)

    data_file = next((rec / "data").rglob("*.parquet"))
    st = data_file.stat()
    os.utime(data_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second, _ = tick(instance, cursor)

    (key1, run_key1), = requested(first)
    (key2, run_key2), = requested(second)
    assert key1 == key2 == "rec"
    assert run_key1 != run_key2 == f"rec:{recording_fingerprint(rec)}"
    assert not second.dynamic_partitions_requests  # the partition exists already


def test_invalid_folder_is_reported_once_until_it_changes(folders, instance, make_sample, capfd):
    """The reason goes to the tick log (outside the daemon, the tick log is printed to stderr)."""
    inbox_dir, _ = folders
    junk = inbox_dir / "holiday photos"
    junk.mkdir()
    (junk / "img.jpg").write_bytes(b"not a recording")
    (junk / inbox.READY_MARKER).touch()
    v3 = make_sample("already_v3", episodes=2)
    info_path = v3 / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v3.0"
    info_path.write_text(json.dumps(info))
    (v3 / inbox.READY_MARKER).touch()

    capfd.readouterr()
    result, cursor = tick(instance)
    assert "2 not recordings" in skipped(result)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line]
    assert any("holiday photos" in w and "meta/info.json: file is missing" in w for w in warnings)
    assert any("already_v3" in w and "unsupported_version" in w for w in warnings)
    assert not instance.get_dynamic_partitions(recordings.name)

    result, cursor = tick(instance, cursor)
    assert "WARNING" not in capfd.readouterr().err
    assert "2 unchanged" in skipped(result)

    # Fixed by the uploader: the folder changed, so it is looked at again and converted.
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    result, _ = tick(instance, cursor)
    assert [key for key, _ in requested(result)] == ["already_v3"]


def test_settled_folder_without_info_json_is_not_a_recording(tmp_path):
    inbox_dir = tmp_path / "inbox"
    (inbox_dir / "notes").mkdir(parents=True)
    (inbox_dir / "notes" / "todo.txt").write_text("label the episodes")
    registry = RecordingRegistry(tmp_path / "work")

    plan = inbox.plan_tick(inbox_dir, None, time.time() + 3600, inbox.InboxSettings(), registry.register)

    assert plan.conversions == []
    assert [(p.name, "info.json: file is missing" in why) for p, why in plan.invalid] == [("notes", True)]


def test_clashing_names_get_deterministic_keys(folders, instance, make_sample, tmp_path):
    inbox_dir, output = folders
    for name in ("Run 1", "run_1", "RUN-1"):
        (make_sample(name, episodes=2) / inbox.READY_MARKER).touch()

    result, _ = tick(instance)

    # Folders are registered in name order, so the outcome does not depend on directory order.
    keys = {Path(r.tags[SOURCE_TAG]).name: r.partition_key for r in result.run_requests}
    assert keys == {"RUN-1": "run-1", "Run 1": "run_1", "run_1": "run_1-2"}
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["run-1", "run_1", "run_1-2"]
    # The same folders planned against a fresh registry get the same keys.
    fresh = RecordingRegistry(tmp_path / "other_work")
    plan = inbox.plan_tick(inbox_dir, None, time.time(), inbox.InboxSettings(), fresh.register)
    assert {c.folder.name: c.key for c in plan.conversions} == keys


def test_new_runs_per_tick_are_capped(folders, instance, make_sample, monkeypatch):
    monkeypatch.setenv(inbox.MAX_RUNS_ENV, "2")
    for name in ("a", "b", "c"):
        (make_sample(name, episodes=2) / inbox.READY_MARKER).touch()

    first, cursor = tick(instance)
    second, cursor = tick(instance, cursor)
    third, _ = tick(instance, cursor)

    assert [k for k, _ in requested(first)] == ["a", "b"]
    assert [k for k, _ in requested(second)] == ["c"]
    assert requested(third) == []


def test_recording_converted_from_the_ui_or_shell_is_not_converted_again(folders, instance, make_sample, monkeypatch):
    from dorobot_assets import defs
    from dorobot_assets.defs.assets import conversion_assets

    monkeypatch.setenv("DOROBOT_STATS", "copy")
    rec = make_sample("rec", episodes=2)
    (rec / inbox.READY_MARKER).touch()
    key = StorageResource().registry().register(rec)
    instance.add_dynamic_partitions(recordings.name, [key])
    # The project's own resources, as a run launched from the UI gets them.
    done = dg.materialize(conversion_assets, partition_key=key, instance=instance, resources=dict(defs.resources))
    assert done.success

    result, _ = tick(instance)
    assert "1 already converted" in skipped(result)


def test_no_inbox_configured_skips_with_the_reason(instance, monkeypatch, tmp_path):
    monkeypatch.delenv("DOROBOT_INBOX", raising=False)
    result, _ = tick(instance)
    assert "DOROBOT_INBOX is not set" in skipped(result)

    monkeypatch.setenv("DOROBOT_INBOX", str(tmp_path / "missing"))
    result, _ = tick(instance)
    assert "does not exist" in skipped(result)


def test_settings_come_from_the_environment():
    assert inbox.InboxSettings.from_env({}) == inbox.InboxSettings(
        inbox.DEFAULT_SETTLE_SECONDS, inbox.DEFAULT_MAX_RUNS_PER_TICK)
    assert inbox.InboxSettings.from_env({inbox.SETTLE_ENV: "5", inbox.MAX_RUNS_ENV: "3"}) == inbox.InboxSettings(5, 3)
    assert inbox.sensor_interval_seconds({}) == inbox.DEFAULT_INTERVAL_SECONDS == 30
    assert inbox.sensor_interval_seconds({inbox.INTERVAL_ENV: "2"}) == 2
    for bad in ({inbox.MAX_RUNS_ENV: "0"}, {inbox.SETTLE_ENV: "soon"}):
        with pytest.raises(ConfigError):
            inbox.InboxSettings.from_env(bad)

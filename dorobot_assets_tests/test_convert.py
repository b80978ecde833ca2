"""The asset graph end to end: dg.materialize against an instance, and the shell workflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib.episodes import read_episodes
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets_tests.conftest import file_hashes

COPY = ConversionSettings(stats="copy")


def test_rollover_puts_every_episode_where_meta_episodes_says(make_sample, tmp_path):
    src = make_sample("rec", lengths=[40, 35, 50, 20, 45, 30, 25], extra_float_features=["gripper"])
    before = file_hashes(src)
    out = tmp_path / "out" / "rec"
    run = convert_recording(src, out, ConversionSettings(stats="copy", data_file_size_mb=0.004))
    assert run.success, run.error
    assert file_hashes(src) == before, "the source recording must not change"

    files = sorted(out.glob("data/chunk-*/file-*.parquet"))
    assert len(files) >= 3, "a tiny limit must roll over into several data files"
    eps = read_episodes(out).to_pylist()
    assert [e["episode_index"] for e in eps] == list(range(7))
    cursor = 0
    for e in eps:
        assert e["dataset_from_index"] == cursor and e["dataset_to_index"] - cursor == e["length"]
        cursor = e["dataset_to_index"]
        path = out / f"data/chunk-{e['data/chunk_index']:03d}/file-{e['data/file_index']:03d}.parquet"
        rows = pq.read_table(path).to_pylist()
        mine = [r for r in rows if r["episode_index"] == e["episode_index"]]
        assert len(mine) == e["length"]
        assert [r["index"] for r in mine] == list(range(e["dataset_from_index"], e["dataset_to_index"]))
        source = pq.read_table(src / f"data/chunk-000/episode_{e['episode_index']:06d}.parquet").to_pylist()
        assert mine == source, "rows must be carried over value for value"
    info = json.loads((out / "meta/info.json").read_text())
    assert info["total_frames"] == cursor == 245 and info["total_episodes"] == 7
    assert info["data_files_size_in_mb"] == 0.004


def test_materialize_with_instance_reports_metadata_and_rerun_is_idempotent(make_sample, tmp_path):
    from dorobot_assets.definitions import defs
    from dorobot_assets.defs.assets import conversion_assets
    from dorobot_assets.defs.resources import ConversionResource, StorageResource

    src = make_sample("Take 1", lengths=[10, 12])
    instance = dg.DagsterInstance.get()  # a real instance in the test's DAGSTER_HOME
    instance.add_dynamic_partitions("recordings", ["take_1"])
    resources = {
        **defs.resources,
        "storage": StorageResource(inbox=str(src.parent), output=str(tmp_path / "out")),
        "conversion": ConversionResource(stats="copy"),
    }
    checks = list(defs.asset_checks or [])
    for _ in range(2):
        result = dg.materialize([*conversion_assets, *checks], partition_key="take_1",
                                instance=instance, resources=resources)
        assert result.success
    data_md = result.asset_materializations_for_node("data")[0].metadata
    assert data_md["frames"].value == 22 and data_md["episodes"].value == 2
    out = tmp_path / "out" / "take_1"
    assert json.loads((out / "meta/info.json").read_text())["total_frames"] == 22
    # nothing but the v3.0 artifacts in the published folder; manifests live in the work dir
    published = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert published == [
        "data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json", "meta/stats.json", "meta/tasks.parquet",
    ]
    assert (tmp_path / "out" / ".dorobot_work" / "take_1" / "manifests" / "data.parquet").exists()
    runs = instance.get_runs()
    assert len(runs) == 2 and all(r.tags.get("dagster/partition") == "take_1" for r in runs)


def test_bad_recording_fails_before_anything_is_written(make_sample, tmp_path):
    src = make_sample("rec", lengths=[5, 6])
    (src / "data/chunk-000/episode_000001.parquet").unlink()
    out = tmp_path / "out" / "rec"
    run = convert_recording(src, out, COPY)
    assert not run.success
    assert "missing_data_file" in run.error and "episode_000001.parquet" in run.error
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_reconversion_with_other_limits_removes_stale_files(make_sample, tmp_path):
    src = make_sample("rec", lengths=[40, 40, 40, 40])
    out = tmp_path / "rec"
    assert convert_recording(src, out, ConversionSettings(stats="copy", data_file_size_mb=0.003)).success
    assert len(list(out.glob("data/*/*.parquet"))) > 1
    assert convert_recording(src, out, COPY).success
    assert [p.name for p in out.glob("data/*/*.parquet")] == ["file-000.parquet"]
    assert not list(out.rglob(".tmp-*"))


def test_output_inside_source_is_refused(make_sample):
    from dorobot_assets.lib.errors import ConfigError

    src = make_sample("rec", lengths=[5])
    with pytest.raises(ConfigError, match="must not be inside the source"):
        convert_recording(src, src / "v30", COPY)


def _cli(*args, env=None, cwd=None):
    exe = Path(sys.executable).parent
    return subprocess.run([str(exe / args[0]), *args[1:]], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def test_shell_workflow_register_then_dagster_asset_materialize(make_sample, tmp_path):
    src = make_sample("Shell Rec", lengths=[8, 9])
    env = dict(os.environ, DOROBOT_INBOX=str(src.parent), DOROBOT_OUTPUT=str(tmp_path / "out"),
               DOROBOT_STATS="copy")
    reg = _cli("dorobot-assets", "register", str(src), env=env)
    assert reg.returncode == 0, reg.stderr
    key = reg.stdout.split("\t")[0]
    assert key == "shell_rec"
    mat = _cli("dagster", "asset", "materialize", "-m", "dorobot_assets", "--select", "*",
               "--partition", key, "--config-json",
               json.dumps({"resources": {"conversion": {"config": {"stats": "copy"}}}}), env=env)
    assert mat.returncode == 0, mat.stderr[-3000:]
    info = json.loads((tmp_path / "out" / key / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 17
    # the run is recorded in the persistent instance
    runs = dg.DagsterInstance.get().get_runs()
    assert any(r.tags.get("dagster/partition") == key for r in runs)


def test_convert_cli_exit_codes(make_sample, tmp_path):
    src = make_sample("rec", lengths=[5, 6])
    ok = _cli("dorobot-assets", "convert", str(src), str(tmp_path / "ok"), "--stats", "copy")
    assert ok.returncode == 0, ok.stderr
    assert "2 episodes, 11 frames" in ok.stdout
    (src / "meta/info.json").write_text("[]")
    bad = _cli("dorobot-assets", "convert", str(src), str(tmp_path / "bad"), "--stats", "copy")
    assert bad.returncode == 1
    assert "info.json: top level is not a JSON object" in bad.stderr


def test_recording_observation_versions_change_with_the_files(make_sample, tmp_path):
    from dagster._core.definitions.observe import observe

    from dorobot_assets.defs.assets import recording
    from dorobot_assets.defs.resources import StorageResource
    from dorobot_assets.lib.v21 import recording_fingerprint

    src = make_sample("obs", lengths=[5])
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("recordings", ["obs"])
    resources = {"storage": StorageResource(inbox=str(src.parent), output=str(tmp_path / "out"))}

    def observed_version():
        assert observe([recording], instance=instance, resources=resources).success
        record = instance.get_latest_data_version_record(recording.key, is_source=True, partition_key="obs")
        return record.asset_observation.tags["dagster/data_version"]

    first = observed_version()
    assert first == recording_fingerprint(src)
    wav_like = src / "meta" / "tasks.jsonl"
    os.utime(wav_like, ns=(wav_like.stat().st_atime_ns, wav_like.stat().st_mtime_ns + 10**9))
    assert observed_version() != first


def test_failed_reconversion_keeps_the_previous_dataset_whole(make_sample, tmp_path):
    src = make_sample("rec", lengths=[5, 6])
    out = tmp_path / "rec"
    assert convert_recording(src, out, COPY).success
    before = file_hashes(out)
    # the recording is then damaged: the new conversion must fail before touching the old output
    (src / "meta/episodes.jsonl").write_text('{"episode_index": 0, "length": 5}\n')
    run = convert_recording(src, out, COPY)
    assert not run.success
    assert "stats_mismatch" in run.error and "has stats for 2 episodes, episodes.jsonl lists 1" in run.error
    assert file_hashes(out) == before


def test_recording_changed_during_the_run_is_not_published(make_sample, tmp_path, monkeypatch):
    """The fingerprint is taken once per run; info takes it again and refuses to publish a
    dataset converted from files that changed meanwhile."""
    from dorobot_assets.defs import assets

    src = make_sample("rec", lengths=[5, 6])
    out = tmp_path / "rec"
    write_data = assets.data_lib.write_data

    def write_then_touch(*args, **kwargs):
        result = write_data(*args, **kwargs)
        # someone re-records episode 1 while the conversion runs
        path = src / "data/chunk-000/episode_000001.parquet"
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        return result

    monkeypatch.setattr(assets.data_lib, "write_data", write_then_touch)
    run = convert_recording(src, out, COPY)
    assert not run.success
    assert run.error.startswith("info: ")
    assert "files of the recording changed while it was being converted" in run.error
    assert "[recording_changed]" in run.error
    assert not (out / "meta/info.json").exists()
    # the next run converts the recording as it is now
    monkeypatch.setattr(assets.data_lib, "write_data", write_data)
    assert convert_recording(src, out, COPY).success
    assert (out / "meta/info.json").is_file()


def test_console_convert_freezes_its_startup_objects_and_an_embedded_call_does_not(make_sample, tmp_path):
    """The console script (which ends after the conversion) imports Dagster with the collector
    off and freezes what it made; ``cli.main`` inside a longer-lived process leaves gc alone."""
    import gc

    from dorobot_assets import cli

    before = gc.get_freeze_count()
    src = make_sample("embedded", lengths=[4])
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--stats", "copy"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == before
    try:
        with cli._collector_paused_for_startup(True):
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]  # long-lived objects made at startup
        assert gc.isenabled() and gc.get_freeze_count() >= before + len(made)
    finally:
        gc.unfreeze()


def test_copied_stats_are_not_compared_with_the_source_they_were_copied_from(make_sample, tmp_path):
    from dorobot_assets.defs.checks import lib_check_results

    run = convert_recording(make_sample("copied", lengths=[6, 7]), tmp_path / "out", COPY)
    assert run.success, run.error
    (evaluation,) = [ev for ev in run.result.get_asset_check_evaluations() if ev.asset_key == dg.AssetKey("episodes")]
    outcome = lib_check_results(evaluation)["stats_match_source"]
    assert outcome["passed"] and not outcome["applicable"]
    assert outcome["description"] == (
        "the stats were copied from the source (stats mode copy): nothing recomputed to compare")

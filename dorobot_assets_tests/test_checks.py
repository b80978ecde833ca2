"""defs/checks.py: the registered checks as Dagster asset checks, run by the asset they inspect.
Error-severity checks block, so a conversion whose output is broken does not publish meta/info.json."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets import cli
from dorobot_assets.defs import checks
from dorobot_assets.defs.assets import conversion_assets, data, dataset_stats, episodes, info, tasks
from dorobot_assets.defs.partitions import recordings
from dorobot_assets.defs.resources import ConversionResource, StorageResource
from dorobot_assets.definitions import defs
from dorobot_assets.lib import validate
from dorobot_assets.lib.keys import sanitize_key


def test_each_asset_has_one_validation_check_running_its_registered_checks_blocking_when_one_is_an_error():
    registered: dict[str, list] = {}
    for s in validate.registered_checks():
        if not s.deep:  # deep checks (video_pts_alignment): validate --deep only
            registered.setdefault(s.asset, []).append(s)
    found = {}
    for asset in conversion_assets:
        specs = list(getattr(asset, "check_specs", ()))  # the source asset has none
        for spec in specs:
            assert spec.asset_key == asset.key and spec.key.name == checks.VALIDATION_CHECK
            for lib_spec in registered[asset.key.to_user_string()]:  # the UI's description names each
                assert f"{lib_spec.name} ({lib_spec.severity})" in spec.description
            found[asset.key.to_user_string()] = spec.blocking
    assert found == {asset: any(s.severity == validate.ERROR for s in specs) for asset, specs in registered.items()}
    assert set(found) == {"tasks", "data", "videos", "audio", "episodes", "dataset_stats", "info"}
    assert "video_pts_alignment" not in {s.name for s in registered["videos"]}
    assert not defs.asset_checks  # no separate check steps


def _validation(result, asset: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [ev for ev in result.get_asset_check_evaluations() if ev.asset_key == dg.AssetKey(asset)]
    assert evaluation.check_name == checks.VALIDATION_CHECK
    return evaluation


def test_an_asset_depends_on_what_its_checks_read():
    by_key = {a.key.to_user_string(): a for a in conversion_assets}
    for spec in validate.registered_checks():
        for need in spec.needs:
            upstream = by_key[spec.asset].asset_deps[by_key[spec.asset].key]
            assert dg.AssetKey(need) in upstream, (spec.name, need)
    assert tasks.key in data.asset_deps[data.key]  # data_task_index reads meta/tasks.parquet


def _broken_frame_index_recording(make_sample) -> Path:
    """A v2.1 recording the reader accepts (it checks index, episode_index and task_index) whose
    episode 1 counts frame_index from 1: converted as is, its data is broken."""
    source = make_sample("frames_from_one", lengths=[12, 10, 11])
    path = source / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    i = table.column_names.index("frame_index")
    shifted = pa.array([v + 1 for v in table.column(i).to_pylist()], pa.int64())
    pq.write_table(table.set_column(i, table.field(i), shifted), path)
    return source


def test_convert_reports_the_failed_blocking_check_and_publishes_no_info_json(make_sample, tmp_path, capsys):
    source = _broken_frame_index_recording(make_sample)
    out = tmp_path / "out"
    assert cli.main(["convert", str(source), str(out), "--stats", "copy"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "failed: check data_frame_index on data failed: 10 rows break the 0,1,2,... frame_index sequence of "
        "their episode; first: row 12 (episode 1) has frame_index 1, expected 0"
    )
    assert (out / "data/chunk-000/file-000.parquet").exists()  # written, then stopped by the check
    assert not (out / "meta/info.json").exists()
    assert not (out / "meta/episodes").exists()  # downstream of data: never ran


def _copy_conversion(converted_sample, tmp_path) -> tuple[dict, str]:
    """A private copy of the session's conversion (recording, dataset, work folder) and the
    resources and partition key to re-run its assets."""
    for name in ("source", "dataset", "work"):
        shutil.copytree(getattr(converted_sample, name), tmp_path / name)
    resources = {
        "storage": StorageResource(recording_dir=str(tmp_path / "source"), dataset_dir=str(tmp_path / "dataset"),
                                   work=str(tmp_path / "work")),
        "conversion": ConversionResource(data_file_size_mb=0.005, video_file_size_mb=0.025, audio_file_size_mb=0.05),
    }
    return resources, sanitize_key(converted_sample.source.name)


def _materialize(assets, resources, key):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(recordings.name, [key])
    return dg.materialize(assets, partition_key=key, instance=instance, resources=resources,
                          raise_on_error=False)


def test_a_broken_manifest_between_steps_blocks_and_withdraws_info_json(converted_sample, tmp_path):
    resources, key = _copy_conversion(converted_sample, tmp_path)
    dataset = tmp_path / "dataset"
    assert (dataset / "meta/info.json").exists()
    # The data placements handed to the episodes asset say episode 2 starts one row late.
    manifest = tmp_path / "work" / key / "manifests/data.parquet"
    table = pq.read_table(manifest)
    i = table.column_names.index("dataset_from_index")
    table = table.set_column(i, table.field(i), pa.array([0, 24, 45, 66], pa.int64()))
    pq.write_table(table, manifest)

    result = _materialize([episodes, dataset_stats, info], resources, key)

    assert not result.success
    assert not (dataset / "meta/info.json").exists()
    materialized = {e.asset_key.to_user_string() for e in result.all_events if e.is_step_materialization}
    assert materialized == {"episodes"}
    evaluation = _validation(result, "episodes")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    fault = "1 episodes disagree with the data rows; episode 2 claims rows 45..66, the data has 22 rows in 44..66"
    # Every failed lib check is named, in registration order (errors before warnings).
    assert evaluation.description == (
        f"check episodes_data_rows failed: {fault}; "
        "check episodes_length failed: 1 episodes have length != dataset_to_index - dataset_from_index; "
        "episode 2 has length 22, its rows 45..66 make 21; "
        "check episodes_data_file failed: 1 episodes are not (all) in their data file; "
        "episode 2: data/chunk-000/file-001.parquet holds 22 of its 21 rows")
    outcomes = checks.lib_check_results(evaluation)
    rows = outcomes["episodes_data_rows"]
    assert not rows["passed"] and rows["severity"] == validate.ERROR and rows["description"] == fault
    assert rows["counts"]["offending_episodes"] == 1
    table_md = evaluation.metadata["episodes_data_rows offending"].value
    assert table_md.splitlines()[0] == (
        "| episode_index | dataset_from_index | dataset_to_index | data_from | data_to | data_rows |")
    assert table_md.splitlines()[2] == "| 2 | 45 | 66 | 44 | 66 | 22 |"
    assert outcomes["episodes_index"]["passed"] and outcomes["episodes_files_exist"]["passed"]
    assert evaluation.metadata["failed"].value == 3
    summary = evaluation.metadata["checks"].value.splitlines()  # the UI's table of every lib check
    assert summary[0] == "| check | level | result | detail |"
    assert f"| episodes_data_rows | error | FAILED | {fault} |" in summary
    assert [ev.asset_key for ev in result.get_asset_check_evaluations()] == [dg.AssetKey("episodes")]  # dataset_stats never ran


def test_a_stray_data_file_fails_the_info_checks_before_info_json_is_written(converted_sample, tmp_path):
    resources, key = _copy_conversion(converted_sample, tmp_path)
    dataset = tmp_path / "dataset"
    # LeRobot's reader loads every data/*/*.parquet: this file would add 40 rows to the dataset.
    shutil.copyfile(dataset / "data/chunk-000/file-001.parquet", dataset / "data/chunk-000/stray.parquet")

    result = _materialize([info], resources, key)

    assert not result.success
    assert not (dataset / "meta/info.json").exists()  # the earlier one is withdrawn, no new one written
    evaluation = _validation(result, "info")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    outcomes = checks.lib_check_results(evaluation)
    assert not outcomes["info_totals"]["passed"]
    assert outcomes["info_totals"]["description"] == (
        "1 totals differ from the files; total_frames is 84 in meta/info.json, 124 on disk")
    assert outcomes["info_version"]["passed"] and outcomes["info_paths"]["passed"]

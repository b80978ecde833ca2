"""lib/validate.py and `dorobot-assets validate`: every check passes on valid datasets (ours and the
official converter's) and fails, by name and naming the fault, on a copy broken in exactly its way.

The session's converted sample (conftest ``converted_sample``) has episodes of 24, 20, 22 and 18
frames at 30 fps (rows 0..24, 24..44, 44..66, 66..84), tasks 0, 1, 0, 1, and two episodes per
data file, mp4 and WAV: data/chunk-000/file-000.parquet holds episodes 0 and 1, file-001 2 and 3.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets import cli
from dorobot_assets.lib import validate
from dorobot_assets.lib.validate import DatasetView, run_check, run_checks
from dorobot_assets_tests.conftest import shared_dataset

DATA_0 = "data/chunk-000/file-000.parquet"
DATA_1 = "data/chunk-000/file-001.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
CAMERA = "observation.images.top"
MIC = "observation.audio.left"
VIDEO_1 = f"videos/{CAMERA}/chunk-000/file-001.mp4"
OWN_CHECKS = {s.name for s in validate.registered_checks() if s.fn.__module__ == validate.__name__}


@pytest.fixture
def dataset(converted_sample, tmp_path) -> Path:
    """A private copy of the converted sample, free to break."""
    dest = tmp_path / "dataset"
    shutil.copytree(converted_sample.dataset, dest)
    return dest


def check(name: str, root: Path) -> validate.CheckResult:
    return run_check(name, DatasetView.open(root))


def own_results(root: Path) -> list[validate.CheckResult]:
    """This module's checks only (not those other issues register), without the deep one."""
    view = DatasetView.open(root)
    return [run_check(spec, view) for spec in validate.registered_checks() if spec.name in OWN_CHECKS and not spec.deep]


def rewrite(path: Path, change) -> None:
    """Rewrite a parquet file through ``change(table) -> table``, keeping its schema metadata."""
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def replace_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, table.field(i), pa.array(values, table.field(i).type))


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj, indent=4))


def assert_fails(result: validate.CheckResult, name: str, *fragments: str) -> None:
    assert result.name == name
    assert not result.passed, result.description
    for fragment in fragments:
        assert fragment in result.description, result.description


# --- valid datasets -------------------------------------------------------------------------

def test_our_conversion_passes_every_check_including_deep(converted_sample):
    results = run_checks(DatasetView.open(converted_sample.dataset), deep=True)
    assert [(r.name, r.description) for r in results if not r.passed] == []
    applicable = {r.name for r in results if r.applicable}
    assert OWN_CHECKS <= applicable  # cameras, microphone, stats: nothing left unchecked
    by_name = {r.name: r for r in results}
    assert by_name["data_index"].counts == {"rows": 84, "offending_rows": 0}
    assert by_name["video_frame_count"].counts == {"cameras": 1, "files": 2, "episodes_checked": 4, "offending": 0}
    assert by_name["video_pts_alignment"].counts["frames_checked"] == 84
    assert by_name["episodes_files_exist"].counts == {"referenced_files": 6, "missing": 0}


def test_validate_command_passes_the_golden_official_conversion(golden_pair, capsys):
    assert cli.main(["validate", str(golden_pair / "v30_official"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["description"]) for c in report["checks"] if not c["passed"]] == []
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["video_frame_count"]["description"] == "4 camera episodes hold exactly length frames (1 files)"
    assert by_name["info_totals"]["counts"] == {"total_episodes": 4, "total_frames": 1461, "total_tasks": 1}


def test_native_v30_without_its_mp4s_fails_only_on_the_missing_videos():
    results = own_results(shared_dataset("so101_record_test_v30_novideo"))
    errors = {r.name: r for r in results if r.is_error}
    assert set(errors) == {"episodes_files_exist", "video_frame_count"}
    assert [o["path"] for o in errors["episodes_files_exist"].offending] == [
        "videos/observation.images.front/chunk-000/file-000.mp4",
        "videos/observation.images.top/chunk-000/file-000.mp4",
    ]
    order = next(r for r in results if r.name == "stats_order")
    assert order.passed and order.counts["comparisons"] == 270  # recorder quantiles q01..q99 are ordered


def test_a_folder_without_info_json_is_not_a_dataset(tmp_path):
    with pytest.raises(validate.DatasetUnreadable, match="meta/info.json: missing"):
        DatasetView.open(tmp_path)


def test_a_missing_input_fails_the_check_naming_the_file(dataset):
    (dataset / "meta/tasks.parquet").unlink()
    result = check("tasks_index", dataset)
    assert_fails(result, "tasks_index", "meta/tasks.parquet is missing")
    assert result.offending == [{"missing": "meta/tasks.parquet"}]


# --- tasks ----------------------------------------------------------------------------------

def test_tasks_index_fails_when_rows_are_out_of_order(dataset):
    rewrite(dataset / "meta/tasks.parquet", lambda t: t.take([1, 0]))
    result = check("tasks_index", dataset)
    assert_fails(result, "tasks_index",
                 "2 of 2 task rows are out of task_index order; row 0 has task_index 1, expected 0")
    assert result.counts == {"tasks": 2, "offending_rows": 2}


def test_tasks_unique_fails_on_a_duplicated_task(dataset):
    rewrite(dataset / "meta/tasks.parquet", lambda t: replace_column(t, "task", ["pick up the cube"] * 2))
    result = check("tasks_unique", dataset)
    assert_fails(result, "tasks_unique", "'pick up the cube' is duplicated (task_index [0, 1])")
    assert result.offending == [{"task": "pick up the cube", "rows": 2, "task_indices": [0, 1]}]


def test_tasks_pandas_index_fails_without_pandas_metadata(dataset):
    path = dataset / "meta/tasks.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    assert_fails(check("tasks_pandas_index", dataset), "tasks_pandas_index", "has no pandas metadata")
    assert check("tasks_index", dataset).passed and check("tasks_unique", dataset).passed


# --- data -----------------------------------------------------------------------------------

def test_data_index_fails_on_a_shifted_index(dataset):
    rewrite(dataset / DATA_1, lambda t: replace_column(t, "index", [1000 if i == 3 else v for i, v in
                                                                      enumerate(t.column("index").to_pylist())]))
    result = check("data_index", dataset)
    assert_fails(result, "data_index", "1 of 84 rows have index different from their global row position; "
                 "first: row 47 (data/chunk-000/file-001.parquet row 3) has index 1000")
    assert result.offending == [{"row_pos": 47, "data_file": DATA_1, "file_row": 3, "index": 1000, "episode_index": 2}]


def test_data_episode_order_fails_when_episodes_are_swapped(dataset):
    # file-001 rows 0..21 are episode 2, 22..39 episode 3: put episode 3 first.
    rewrite(dataset / DATA_1, lambda t: t.take(list(range(22, 40)) + list(range(22))))
    result = check("data_episode_order", dataset)
    assert_fails(result, "data_episode_order", "episode_index decreases at 1 rows; first: row 62 "
                 "(data/chunk-000/file-001.parquet row 18) has episode 2 after episode 3")


def test_data_frame_index_fails_when_a_row_is_dropped(dataset):
    rewrite(dataset / DATA_0, lambda t: t.take([i for i in range(t.num_rows) if i != 10]))
    result = check("data_frame_index", dataset)
    assert_fails(result, "data_frame_index", "13 rows break the 0,1,2,... frame_index sequence of their episode; "
                 "first: row 10 (episode 0) has frame_index 11, expected 10")
    assert result.counts == {"rows": 83, "offending_rows": 13}


def test_data_timestamps_warns_on_a_stretched_episode(dataset):
    def stretch(t):
        pairs = zip(t.column("timestamp").to_pylist(), t.column("episode_index").to_pylist())
        ts = [v * 1.01 if e == 1 else v for v, e in pairs]
        return replace_column(t, "timestamp", ts)

    rewrite(dataset / DATA_0, stretch)
    results = own_results(dataset)
    assert [r.name for r in results if not r.passed] == ["data_timestamps"]
    result = results[[r.name for r in results].index("data_timestamps")]
    assert result.severity == validate.WARNING and validate.is_valid(results)
    assert ("19 of 84 rows have timestamp off frame_index / fps by more than 0.0001 s; "
            "first: row 25 (episode 1, frame 1)") in result.description


def test_data_task_index_fails_on_an_unknown_task(dataset):
    rewrite(dataset / DATA_1, lambda t: replace_column(t, "task_index", [5 if e == 3 else v for v, e in zip(
        t.column("task_index").to_pylist(), t.column("episode_index").to_pylist())]))
    result = check("data_task_index", dataset)
    assert_fails(result, "data_task_index",
                 "18 rows use task_index values missing from meta/tasks.parquet (2 tasks): 5; "
                 "first at row 66 (episode 3)")


def test_data_columns_fails_on_an_undeclared_and_a_missing_column(dataset):
    rewrite(dataset / DATA_0, lambda t: t.drop_columns(["action"]))
    rewrite(dataset / DATA_1, lambda t: t.append_column("gripper_force", pa.array([0.5] * t.num_rows, pa.float32())))
    result = check("data_columns", dataset)
    assert_fails(result, "data_columns", "2 of 2 data files do not have exactly the declared columns; "
                 "data/chunk-000/file-000.parquet: missing action")
    assert result.offending == [
        {"file": DATA_0, "missing": "action", "undeclared": ""},
        {"file": DATA_1, "missing": "", "undeclared": "gripper_force"},
    ]


def test_data_file_size_warns_only_for_files_with_several_episodes(dataset):
    # Move episode 3 into its own file-002: still a valid layout, now with single-episode files.
    table = pq.read_table(dataset / DATA_1)
    pq.write_table(table.slice(22), dataset / "data/chunk-000/file-002.parquet")
    pq.write_table(table.slice(0, 22), dataset / DATA_1)
    rewrite(dataset / EPISODES, lambda t: replace_column(t, "data/file_index", [0, 0, 1, 2]))
    edit_json(dataset / "meta/info.json", lambda info: info.update(data_files_size_in_mb=0.001))
    result = check("data_file_size", dataset)
    assert_fails(result, "data_file_size", "1 data files exceed the 0.001 MB limit with more than one episode; "
                 "data/chunk-000/file-000.parquet:", "2 episodes")
    assert result.counts == {"files": 3, "offending_files": 1} and result.severity == validate.WARNING
    assert check("episodes_data_file", dataset).passed


# --- episodes -------------------------------------------------------------------------------

def test_episodes_index_fails_when_rows_are_swapped(dataset):
    rewrite(dataset / EPISODES, lambda t: t.take([0, 2, 1, 3]))
    result = check("episodes_index", dataset)
    assert_fails(result, "episodes_index", "2 of 4 episode rows are out of order; row 1 holds episode 2, expected 1")


def test_episodes_data_rows_fails_on_a_shifted_from_index(dataset):
    rewrite(dataset / EPISODES, lambda t: replace_column(t, "dataset_from_index", [0, 24, 45, 66]))
    result = check("episodes_data_rows", dataset)
    assert_fails(result, "episodes_data_rows",
                 "1 episodes disagree with the data rows; episode 2 claims rows 45..66, the data has 22 rows in 44..66")


def test_episodes_data_rows_fails_when_an_episode_row_is_dropped(dataset):
    rewrite(dataset / EPISODES, lambda t: t.take([0, 1, 3]))
    assert_fails(check("episodes_data_rows", dataset), "episodes_data_rows",
                 "episode 2 has 22 data rows but no row in meta/episodes")


def test_episodes_length_fails_on_a_wrong_length(dataset):
    rewrite(dataset / EPISODES, lambda t: replace_column(t, "length", [24, 21, 22, 18]))
    assert_fails(check("episodes_length", dataset), "episodes_length",
                 "1 episodes have length != dataset_to_index - dataset_from_index; episode 1 has length 21, "
                 "its rows 24..44 make 20")


def test_episodes_data_file_fails_when_pointing_at_another_file(dataset):
    rewrite(dataset / EPISODES, lambda t: replace_column(t, "data/file_index", [0, 1, 1, 1]))
    result = check("episodes_data_file", dataset)
    assert_fails(result, "episodes_data_file", "1 episodes are not (all) in their data file; episode 1: "
                 "data/chunk-000/file-001.parquet holds 0 of its 20 rows; "
                 "its rows are in data/chunk-000/file-000.parquet")


def test_episodes_files_exist_fails_on_a_deleted_video(dataset):
    (dataset / VIDEO_1).unlink()
    result = check("episodes_files_exist", dataset)
    assert_fails(result, "episodes_files_exist",
                 f"1 referenced files are missing; {VIDEO_1} (first referenced by episode 2)")
    assert result.offending == [{"kind": "videos", "key": CAMERA, "episode_index": 2, "path": VIDEO_1}]


# --- videos ---------------------------------------------------------------------------------

def test_video_timestamps_fails_on_a_stretched_to_timestamp(dataset):
    column = f"videos/{CAMERA}/to_timestamp"
    rewrite(dataset / EPISODES, lambda t: replace_column(t, column, [v + 0.1 if i == 0 else v for i, v in
                                                                       enumerate(t.column(column).to_pylist())]))
    assert_fails(check("video_timestamps", dataset), "video_timestamps",
                 f"{CAMERA} episode 0: 0.000000..0.900000 s spans 0.900000 s, 0.800000 s expected")


def test_video_frame_count_fails_on_a_truncated_video(dataset):
    path = dataset / VIDEO_1
    truncated = path.with_name("truncated.mp4")
    with av.open(str(path)) as source, av.open(str(truncated), "w", format="mp4") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        packets = [p for p in source.demux(source.streams.video[0]) if p.dts is not None]
        for packet in packets[:-1]:  # the last frame of episode 3 goes missing
            packet.stream = stream
            out.mux(packet)
    truncated.replace(path)
    result = check("video_frame_count", dataset)
    assert_fails(result, "video_frame_count", f"1 camera episodes have a frame count different from their length; "
                 f"{CAMERA} episode 3 has 17 frames in {VIDEO_1} between 0.733333 and 1.333333 s, length is 18")
    assert check("video_timestamps", dataset).passed  # the metadata is intact, the file is not


def test_video_frame_count_fails_on_an_mp4_cut_short(dataset):
    """The index says 40 frames; the copy of the file stopped inside frame 39 (0-based 38)."""
    from dorobot_assets.lib import mp4

    path = dataset / VIDEO_1
    track = mp4.read_mp4(path).tracks[0]
    assert track.sample_count == 40  # episodes 2 and 3: 22 + 18 frames
    path.write_bytes(path.read_bytes()[: int(track.offsets[38]) + 1])
    result = check("video_frame_count", dataset)
    assert_fails(result, "video_frame_count", "1 camera episodes have a frame count different from their length; "
                 f"{CAMERA} episode 2: file truncated: 2 of 40 frames lie beyond its end {VIDEO_1}")
    assert result.offending == [{"video_key": CAMERA, "episode_index": 2, "file": VIDEO_1,
                                 "fault": "file truncated: 2 of 40 frames lie beyond its end"}]
    assert result.counts == {"cameras": 1, "files": 1, "episodes_checked": 2, "offending": 1}


def test_video_frame_count_demuxes_an_mp4_its_index_reader_does_not_take(dataset):
    """A fragmented mp4 (moof boxes) holding the same frames: counted by demuxing with PyAV."""
    path = dataset / VIDEO_1
    fragmented = path.with_name("fragmented.mp4")
    with av.open(str(path)) as source, av.open(str(fragmented), "w", format="mp4",
                                               options={"movflags": "frag_keyframe+empty_moov"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    fragmented.replace(path)
    assert check("video_frame_count", dataset).counts == {"cameras": 1, "files": 2, "episodes_checked": 4,
                                                          "offending": 0}


def test_video_pts_alignment_fails_on_a_sub_frame_shift_only_in_deep_mode(dataset):
    def shift(t):
        for column in (f"videos/{CAMERA}/from_timestamp", f"videos/{CAMERA}/to_timestamp"):
            t = replace_column(t, column, [v + 0.01 if i == 1 else v for i, v in enumerate(t.column(column).to_pylist())])
        return t

    rewrite(dataset / EPISODES, shift)
    assert [r.name for r in own_results(dataset) if not r.passed] == []  # counts and spans still agree
    result = check("video_pts_alignment", dataset)
    assert_fails(result, "video_pts_alignment", "20 frames have no decoded frame within 0.0001 s",
                 f"{CAMERA} episode 1 frame 0: requested 0.810000 s, nearest frame at 0.800000 s")
    assert result.counts["offending_frames"] == 20


def test_video_file_size_warns_when_the_limit_is_exceeded_and_validate_still_exits_0(dataset, capsys):
    edit_json(dataset / "meta/info.json", lambda info: info.update(video_files_size_in_mb=0.001))
    result = check("video_file_size", dataset)
    assert_fails(result, "video_file_size", "2 video files exceed the 0.001 MB limit with more than one episode; "
                 f"videos/{CAMERA}/chunk-000/file-000.mp4")
    assert result.severity == validate.WARNING
    assert cli.main(["validate", str(dataset)]) == 0  # a warning does not make a dataset invalid
    assert "warn    video_file_size" in capsys.readouterr().out


# --- audio ----------------------------------------------------------------------------------

def test_audio_within_file_fails_when_to_timestamp_passes_the_end(dataset):
    column = f"audio/{MIC}/to_timestamp"
    rewrite(dataset / EPISODES, lambda t: replace_column(t, column, [v + 1.0 if i == 3 else v for i, v in
                                                                       enumerate(t.column(column).to_pylist())]))
    result = check("audio_within_file", dataset)
    assert_fails(result, "audio_within_file", f"1 microphone episodes point outside their WAV file; {MIC} episode 3",
                 f"is not within audio/{MIC}/chunk-000/file-001.wav (0..1.33")


def test_audio_file_size_warns_when_the_limit_is_exceeded(dataset):
    edit_json(dataset / "meta/info.json", lambda info: info.update(audio_files_size_in_mb=0.001))
    result = check("audio_file_size", dataset)
    assert_fails(result, "audio_file_size", "2 audio files exceed the 0.001 MB limit with more than one episode")


# --- stats ----------------------------------------------------------------------------------

def test_stats_order_fails_on_a_quantile_above_the_median(dataset):
    def swap(stats):
        stats["observation.state"]["q10"][0] = stats["observation.state"]["q50"][0] + 1.0

    edit_json(dataset / "meta/stats.json", swap)
    result = check("stats_order", dataset)
    assert_fails(result, "stats_order", "1 stats are out of order; meta/stats.json observation.state: q10 <= q50 "
                 "fails at element [0]")


def test_stats_order_fails_on_an_episode_min_above_its_max(dataset):
    def raise_min(t):
        rows = t.column("stats/action/min").to_pylist()
        rows[2] = [v + 100.0 for v in rows[2]]
        return replace_column(t, "stats/action/min", rows)

    rewrite(dataset / EPISODES, raise_min)
    result = check("stats_order", dataset)
    assert_fails(result, "stats_order", "episode 2 action: min <= q01 fails at element [0]")


@pytest.mark.parametrize("where", ["stats.json", "episode"])
def test_stats_counts_fails_on_an_inconsistent_count(dataset, where):
    if where == "stats.json":
        edit_json(dataset / "meta/stats.json", lambda s: s["action"].update(count=[85]))
        expected = "meta/stats.json action: count 85, expected 84 (sum of episode counts)"
    else:
        rewrite(dataset / EPISODES, lambda t: replace_column(t, "stats/action/count", [[24], [21], [22], [18]]))
        edit_json(dataset / "meta/stats.json", lambda s: s["action"].update(count=[85]))  # keep the sum consistent
        expected = "episode 1 action: count 21, expected 20 (episode length)"
    result = check("stats_counts", dataset)
    assert_fails(result, "stats_counts", expected)
    assert result.counts["offending"] == 1


def test_stats_extremes_fails_on_a_global_max_no_episode_reaches(dataset):
    edit_json(dataset / "meta/stats.json", lambda s: s["observation.state"]["max"].__setitem__(2, 99.0))
    assert_fails(check("stats_extremes", dataset), "stats_extremes",
                 "1 features have a global max that is not the largest episode max; observation.state element [2]: "
                 "meta/stats.json has 99.0")


def test_stats_mean_fails_on_a_global_mean_that_is_not_the_weighted_mean(dataset):
    stats = json.loads((dataset / "meta/stats.json").read_text())
    before = stats["action"]["mean"][0]
    edit_json(dataset / "meta/stats.json", lambda s: s["action"]["mean"].__setitem__(0, before + 0.5))
    assert_fails(check("stats_mean", dataset), "stats_mean", "action element [0]: meta/stats.json has "
                 f"{before + 0.5}, expected")


# --- info -----------------------------------------------------------------------------------

def test_info_version_fails_on_v21(dataset):
    edit_json(dataset / "meta/info.json", lambda info: info.update(codebase_version="v2.1"))
    assert_fails(check("info_version", dataset), "info_version", "codebase_version is 'v2.1', expected 'v3.0'")


def test_info_totals_fails_on_a_stale_total(dataset):
    edit_json(dataset / "meta/info.json", lambda info: info.update(total_frames=85))
    result = check("info_totals", dataset)
    assert_fails(result, "info_totals",
                 "1 totals differ from the files; total_frames is 85 in meta/info.json, 84 on disk")
    assert result.offending == [{"key": "total_frames", "info": 85, "on_disk": 84}]


@pytest.mark.parametrize("template, fault", [
    ("../outside/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
     "'../outside/chunk-000/file-000.parquet' leaves the dataset"),
    ("data/chunk-{chunk_index:03d}/file.parquet", "fields ['chunk_index'], expected ['chunk_index', 'file_index']"),
])
def test_info_paths_fails_on_a_bad_data_path(dataset, template, fault):
    edit_json(dataset / "meta/info.json", lambda info: info.update(data_path=template))
    assert_fails(check("info_paths", dataset), "info_paths", f"data_path {template!r}: {fault}")


# --- registry -------------------------------------------------------------------------------

def test_two_checks_cannot_share_a_name():
    with pytest.raises(ValueError, match="check name 'data_index' is taken by dorobot_assets.lib.validate.data_index"):
        validate.check("data_index", "data", validate.ERROR, "a second one")(lambda view: validate.passed("ok"))


def test_check_modules_that_do_not_exist_yet_are_skipped_but_broken_ones_raise(monkeypatch, tmp_path):
    (tmp_path / "broken_checks_module.py").write_text("import no_such_dependency_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(validate, "CHECK_MODULES", ("dorobot_assets.lib.no_such_checks",))
    assert {s.name for s in validate.registered_checks()} >= OWN_CHECKS
    monkeypatch.setattr(validate, "CHECK_MODULES", ("broken_checks_module",))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_anywhere"):
        validate.registered_checks()
    sys.modules.pop("broken_checks_module", None)


# --- the command ----------------------------------------------------------------------------

def test_validate_command_exits_0_on_a_valid_dataset(converted_sample, capsys):
    assert cli.main(["validate", str(converted_sample.dataset)]) == 0
    out = capsys.readouterr().out
    assert "ok      data_index" in out
    assert "skip    video_pts_alignment" in out  # deep: only with --deep
    assert out.rstrip().splitlines()[-1].startswith("valid: ")


def test_validate_command_exits_1_and_lists_the_offending_rows(dataset, capsys):
    rewrite(dataset / EPISODES, lambda t: replace_column(t, "length", [24, 21, 22, 18]))
    assert cli.main(["validate", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "FAIL    episodes_length" in out
    assert "episode_index=1, length=21, dataset_from_index=24, dataset_to_index=44, expected=20" in out
    assert "INVALID: " in out


def test_validate_command_json_and_deep(dataset, capsys):
    (dataset / VIDEO_1).unlink()
    assert cli.main(["validate", str(dataset), "--json", "--deep"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "FAIL"}
    assert {"episodes_files_exist", "video_frame_count", "video_pts_alignment"} <= set(failed)
    assert failed["video_pts_alignment"]["offending"] == [{"video_key": CAMERA, "file": VIDEO_1, "fault": "file missing"}]



def test_validate_command_refuses_a_folder_without_info_json(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path)]) == 1
    assert "meta/info.json: missing" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["same types", "action min in float32 in one file"])
def test_stats_checks_read_meta_episodes_split_over_files_alike(dataset, split):
    """The stats checks read meta/episodes' stats columns with Arrow (files in order) when every
    file has them in one type, else through DuckDB's view: both give the same values, and a
    broken episode in the second file is found either way."""
    table = pq.read_table(dataset / EPISODES)
    (dataset / EPISODES).unlink()
    second = table.slice(2)
    if split != "same types":
        i = second.column_names.index("stats/action/min")
        second = second.set_column(i, pa.field("stats/action/min", pa.list_(pa.float32())),
                                   second.column(i).cast(pa.list_(pa.float32())))
    pq.write_table(table.slice(0, 2), dataset / EPISODES)
    pq.write_table(second, dataset / "meta/episodes/chunk-000/file-001.parquet")

    view = DatasetView.open(dataset)
    names = [n for n in table.column_names if n.startswith("stats/")]
    arrow_path = validate._episodes_columns_reader(view, names) is not None
    assert arrow_path == (split == "same types")
    indices, lengths, stats = validate._read_episode_stats(view)
    assert (indices, lengths) == ([0, 1, 2, 3], [24, 20, 22, 18])
    np.testing.assert_allclose(stats["action"]["min"], np.array(table.column("stats/action/min").to_pylist()), rtol=1e-6)
    for name in ("stats_order", "stats_counts", "stats_extremes", "stats_mean"):
        assert run_check(name, view).passed, name

    def raise_min(t):
        rows = t.column("stats/action/min").to_pylist()
        rows[1] = [v + 100.0 for v in rows[1]]  # episode 3
        return replace_column(t, "stats/action/min", rows)

    rewrite(dataset / "meta/episodes/chunk-000/file-001.parquet", raise_min)
    assert_fails(check("stats_order", dataset), "stats_order", "episode 3 action: min <= q01 fails at element [0]")

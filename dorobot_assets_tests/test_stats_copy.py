"""v2.1 per-episode stats read by Arrow's JSON reader (copy mode, and the source comparison
check) give what reading each line with Python's json gives: the same table, findings and
errors; lines Arrow could read otherwise take the Python path."""

import json
import re
import shutil

import numpy as np
import pytest

from dorobot_assets.lib import stats as S
from dorobot_assets.lib import stats_checks, synthetic
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.v21 import read_recording
from dorobot_assets.lib.validate import DatasetView


def _python_path(monkeypatch):
    monkeypatch.setattr(S, "parse_stats_lines", lambda lines: None)
    monkeypatch.setattr(stats_checks, "parse_stats_lines", lambda lines: None)


def _edit_stats(src, edit):
    path = src / "meta/episodes_stats.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def recording(make_sample):
    return make_sample("copy_stats", lengths=[12, 15, 9, 11, 7],
                       cameras=[synthetic.CameraSpec("observation.images.top", "h264")])


def test_copied_stats_read_by_arrow_equal_pythons_reading_in_any_block_size(recording, monkeypatch):
    rec = read_recording(recording)
    assert S._parsed_stats_table(rec, rec.episodes_stats_lines) is not None  # Arrow's path is taken
    fast = S.copy_source_stats(rec)
    assert str(fast.column(S.stats_column("observation.images.top", "mean")).type).endswith("item: double>>>")
    monkeypatch.setattr(S, "STATS_BLOCK_EPISODES", 2)
    assert S.copy_source_stats(rec).equals(fast)
    _python_path(monkeypatch)
    slow = S.copy_source_stats(rec)
    assert slow.schema == fast.schema and slow.equals(fast)


@pytest.mark.parametrize("edit, fault", [
    (lambda rows: rows[3]["stats"].update(action=rows[3]["stats"].pop("action")),  # action moved last
     "episode 3 has different stats keys from episode 0"),
    (lambda rows: [r["stats"].update(bogus={"min": [1]}) for r in rows],
     "episode 0 has stats for 'bogus', which info.json does not declare"),
])
def test_copy_errors_are_the_same_on_either_path(recording, monkeypatch, edit, fault):
    _edit_stats(recording, edit)
    rec = read_recording(recording)
    with pytest.raises(RecordingError) as fast:
        S.copy_source_stats(rec)
    _python_path(monkeypatch)
    with pytest.raises(RecordingError) as slow:
        S.copy_source_stats(rec)
    assert fast.value.code == slow.value.code == "stats_mismatch"
    assert fast.value.fault == slow.value.fault and fault in fast.value.fault


def test_ints_and_floats_of_a_stat_across_blocks_make_floats_as_numpy_does(recording, monkeypatch):
    _edit_stats(recording, lambda rows: [r["stats"]["action"].update(min=[int(v) for v in r["stats"]["action"]["min"]])
                                         for r in rows[:2]])
    rec = read_recording(recording)
    monkeypatch.setattr(S, "STATS_BLOCK_EPISODES", 2)
    fast = S.copy_source_stats(rec)
    _python_path(monkeypatch)
    assert fast.equals(S.copy_source_stats(rec))
    assert str(fast.column(S.stats_column("action", "min")).type) == "list<item: double>"


LINE = '{"episode_index": %d, "stats": {"a": {"min": [1.5, %s], "count": [%d]}}}'


def test_only_lines_arrow_reads_as_python_does_are_parsed_by_arrow():
    lines = [LINE % (0, "2.5", 4), LINE % (1, "-3", 5)]
    parsed = S.parse_stats_lines(lines)
    assert parsed.episodes.tolist() == [0, 1]
    assert parsed.stats["a"]["min"].tolist() == [[1.5, 2.5], [1.5, -3.0]]
    assert parsed.stats["a"]["count"].dtype == np.int64
    bare = S.parse_stats_lines([re.sub(r"\[(\d)\]", r"\1", line) for line in lines])
    assert bare.stats["a"]["count"].tolist() == [[4], [5]]  # as np.atleast_1d makes a bare number
    for odd in ("-NaN", "Inf", "-0", "12345678901234567890", "null", "2.5, 3.5"):
        assert S.parse_stats_lines([lines[0], LINE % (1, odd, 5)]) is None, odd
    assert S.parse_stats_lines([lines[0], lines[1].replace('"min": [1.5, -3], "count": [5]',
                                                           '"count": [5], "min": [1.5, -3]')]) is None
    assert S.parse_stats_lines([lines[0], lines[1].replace('"a"', '"\\u0061"')]) is None
    assert S.parse_stats_lines([lines[0] + lines[1]]) is None  # two objects on a line


def test_source_comparison_finds_the_same_on_either_path(converted_sample, tmp_path, monkeypatch):
    src = tmp_path / "recording"
    shutil.copytree(converted_sample.source, src)

    def tamper(rows):
        rows[1]["stats"]["observation.state"]["mean"][2] += 1.0
        rows[2]["stats"]["action"]["count"] = [3]
        rows[3]["stats"]["observation.images.top"]["mean"] = [0.5, 0.5]

    _edit_stats(src, tamper)
    info = json.loads((converted_sample.dataset / "meta/info.json").read_text())

    def result():
        return stats_checks.stats_match_source(DatasetView(root=converted_sample.dataset, info=info, source=src))

    monkeypatch.setattr(stats_checks, "STATS_BLOCK_EPISODES", 3)
    assert all(isinstance(stats, dict) for _, stats in stats_checks._source_stats_blocks(src))  # Arrow's path
    fast = result()
    assert {(o["episode_index"], o["feature"], o["stat"]) for o in fast.offending} == {
        (1, "observation.state", "mean"), (2, "action", "count"), (3, "observation.images.top", "mean")}
    _python_path(monkeypatch)
    assert result() == fast

"""Exact agreement with the official LeRobot converter on a real recording (tabular artifacts).

``g1_subset4_golden_pair/v21`` is real G1 data; ``v30_official`` is what lerobot 0.4.4's converter
made of it. We compare parsed values, not bytes (parquet metadata and JSON key order differ).
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.tasks import read_tasks
from dorobot_assets_tests.conftest import file_hashes


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from dorobot_assets_tests.conftest import shared_dataset

    pair = shared_dataset("g1_subset4_golden_pair")
    before = file_hashes(pair / "v21")
    out = tmp_path_factory.mktemp("golden") / "g1"
    run = convert_recording(pair / "v21", out, ConversionSettings(stats="copy"))
    assert run.success, run.error
    assert file_hashes(pair / "v21") == before, "the source recording must not change"
    return pair / "v30_official", out


def test_info_equals_official(converted):
    official, ours = converted
    a = json.loads((official / "meta/info.json").read_text())
    b = json.loads((ours / "meta/info.json").read_text())
    # Nothing differs on this recording: its totals and split were already right, and the
    # deliberate differences (recomputed totals/split) give the same values.
    assert b == a
    assert list(b)[:3] == ["codebase_version", "robot_type", "total_episodes"]


def test_tasks_equal_official(converted):
    official, ours = converted
    assert read_tasks(ours) == read_tasks(official) == ["Pick up the yellow bottle on the table."]


def test_tasks_parquet_reads_back_through_pandas_as_lerobot_does(converted):
    pd = pytest.importorskip("pandas", reason="pandas is a test extra")
    _, ours = converted
    df = pd.read_parquet(ours / "meta/tasks.parquet")
    assert df.index.name == "task"
    assert df.iloc[0].name == "Pick up the yellow bottle on the table."
    assert int(df.iloc[0]["task_index"]) == 0


def test_episodes_table_equals_official(converted):
    official, ours = converted
    a = pq.read_table(official / "meta/episodes/chunk-000/file-000.parquet")
    b = pq.read_table(ours / "meta/episodes/chunk-000/file-000.parquet")
    assert b.column_names == a.column_names, "same columns in the official order"
    for name in a.column_names:
        assert b.schema.field(name).type == a.schema.field(name).type, name
        if "timestamp" in name:
            assert np.allclose(b.column(name).to_pylist(), a.column(name).to_pylist(), rtol=0, atol=1e-9), name
        else:
            assert b.column(name).to_pylist() == a.column(name).to_pylist(), name


def test_data_values_equal_official(converted):
    official, ours = converted
    a = pq.read_table(official / "data/chunk-000/file-000.parquet")
    b = pq.read_table(ours / "data/chunk-000/file-000.parquet")
    assert b.column_names == a.column_names and b.num_rows == a.num_rows == 1461
    for name in a.column_names:
        assert b.column(name).to_pylist() == a.column(name).to_pylist(), name
    # we keep the recorder's fixed-size vectors; the official tool's pandas round trip made them lists
    assert str(b.schema.field("action").type) == "fixed_size_list<element: float>[26]"
    assert str(a.schema.field("action").type) == "list<element: float>"


def test_stats_json_within_1e9_of_official(converted):
    official, ours = converted
    a = json.loads((official / "meta/stats.json").read_text())
    b = json.loads((ours / "meta/stats.json").read_text())
    assert set(b) == set(a)
    for feature, stats in a.items():
        assert set(b[feature]) == set(stats), feature
        for stat, value in stats.items():
            assert np.allclose(np.asarray(b[feature][stat], float), np.asarray(value, float), rtol=0, atol=1e-9), (feature, stat)

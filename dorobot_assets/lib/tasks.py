"""meta/tasks.parquet (reference notes §2.2).

LeRobot resolves a frame's task by row position (``tasks.iloc[task_index].name``), so rows are in
task_index order and the task strings are the pandas index, named ``task`` as LeRobot HEAD
writes it. We write the pandas metadata ourselves (pandas is not a dependency): without it
pandas reads back a RangeIndex and LeRobot silently returns integers instead of task strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.arrow import int64_array, string_array
from dorobot_assets.lib.v30 import TASKS_PATH

# Oldest pandas whose metadata layout we mirror; pandas only consults it for pre-1.0 quirks.
_PANDAS_METADATA_VERSION = "2.2.0"


def _pandas_metadata() -> bytes:
    meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": _PANDAS_METADATA_VERSION,
    }
    return json.dumps(meta).encode()


def tasks_table(tasks: list[str]) -> pa.Table:
    table = pa.table({
        "task_index": int64_array(range(len(tasks))),
        "task": string_array(tasks),
    })
    return table.replace_schema_metadata({b"pandas": _pandas_metadata()})


@dataclass
class TasksResult:
    path: Path
    total_tasks: int


def write_tasks(tasks: list[str], dataset_root: Path) -> TasksResult:
    path = Path(dataset_root) / TASKS_PATH
    with atomic_path(path) as tmp:
        pq.write_table(tasks_table(tasks), tmp)
    return TasksResult(path=path, total_tasks=len(tasks))


def read_tasks(dataset_root: Path) -> list[str]:
    """Task strings in task_index order, from either LeRobot's or our tasks.parquet layout."""
    table = pq.ParquetFile(Path(dataset_root) / TASKS_PATH).read()
    name = "task" if "task" in table.column_names else "__index_level_0__"
    rows = sorted(zip(table.column("task_index").to_pylist(), table.column(name).to_pylist()))
    return [t for _, t in rows]

"""meta/episodes/chunk-000/file-000.parquet: one row per episode joining every placement (notes §2.3).

Column order follows the official converter: ``episode_index``, ``data/*``, ``dataset_from_index``,
``dataset_to_index``, ``videos/<key>/*`` (sorted keys), ``audio/<key>/*`` (ours, DoRobot),
``tasks``, ``length``, extra episodes.jsonl keys, ``dataid`` (DoRobot), ``stats/*``,
``meta/episodes/*``. One file holds every episode (a few MB even for thousands of episodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets.lib.data import remove_unplanned
from dorobot_assets.lib.errors import OutputError
from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.arrow import (
    column_numpy, int64_array, release_freed_memory, string_array, string_list_array, write_per_episode_table,
)
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import episodes_file

EPISODES_SLOT = (0, 0)


def _check_rows(name: str, table: pa.Table, n: int) -> None:
    column = table.column("episode_index")
    if len(column) != n or column.null_count or not np.array_equal(column_numpy(column), np.arange(n)):
        raise OutputError(f"{name} placements do not cover episodes 0..{n - 1} in order")


def build_episodes_table(
    rec: Recording,
    data: pa.Table,
    placements: list[tuple[str, pa.Table]] = (),
    stats: pa.Table | None = None,
) -> pa.Table:
    n = len(rec.episodes)
    _check_rows("data", data, n)
    cols: dict[str, pa.Array] = {}
    for name in data.column_names:
        cols[name] = data.column(name)
    for label, table in placements:
        _check_rows(label, table, n)
        for name in table.column_names:
            if name != "episode_index":
                cols[name] = table.column(name)
    cols["tasks"] = string_list_array([e.tasks for e in rec.episodes])
    cols["length"] = int64_array([e.length for e in rec.episodes])
    extra_keys: list[str] = []
    for e in rec.episodes:
        for k in e.extra:
            if k not in extra_keys and k not in cols:
                extra_keys.append(k)
    for k in extra_keys:
        try:
            # any JSON type, inferred by pyarrow (which imports pandas if installed: only
            # recordings with extra episodes.jsonl keys come here)
            cols[k] = pa.array([e.extra.get(k) for e in rec.episodes])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as ex:
            raise OutputError(f"episodes.jsonl key {k!r} has values of mixed types: {ex}") from ex
    if any(e.dataid is not None for e in rec.episodes):
        cols["dataid"] = string_array([e.dataid for e in rec.episodes])
    if stats is not None:
        _check_rows("stats", stats, n)
        for name in stats.column_names:
            if name != "episode_index":
                cols[name] = stats.column(name)
    cols["meta/episodes/chunk_index"] = int64_array([EPISODES_SLOT[0]] * n)
    cols["meta/episodes/file_index"] = int64_array([EPISODES_SLOT[1]] * n)
    return pa.table(cols)


@dataclass
class EpisodesResult:
    path: Path
    episodes: int
    columns: list[str]


def write_episodes(table: pa.Table, dataset_root: Path) -> EpisodesResult:
    path = Path(dataset_root) / episodes_file(*EPISODES_SLOT)
    with atomic_path(path) as tmp:
        write_per_episode_table(table, tmp)
    release_freed_memory()  # the table and the writer's freed pages
    remove_unplanned(Path(dataset_root) / "meta" / "episodes", [path], "*.parquet")
    return EpisodesResult(path=path, episodes=table.num_rows, columns=table.column_names)


def read_episodes(dataset_root: Path) -> pa.Table:
    """Every ``meta/episodes`` file of a v3.0 dataset, concatenated in path order."""
    files = sorted((Path(dataset_root) / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise OutputError(f"{dataset_root}: no meta/episodes files")
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files], promote_options="default")

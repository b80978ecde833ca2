"""data/chunk-XXX/file-YYY.parquet: episodes rechunked into few large files (notes §2.5, §3.4).

Placement follows :mod:`rollover` over each episode's *uncompressed* parquet size (as LeRobot
measures it). Writing streams one episode at a time through ``ParquetWriter`` (one row group per
episode), so memory is bounded by the largest episode, not the recording. Column values, types
and the source schema metadata are kept as they are: LeRobot 0.4.x round-trips through pandas and
turns ``fixed_size_list<float>[n]`` into ``list<float>``; native v3.0 recordings keep the fixed
size list, and LeRobot's reader casts either to the declared features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover
from dorobot_assets.lib.v21 import Recording, read_episode_data
from dorobot_assets.lib.v30 import DEFAULT_FILES_PER_CHUNK, MB, data_file



def plan_data(rec: Recording, limit_mb: float, files_per_chunk: int = DEFAULT_FILES_PER_CHUNK) -> list[FileSlot]:
    sizes = [e.data_uncompressed_bytes / MB for e in rec.episodes]
    return plan_rollover(sizes, limit_mb, files_per_chunk=files_per_chunk)


@dataclass
class DataResult:
    placements: pa.Table  # the data manifest: episode_index, data/*, dataset_from/to_index
    files: list[Path]
    rows: int
    bytes_written: int
    removed_stale: list[Path]


def write_data(
    rec: Recording,
    dataset_root: Path,
    limit_mb: float,
    files_per_chunk: int = DEFAULT_FILES_PER_CHUNK,
) -> DataResult:
    dataset_root = Path(dataset_root)
    slots = plan_data(rec, limit_mb, files_per_chunk)
    schema = rec.data_schema
    names = schema.names
    files: list[Path] = []
    ep_idx, chunk_col, file_col, from_col, to_col = [], [], [], [], []
    offset = 0
    for slot, members in group_by_slot(slots):
        final = dataset_root / data_file(slot.chunk_index, slot.file_index)
        with atomic_path(final) as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                for i in members:
                    ep = rec.episodes[i]
                    table = read_episode_data(rec, i, names)  # timestamps rebased if offset (v21.py)
                    # Episodes may carry different schema metadata; the columns were validated equal.
                    table = table.replace_schema_metadata(schema.metadata)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    ep_idx.append(ep.index)
                    chunk_col.append(slot.chunk_index)
                    file_col.append(slot.file_index)
                    from_col.append(offset)
                    offset += table.num_rows
                    to_col.append(offset)
        files.append(final)
    removed = remove_unplanned(dataset_root / "data", files, "*.parquet")
    placements = pa.table({
        "episode_index": pa.array(ep_idx, pa.int64()),
        "data/chunk_index": pa.array(chunk_col, pa.int64()),
        "data/file_index": pa.array(file_col, pa.int64()),
        "dataset_from_index": pa.array(from_col, pa.int64()),
        "dataset_to_index": pa.array(to_col, pa.int64()),
    })
    return DataResult(
        placements=placements, files=files, rows=offset,
        bytes_written=sum(f.stat().st_size for f in files), removed_stale=removed,
    )


def remove_unplanned(folder: Path, keep: list[Path], pattern: str) -> list[Path]:
    """Delete files of an earlier conversion (e.g. with other size limits) that this one did not write."""
    keep_set = {p.resolve() for p in keep}
    removed = []
    if folder.exists():
        for p in sorted(folder.rglob(pattern)):
            if p.resolve() not in keep_set:
                p.unlink()
                removed.append(p)
    return removed

"""data/chunk-XXX/file-YYY.parquet: episodes rechunked into few large files (notes §2.5, §3.4).

Placement follows :mod:`rollover` over each episode's *uncompressed* parquet size (as LeRobot
measures it). Writing streams episodes through ``ParquetWriter``, gathering whole episodes into
row groups of about ``ROW_GROUP_BYTES``, so memory is bounded by one row group (or the largest
episode), not the recording. LeRobot needs no particular row groups (notes §2.5: its converter
writes one per file, its recorder one per episode). Numeric columns are written without
dictionary encoding: sensor values are nearly all distinct, so a dictionary was built and then
abandoned. Measured on 2000 episodes of 300 rows: one dictionary-encoded row group per episode
took 1.3 s of CPU to write (twice the reading) and 52 MB; gathered plain row groups take 0.3 s
and 33 MB. Column values, types and the source schema metadata are kept as they are: LeRobot
0.4.x round-trips through pandas and turns ``fixed_size_list<float>[n]`` into ``list<float>``;
native v3.0 recordings keep the fixed size list, and LeRobot's reader casts either to the
declared features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover
from dorobot_assets.lib.arrow import int64_array, release_freed_memory
from dorobot_assets.lib.v21 import Recording, read_episode_data
from dorobot_assets.lib.v30 import DEFAULT_FILES_PER_CHUNK, MB, data_file

# Arrow bytes of the whole episodes gathered into one row group: ~12k rows (40 episodes) of a
# 6-joint arm recording. Larger groups write no faster and hold more memory (+35 MiB peak at
# 4 MiB against +18 MiB here, for 2000 episodes: Arrow's allocator keeps freed pages).
ROW_GROUP_BYTES = 1 * MB


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth a dictionary: text (task strings, language), repeated a lot in a file."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return [f.name for f in schema if any(is_text(f.type) for is_text in text)]


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
            with pq.ParquetWriter(tmp, schema, use_dictionary=dictionary_columns(schema)) as writer:
                pending: list[pa.Table] = []
                pending_bytes = 0
                for i in members:
                    ep = rec.episodes[i]
                    table = read_episode_data(rec, i, names)  # timestamps rebased if offset (v21.py)
                    size = table.get_total_buffer_size()  # (nbytes walks the arrays: 25x slower)
                    if pending and pending_bytes + size > ROW_GROUP_BYTES:
                        _write_row_group(writer, pending)
                        pending, pending_bytes = [], 0
                    # Episodes may carry different schema metadata; the columns were validated equal.
                    pending.append(table.replace_schema_metadata(schema.metadata))
                    pending_bytes += size
                    ep_idx.append(ep.index)
                    chunk_col.append(slot.chunk_index)
                    file_col.append(slot.file_index)
                    from_col.append(offset)
                    offset += table.num_rows
                    to_col.append(offset)
                if pending:
                    _write_row_group(writer, pending)
        files.append(final)
    # Arrow's allocator keeps the pages of every freed episode table; give them back so the
    # steps after this one start from the process's own size, not from ours.
    release_freed_memory()
    removed = remove_unplanned(dataset_root / "data", files, "*.parquet")
    placements = pa.table({
        "episode_index": int64_array(ep_idx),
        "data/chunk_index": int64_array(chunk_col),
        "data/file_index": int64_array(file_col),
        "dataset_from_index": int64_array(from_col),
        "dataset_to_index": int64_array(to_col),
    })
    return DataResult(
        placements=placements, files=files, rows=offset,
        bytes_written=sum(f.stat().st_size for f in files), removed_stale=removed,
    )


def _write_row_group(writer: pq.ParquetWriter, episodes: list[pa.Table]) -> None:
    table = pa.concat_tables(episodes)  # no copy: each column becomes a chunked array
    writer.write_table(table, row_group_size=max(1, table.num_rows))


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

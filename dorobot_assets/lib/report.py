"""What the web UI shows about a converted dataset: the numbers every materialization records and
markdown previews of ``meta/episodes`` and ``meta/stats.json``.

Plain values only (numbers, strings, ``Path``); the assets turn the markdown into Dagster's
markdown metadata.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dorobot_assets.lib.fsutil import TMP_MARKER
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import STATS_PATH

PREVIEW_EPISODES = 5


def files_and_bytes(*paths: Path) -> tuple[int, int]:
    """Number and total size of the files at or below ``paths`` (temporary files left out)."""
    files = size = 0
    for path in paths:
        path = Path(path)
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            candidates = [Path(d) / n for d, _, names in os.walk(path) for n in names]
        else:
            continue
        for p in candidates:
            if not p.name.startswith(TMP_MARKER):
                files += 1
                size += p.stat().st_size
    return files, size


def artifact_summary(rec: Recording, *paths: Path) -> dict:
    """episodes, frames, recorded duration, files, bytes and the output path of one artifact."""
    files, size = files_and_bytes(*paths)
    return {
        "episodes": len(rec.episodes),
        "frames": rec.total_frames,
        "duration_s": round(rec.total_frames / rec.fps, 3) if rec.fps else 0.0,
        "files": files,
        "bytes": size,
        "path": Path(paths[0]),
    }


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _placement_groups(columns: list[str]) -> list[str]:
    """``videos/<key>`` and ``audio/<key>`` prefixes present in meta/episodes, in column order."""
    groups = []
    for name in columns:
        if name.endswith("/chunk_index") and name.startswith(("videos/", "audio/")):
            groups.append(name[: -len("/chunk_index")])
    return groups


def episodes_preview(dataset_root: Path, limit: int = PREVIEW_EPISODES) -> str:
    """A markdown table of the first ``limit`` rows of meta/episodes (where each episode landed)."""
    files = sorted((Path(dataset_root) / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        return "_meta/episodes has not been written yet._"
    parquet = pq.ParquetFile(files[0])
    names = parquet.schema_arrow.names
    groups = _placement_groups(names)
    wanted = [c for c in names if not c.startswith("stats/")]
    batch = next(parquet.iter_batches(batch_size=limit, columns=wanted), None)
    rows = batch.to_pylist() if batch is not None else []
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    header = ["episode", "length", "tasks", "data file", "rows"]
    for group in groups:
        header += [f"{group} file", f"{group} seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["episode_index"], row["length"], row.get("tasks") or [],
            f"chunk {row['data/chunk_index']} file {row['data/file_index']}",
            f"{row['dataset_from_index']}–{row['dataset_to_index']}",
        ]
        for group in groups:
            cells.append(f"chunk {row[group + '/chunk_index']} file {row[group + '/file_index']}")
            start, end = row.get(group + "/from_timestamp"), row.get(group + "/to_timestamp")
            cells.append(f"{start:.3f}–{end:.3f}" if start is not None and end is not None else "")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    lines.append(f"First {len(rows)} of {total} episodes.")
    return "\n".join(lines)


def _scalar(values, reduce) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return float(reduce(arr)) if arr.size else None


def stats_summary(dataset_root: Path) -> str:
    """A markdown table with one row per feature of meta/stats.json.

    A vector feature shows the lowest min and q01 and the highest q99 and max over its dimensions,
    and q50, mean and std averaged over them; the shape column says how many values that covers.
    Quantile columns stay empty when the stats were copied from v2.1 (which has none).
    """
    path = Path(dataset_root) / STATS_PATH
    if not path.is_file():
        return "_meta/stats.json has not been written yet._"
    stats = json.loads(path.read_text())
    header = ["feature", "shape", "count", "min", "q01", "q50", "q99", "max", "mean", "std"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for feature, values in stats.items():
        count = values.get("count", [None])
        cells = [
            f"`{feature}`", "×".join(str(n) for n in np.shape(values.get("mean", []))) or "1",
            count[0] if isinstance(count, list) and count else count,
            _scalar(values.get("min", []), np.min),
            _scalar(values.get("q01", []), np.min), _scalar(values.get("q50", []), np.mean),
            _scalar(values.get("q99", []), np.max),
            _scalar(values.get("max", []), np.max),
            _scalar(values.get("mean", []), np.mean), _scalar(values.get("std", []), np.mean),
        ]
        lines.append("| " + " | ".join("" if c is None or (isinstance(c, float) and math.isnan(c))
                                          else _cell(c) for c in cells) + " |")
    return "\n".join(lines)


def dataset_card(dataset_root: Path, limit: int = PREVIEW_EPISODES) -> str:
    """Both previews under headings: what the final ``info`` materialization shows."""
    return (
        f"### Episodes\n\n{episodes_preview(dataset_root, limit)}\n\n"
        f"### Statistics per feature\n\n{stats_summary(dataset_root)}\n"
    )

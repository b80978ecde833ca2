"""meta/info.json, written last: a v3.0 dataset without info.json is incomplete (notes §2.1)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from dorobot_assets.lib.fsutil import write_json_atomic
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import INFO_PATH, TASKS_PATH, build_info


def totals_on_disk(dataset_root: Path) -> dict[str, int]:
    """total_episodes/frames/tasks counted from the files written, not copied from the source."""
    root = Path(dataset_root)
    frames = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(root.glob("data/chunk-*/file-*.parquet")))
    episodes = sum(
        pq.ParquetFile(f).metadata.num_rows for f in sorted(root.glob("meta/episodes/chunk-*/file-*.parquet"))
    )
    # Mid-conversion (checks build a pending info) tasks.parquet may not be written yet.
    tasks_file = root / TASKS_PATH
    tasks = pq.ParquetFile(tasks_file).metadata.num_rows if tasks_file.exists() else 0
    return {"total_episodes": episodes, "total_frames": frames, "total_tasks": tasks}


def pending_info(
    rec: Recording,
    dataset_root: Path,
    settings: ConversionSettings,
    *,
    audio_features_info: dict[str, dict] | None = None,
    dropped_features: tuple[str, ...] = (),
    video_features_info: dict[str, dict] | None = None,
) -> dict:
    """The info.json write_info would write now: checks inspect it before it is published."""
    totals = totals_on_disk(dataset_root)
    return build_info(
        rec.info,
        **totals,
        data_file_size_mb=settings.data_file_size_mb,
        video_file_size_mb=settings.video_file_size_mb,
        audio_file_size_mb=settings.audio_file_size_mb,
        audio_features_info=audio_features_info,
        dropped_features=dropped_features,
        video_features_info=video_features_info,
    )


def write_info(rec: Recording, dataset_root: Path, settings: ConversionSettings, **placement_info) -> dict:
    """Publish meta/info.json; ``placement_info`` are pending_info's keyword arguments."""
    info = pending_info(rec, dataset_root, settings, **placement_info)
    write_json_atomic(Path(dataset_root) / INFO_PATH, info)
    return info

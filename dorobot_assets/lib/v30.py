"""LeRobot v3.0 constants, path templates and info.json (reference notes §2).

Every v3.0 path template and default size limit of the project is defined here and only here.
"""

from __future__ import annotations

import math
from pathlib import Path

CODEBASE_VERSION = "v3.0"
DOROBOT_DATASET_VERSION = "v1.1"

# LeRobot's "MB" size limits are MiB: sizes are divided by 1024**2 (reference notes §3.4/§3.5).
MB = 1024 * 1024
DEFAULT_FILES_PER_CHUNK = 1000  # files per chunk-XXX folder (LeRobot DEFAULT_CHUNK_SIZE)
DEFAULT_DATA_FILE_SIZE_MB = 100.0
DEFAULT_VIDEO_FILE_SIZE_MB = 200.0
DEFAULT_AUDIO_FILE_SIZE_MB = 100.0

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
AUDIO_PATH = "audio/{audio_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.wav"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
INFO_PATH = "meta/info.json"

# DoRobot metadata files carried into the v3.0 meta/ folder unchanged.
DOROBOT_META_FILES = ("meta/op_dataid.jsonl", "meta/common_record.json")

STAT_KEYS = ("min", "max", "mean", "std", "count")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)


def data_file(chunk_index: int, file_index: int) -> str:
    return DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)


def video_file(video_key: str, chunk_index: int, file_index: int) -> str:
    return VIDEO_PATH.format(video_key=video_key, chunk_index=chunk_index, file_index=file_index)


def audio_file(audio_key: str, chunk_index: int, file_index: int) -> str:
    return AUDIO_PATH.format(audio_key=audio_key, chunk_index=chunk_index, file_index=file_index)


def episodes_file(chunk_index: int, file_index: int) -> str:
    return EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index)


def size_value(mb: float) -> int | float:
    """info.json shows whole megabytes as integers (as LeRobot does), fractions as floats."""
    return int(mb) if float(mb).is_integer() else float(mb)


def int_fps(fps: float) -> int:
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return int(fps)


def build_info(
    source_info: dict,
    *,
    total_episodes: int,
    total_frames: int,
    total_tasks: int,
    data_file_size_mb: float,
    video_file_size_mb: float,
    audio_file_size_mb: float | None = None,
    audio_features_info: dict[str, dict] | None = None,
    dropped_features: tuple[str, ...] = (),
    video_features_info: dict[str, dict] | None = None,
) -> dict:
    """The v3.0 info.json from the v2.1 one (reference notes §2.1).

    Key order follows LeRobot v0.4.4 (v2.1 order, size keys appended) so a diff against an
    official conversion is readable. Deliberate differences from the official tool: the totals
    are recomputed from what was written (it copies them, stale or not), a single-range
    ``splits`` is recomputed to ``0:total_episodes``, and DoRobot recordings get
    ``dorobot_dataset_version`` ``v1.1`` and the audio keys.
    """
    fps = int_fps(float(source_info["fps"]))
    info: dict = {}
    for key, value in source_info.items():
        if key in ("total_chunks", "total_videos"):
            continue  # meaningless in v3.0 (the official converter deletes them too)
        info[key] = value
    info["codebase_version"] = CODEBASE_VERSION
    info["total_episodes"] = total_episodes
    info["total_frames"] = total_frames
    info["total_tasks"] = total_tasks
    info["fps"] = fps
    splits = info.get("splits")
    if isinstance(splits, dict) and list(splits) == ["train"]:
        info["splits"] = {"train": f"0:{total_episodes}"}
    info["data_path"] = DATA_PATH
    kept_videos = [
        k for k, f in source_info["features"].items() if f.get("dtype") == "video" and k not in dropped_features
    ]
    if source_info.get("video_path") is not None and kept_videos:
        info["video_path"] = VIDEO_PATH
    else:
        info["video_path"] = None
    if "dorobot_dataset_version" in info:
        info["dorobot_dataset_version"] = DOROBOT_DATASET_VERSION

    features: dict = {}
    for name, feat in source_info["features"].items():
        if name in dropped_features:
            continue
        feat = dict(feat)
        if feat.get("dtype") == "video":
            if "info" not in feat and "video_info" in feat:
                # v1.6-era ports (GR00T) call it video_info; v3.0 readers look for info.
                feat["info"] = feat.pop("video_info")
            if video_features_info and name in video_features_info:
                # re-encoded videos: the codec written, not the source's
                feat["info"] = {**feat.get("info", {}), **video_features_info[name]}
        elif feat.get("dtype") == "audio":
            if audio_features_info and name in audio_features_info:
                feat["info"] = {**feat.get("info", {}), **audio_features_info[name]}
        else:
            feat["fps"] = fps
        features[name] = feat
    info["features"] = features

    if audio_features_info:
        info["audio_path"] = AUDIO_PATH
    elif "audio_path" in info:
        info["audio_path"] = None
    info["data_files_size_in_mb"] = size_value(data_file_size_mb)
    info["video_files_size_in_mb"] = size_value(video_file_size_mb)
    if audio_features_info:
        info["audio_files_size_in_mb"] = size_value(
            audio_file_size_mb if audio_file_size_mb is not None else DEFAULT_AUDIO_FILE_SIZE_MB
        )
    return info


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would leave ``root`` (``..``, absolute paths)."""
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {relative!r} escapes {root}")
    return target

"""videos/{video_key}/chunk-XXX/file-YYY.mp4: per-camera concatenation (issue: videos)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording


@dataclass
class VideoResult:
    placements: pa.Table  # episode_index + videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    frames: int = 0
    dropped_cameras: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_videos(rec: Recording, dataset_root: Path, settings: ConversionSettings, encoder=None) -> VideoResult:
    if rec.video_keys:
        raise NotImplementedError("video concatenation lands with the videos issue")
    return VideoResult(placements=pa.table({"episode_index": pa.array([e.index for e in rec.episodes], pa.int64())}))

"""Conversion settings shared by the CLI, the Dagster resources and the library."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.v30 import (
    DEFAULT_AUDIO_FILE_SIZE_MB,
    DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_FILES_PER_CHUNK,
    DEFAULT_VIDEO_FILE_SIZE_MB,
)

STATS_MODES = ("recompute", "copy")
MISSING_CAMERA_MODES = ("error", "drop")
DEFAULT_VIDEO_WORKERS = 2  # cameras converted at once within the videos step (the machine has 2 cores)
# threads decoding frames for camera statistics (in helper processes; 1: in the step's process)
DEFAULT_STATS_WORKERS = os.cpu_count() or 1


@dataclass(frozen=True)
class ConversionSettings:
    data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB
    video_file_size_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB
    audio_file_size_mb: float = DEFAULT_AUDIO_FILE_SIZE_MB
    files_per_chunk: int = DEFAULT_FILES_PER_CHUNK
    # recompute: per-episode stats with quantiles from the data; copy: v2.1 stats as they are
    stats: str = "recompute"
    # a camera declared in info.json with no mp4 at all: refuse (error) or leave it out (drop)
    missing_cameras: str = "error"
    # videos: transcode every episode through the video encoder instead of stream copy
    reencode: bool = False
    video_workers: int = DEFAULT_VIDEO_WORKERS
    # recompute: camera frames decoded and counted at once (threads in helper processes)
    stats_workers: int = DEFAULT_STATS_WORKERS

    def __post_init__(self):
        for name in ("data_file_size_mb", "video_file_size_mb", "audio_file_size_mb"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.files_per_chunk < 1:
            raise ConfigError(f"files_per_chunk must be >= 1, got {self.files_per_chunk}")
        if self.stats not in STATS_MODES:
            raise ConfigError(f"stats must be one of {STATS_MODES}, got {self.stats!r}")
        if self.missing_cameras not in MISSING_CAMERA_MODES:
            raise ConfigError(f"missing_cameras must be one of {MISSING_CAMERA_MODES}, got {self.missing_cameras!r}")
        if self.video_workers < 1:
            raise ConfigError(f"video_workers must be >= 1, got {self.video_workers}")
        if self.stats_workers < 1:
            raise ConfigError(f"stats_workers must be >= 1, got {self.stats_workers}")

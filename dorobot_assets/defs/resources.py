"""Resources: where recordings and datasets live, and how to convert them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from dorobot_assets.lib import encoders
from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.keys import RecordingRegistry, resolve_recording
from dorobot_assets.lib.settings import DEFAULT_STATS_WORKERS, DEFAULT_VIDEO_WORKERS, ConversionSettings
from dorobot_assets.lib.v30 import (
    DEFAULT_AUDIO_FILE_SIZE_MB,
    DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_FILES_PER_CHUNK,
    DEFAULT_VIDEO_FILE_SIZE_MB,
)

WORK_SUBDIR = ".dorobot_work"  # default work root inside DOROBOT_OUTPUT


def _env_path(value: Optional[str], env: str) -> Optional[Path]:
    value = value or os.environ.get(env)
    return Path(value).expanduser().resolve() if value else None


class StorageResource(dg.ConfigurableResource):
    """Folders: ``DOROBOT_INBOX`` (one sub-folder per v2.1 recording), ``DOROBOT_OUTPUT`` (v3.0
    datasets land in ``<output>/<partition key>``) and ``DOROBOT_WORK`` (manifests, caches;
    default ``<output>/.dorobot_work``). Unset fields fall back to those environment variables
    when a run starts. ``recording_dir``/``dataset_dir`` pin one source and one destination
    (used by ``dorobot-assets convert``)."""

    inbox: Optional[str] = Field(default=None, description="v2.1 recordings; default $DOROBOT_INBOX")
    output: Optional[str] = Field(default=None, description="v3.0 datasets; default $DOROBOT_OUTPUT")
    work: Optional[str] = Field(default=None, description="manifests and caches; default $DOROBOT_WORK")
    recording_dir: Optional[str] = Field(default=None, description="fixed source folder (single-recording runs)")
    dataset_dir: Optional[str] = Field(default=None, description="fixed destination folder (single-recording runs)")

    def inbox_root(self) -> Optional[Path]:
        return _env_path(self.inbox, "DOROBOT_INBOX")

    def output_root(self) -> Path:
        root = _env_path(self.output, "DOROBOT_OUTPUT")
        if root is None:
            raise ConfigError("no output folder: set DOROBOT_OUTPUT (or the storage resource's output)")
        return root

    def work_root(self) -> Path:
        root = _env_path(self.work, "DOROBOT_WORK")
        if root is not None:
            return root
        if self.dataset_dir and not (self.output or os.environ.get("DOROBOT_OUTPUT")):
            return Path(self.dataset_dir).resolve().parent / WORK_SUBDIR
        return self.output_root() / WORK_SUBDIR

    def registry(self) -> RecordingRegistry:
        return RecordingRegistry(self.work_root())

    def source_dir(self, key: str) -> Path:
        if self.recording_dir:
            return Path(self.recording_dir).resolve()
        return resolve_recording(key, self.inbox_root(), self.registry())

    def dataset_root(self, key: str) -> Path:
        if self.dataset_dir:
            return Path(self.dataset_dir).resolve()
        return self.output_root() / key

    def work_dir(self, key: str) -> Path:
        return self.work_root() / key


class ConversionResource(dg.ConfigurableResource):
    """Size limits (MB, fractions allowed), files per chunk folder, stats mode, missing cameras."""

    data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB
    video_file_size_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB
    audio_file_size_mb: float = DEFAULT_AUDIO_FILE_SIZE_MB
    files_per_chunk: int = DEFAULT_FILES_PER_CHUNK
    stats: Optional[str] = Field(
        default=None, description="recompute (quantiles from the data) or copy (v2.1 stats); default $DOROBOT_STATS, else recompute"
    )
    missing_cameras: str = Field(default="error", description="a declared camera without mp4s: error or drop")
    reencode: bool = Field(default=False, description="transcode every video through the video_encoder resource instead of stream copy")
    video_workers: int = Field(default=DEFAULT_VIDEO_WORKERS, description="cameras converted at once in the videos step")
    stats_workers: int = Field(
        default=DEFAULT_STATS_WORKERS,
        description="decoding threads for camera statistics in recompute mode (1: decode in the step's own process)",
    )

    def settings(self) -> ConversionSettings:
        return ConversionSettings(
            data_file_size_mb=self.data_file_size_mb,
            video_file_size_mb=self.video_file_size_mb,
            audio_file_size_mb=self.audio_file_size_mb,
            files_per_chunk=self.files_per_chunk,
            stats=self.stats or os.environ.get("DOROBOT_STATS") or ConversionSettings.stats,
            missing_cameras=self.missing_cameras,
            reencode=self.reencode,
            video_workers=self.video_workers,
            stats_workers=self.stats_workers,
        )


class VideoEncoderResource(dg.ConfigurableResource):
    """The encoder used when ``reencode`` is set (lib/encoders.py): ``pyav`` (software, in-process),
    ``ffmpeg`` (an ffmpeg executable) or ``npu`` (Ascend ``h264_ascend`` through Ascend's ffmpeg).
    The videos asset runs in the concurrency pool ``video_encoder``; cap it across runs with
    ``dagster instance concurrency set video_encoder N``."""

    backend: str = Field(default=encoders.DEFAULT_BACKEND, description="pyav | ffmpeg | npu")
    codec: str = Field(default=encoders.DEFAULT_CODEC, description="pyav/ffmpeg: libsvtav1 | libx264")
    crf: int = encoders.DEFAULT_CRF
    gop: int = encoders.DEFAULT_GOP
    preset: Optional[str] = Field(default=None, description="encoder preset; the encoder's default when unset")
    ffmpeg: Optional[str] = Field(default=None, description="ffmpeg executable (path or name); default `ffmpeg` on PATH")
    npu_device_id: int = encoders.DEFAULT_NPU_DEVICE
    npu_channels: int = Field(default=encoders.DEFAULT_NPU_CHANNELS, description="NPU channels used at once")
    npu_retries: int = encoders.DEFAULT_NPU_RETRIES
    npu_backoff_s: float = encoders.DEFAULT_NPU_BACKOFF_S
    npu_fallback_to_libx264: bool = Field(default=False, description="encode with libx264 when the NPU is missing or busy")

    @classmethod
    def from_config(cls, config: encoders.EncoderConfig) -> "VideoEncoderResource":
        return cls(**dataclasses.asdict(config))

    def config(self) -> encoders.EncoderConfig:
        return encoders.EncoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(encoders.EncoderConfig)})

    def encoder(self) -> encoders.VideoEncoder:
        return encoders.build_encoder(self.config())

"""Shared fixtures. Tests make their own recordings with lib/synthetic.py; tests that use the real
recordings in ../shared/datasets skip with a reason when that folder is absent (a user's clone)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dorobot_assets.lib import synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("DOROBOT_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"real recording {name!r} not available: {SHARED_DATASETS} is absent (it ships only beside CI's clone)")
    return path


@pytest.fixture
def golden_pair() -> Path:
    return shared_dataset("g1_subset4_golden_pair")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the developer's DOROBOT_* folders or instance."""
    for var in ("DOROBOT_INBOX", "DOROBOT_OUTPUT", "DOROBOT_WORK"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))


@pytest.fixture(scope="session")
def _sample_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("samples")


@pytest.fixture
def make_sample(_sample_cache, tmp_path):
    """``make_sample(name, **make_recording_kwargs)`` -> a fresh copy of a cached synthetic recording.

    Recordings with the same name and arguments are encoded once per session, then copied, so a
    test may modify its copy freely.
    """

    def make(name: str = "rec", **kwargs) -> Path:
        key = f"{name}-{abs(hash(repr(sorted(kwargs.items())))) % 10**10}"
        cached = _sample_cache / key
        if not cached.exists():
            synthetic.make_recording(_sample_cache / (key + ".part"), **kwargs)
            (_sample_cache / (key + ".part")).rename(cached)
        dest = tmp_path / "inbox" / name
        shutil.copytree(cached, dest)
        return dest

    return make


@dataclass(frozen=True)
class ConvertedSample:
    source: Path  # the synthetic v2.1 recording
    dataset: Path  # its v3.0 conversion
    work: Path  # the conversion's manifests and caches


@pytest.fixture(scope="session")
def converted_sample(tmp_path_factory) -> ConvertedSample:
    """One synthetic recording (4 episodes, an H.264 camera, a microphone) converted once per
    session by our own pipeline, with limits that put two episodes in each data, video and audio
    file. Read-only: copy it before breaking it."""
    from dorobot_assets.defs.convert import convert_recording
    from dorobot_assets.lib.settings import ConversionSettings

    base = tmp_path_factory.mktemp("converted_sample")
    source = synthetic.make_recording(
        base / "recording", lengths=[24, 20, 22, 18],
        cameras=[synthetic.CameraSpec("observation.images.top", "h264")],
        mics=[synthetic.MicSpec("observation.audio.left", 16000)],
    )
    settings = ConversionSettings(data_file_size_mb=0.005, video_file_size_mb=0.025, audio_file_size_mb=0.05)
    run = convert_recording(source, base / "dataset", settings, work=base / "work")
    assert run.success, run.error
    return ConvertedSample(source=source, dataset=base / "dataset", work=base / "work")


def file_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }

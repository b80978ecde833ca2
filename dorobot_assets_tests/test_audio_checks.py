"""The two audio warning checks, on the view a running conversion gives them (the pending
episodes table, no meta/episodes yet). The finished-dataset view is covered in test_audio_convert."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dorobot_assets.lib import audio as audio_lib
from dorobot_assets.lib.audio_checks import audio_duration_matches_episode, audio_wav_present
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.synthetic import MicSpec
from dorobot_assets.lib.v21 import read_recording
from dorobot_assets.lib.validate import WARNING, DatasetView, registered_checks, run_check

STEADY = "observation.audio.steady"
DRIFT = "observation.audio.drift"  # 0.05 s too long per episode: more than a 30 fps frame period


@pytest.fixture
def mid_conversion(make_sample, tmp_path):
    src = make_sample(
        "checks", lengths=[30, 24, 36],
        mics=[MicSpec(STEADY, 16000, missing_episodes=[0, 2]), MicSpec(DRIFT, 8000, drift_s=0.05)],
    )
    return pending_view(src, tmp_path / "out")


def pending_view(src, root) -> DatasetView:
    """What a check sees right after the audio asset: its placements joined with the lengths."""
    rec = read_recording(src)
    placements = audio_lib.write_audio(rec, root, ConversionSettings()).placements
    pending = placements.append_column("length", pa.array([e.length for e in rec.episodes], pa.int64()))
    return DatasetView(root=root, info=rec.info, source=src, pending_episodes=pending)


def test_duration_check_lists_each_drifting_episode_with_both_durations(mid_conversion):
    result = audio_duration_matches_episode(mid_conversion)
    assert not result.passed
    assert result.counts == {"compared": 4, "mismatched": 3}
    assert result.offending == [
        {"audio_key": DRIFT, "episode_index": 0, "audio_seconds": 1.05, "episode_seconds": 1.0},
        {"audio_key": DRIFT, "episode_index": 1, "audio_seconds": 0.85, "episode_seconds": 0.8},
        {"audio_key": DRIFT, "episode_index": 2, "audio_seconds": 1.25, "episode_seconds": 1.2},
    ]
    assert result.description == (
        "audio duration differs from the episode by more than one frame period (0.0333 s): "
        f"{DRIFT}: episode 0 (1.050 s vs 1.000 s), episode 1 (0.850 s vs 0.800 s), episode 2 (1.250 s vs 1.200 s)"
    )


def test_missing_check_lists_every_missing_episode(mid_conversion):
    result = audio_wav_present(mid_conversion)
    assert not result.passed
    assert result.description == f"{STEADY}: no WAV for episodes 0, 2"
    assert result.offending == [
        {"audio_key": STEADY, "episode_index": 0}, {"audio_key": STEADY, "episode_index": 2},
    ]


def test_drift_within_one_frame_period_passes(make_sample, tmp_path):
    src = make_sample("small_drift", lengths=[30, 24], mics=[MicSpec(STEADY, 16000, drift_s=0.03)])
    view = pending_view(src, tmp_path / "out")
    checked = audio_duration_matches_episode(view)
    assert checked.passed and checked.counts == {"compared": 2, "mismatched": 0}
    present = audio_wav_present(view)
    assert present.passed and present.description == f"all 2 episodes have audio for every microphone ({STEADY})"


def test_both_checks_are_registered_as_audio_warnings(mid_conversion):
    specs = {spec.name: spec for spec in registered_checks()}
    for name in ("audio_wav_present", "audio_duration_matches_episode"):
        assert specs[name].asset == "audio" and specs[name].severity == WARNING
        result = run_check(name, mid_conversion)
        assert (result.name, result.severity, result.asset, result.passed) == (name, WARNING, "audio", False)

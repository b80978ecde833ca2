"""End to end through the Dagster asset graph: two microphones, a missing WAV, tiny audio files."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dorobot_assets import cli
from dorobot_assets.defs import checks
from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib import synthetic
from dorobot_assets.lib.audio import EpisodeAudioMissing, load_episode_audio
from dorobot_assets.lib.audio_checks import audio_duration_matches_episode, audio_wav_present
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.validate import DatasetView
from dorobot_assets_tests.conftest import file_hashes

MIC16 = "observation.audio.desk"  # 16 kHz, no WAV for episode 2
MIC48 = "observation.audio.head"  # 48 kHz
LENGTHS = [30, 24, 36, 27, 33]  # frames at 30 fps: 1.0, 0.8, 1.2, 0.9, 1.1 s


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The issue's acceptance recording, converted once through the asset graph and its checks."""
    base = tmp_path_factory.mktemp("audio_convert")
    src = synthetic.make_recording(
        base / "two_mics", lengths=LENGTHS,
        mics=[synthetic.MicSpec(MIC16, 16000, missing_episodes=[2]), synthetic.MicSpec(MIC48, 48000)],
    )
    before = file_hashes(src)
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("DOROBOT_INBOX", "DOROBOT_OUTPUT", "DOROBOT_WORK"):
            mp.delenv(var, raising=False)
        run = convert_recording(
            src, out, ConversionSettings(stats="copy", audio_file_size_mb=0.06), work=base / "work"
        )
    return {"src": src, "out": out, "run": run, "source_hashes_before": before}


def source_samples(src, key, episode):
    return sf.read(str(src / f"audio/chunk-000/{key}/episode_{episode:06d}.wav"), dtype="int16")


def test_every_present_episode_reads_back_sample_exact(converted):
    assert converted["run"].success, converted["run"].error
    out, src = converted["out"], converted["src"]
    for key, rate in ((MIC16, 16000), (MIC48, 48000)):
        for episode in range(len(LENGTHS)):
            if key == MIC16 and episode == 2:
                continue
            samples, sample_rate = load_episode_audio(out, episode, key)
            expected, expected_rate = source_samples(src, key, episode)
            assert sample_rate == expected_rate == rate
            assert samples.dtype == np.int16
            assert len(samples) == rate * LENGTHS[episode] // 30
            np.testing.assert_array_equal(samples, expected)


def test_missing_wav_has_null_columns_and_no_samples(converted):
    out = converted["out"]
    table = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet")
    rows = table.to_pydict()
    assert rows[f"audio/{MIC16}/file_index"] == [0, 0, None, 1, 2]
    assert rows[f"audio/{MIC16}/chunk_index"] == [0, 0, None, 0, 0]
    assert rows[f"audio/{MIC16}/from_timestamp"] == [0.0, 1.0, None, 0.0, 0.0]
    assert rows[f"audio/{MIC16}/to_timestamp"] == [1.0, 1.8, None, 0.9, 1.1]
    # 48 kHz episodes are ~0.1 MB each: every one rolls into its own file.
    assert rows[f"audio/{MIC48}/file_index"] == [0, 1, 2, 3, 4]
    with pytest.raises(EpisodeAudioMissing, match=f"episode 2 has no {MIC16} audio"):
        load_episode_audio(out, 2, MIC16)
    names = table.column_names
    audio_columns = [n for n in names if n.startswith("audio/")]
    assert audio_columns == [
        f"audio/{k}/{c}" for k in (MIC16, MIC48) for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
    ]
    assert names.index(audio_columns[0]) == names.index("dataset_to_index") + 1
    assert sorted(p.relative_to(out).as_posix() for p in (out / "audio").rglob("*.wav")) == [
        f"audio/{MIC16}/chunk-000/file-00{i}.wav" for i in range(3)
    ] + [f"audio/{MIC48}/chunk-000/file-00{i}.wav" for i in range(5)]


def test_info_json_describes_the_audio(converted):
    info = json.loads((converted["out"] / "meta/info.json").read_text())
    assert info["audio_path"] == "audio/{audio_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.wav"
    assert info["audio_files_size_in_mb"] == 0.06
    assert info["dorobot_dataset_version"] == "v1.1"
    assert info["features"][MIC16]["info"] == {"audio.sample_rate": 16000, "audio.channels": 1, "audio.subtype": "PCM_16"}
    assert info["features"][MIC48]["info"] == {"audio.sample_rate": 48000, "audio.channels": 1, "audio.subtype": "PCM_16"}


def test_warning_check_names_the_missing_episode(converted):
    out = converted["out"]
    view = DatasetView(root=out, info=json.loads((out / "meta/info.json").read_text()))
    result = audio_wav_present(view)
    assert not result.passed
    assert result.description == f"{MIC16}: no WAV for episode 2"
    assert result.offending == [{"audio_key": MIC16, "episode_index": 2}]
    assert result.counts == {"episodes": 5, "microphones": 2, "missing": 1}
    durations = audio_duration_matches_episode(view)
    assert durations.passed and durations.counts == {"compared": 9, "mismatched": 0}
    # The same checks ran in the audio asset's validation check during the conversion: it fails
    # as a warning, which does not block.
    (evaluation,) = [ev for ev in converted["run"].result.get_asset_check_evaluations()
                     if ev.asset_key == dg.AssetKey("audio")]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == f"check audio_wav_present failed: {MIC16}: no WAV for episode 2"
    outcomes = checks.lib_check_results(evaluation)
    assert not outcomes["audio_wav_present"]["passed"] and outcomes["audio_wav_present"]["severity"] == "warning"
    assert outcomes["audio_duration_matches_episode"]["passed"]
    assert converted["run"].success


def test_source_recording_is_untouched_and_dorobot_meta_is_carried_over(converted):
    src, out = converted["src"], converted["out"]
    assert file_hashes(src) == converted["source_hashes_before"]
    for name in ("op_dataid.jsonl", "common_record.json"):
        assert (out / "meta" / name).read_bytes() == (src / "meta" / name).read_bytes()
    dataid = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet", columns=["dataid"]).column(0)
    assert dataid.to_pylist() == ["100", "100", "101", "101", "102"]


def test_recording_without_audio_converts_without_audio_and_says_so(make_sample, tmp_path):
    # A DoRobot recording whose info.json has audio_path null and no microphones.
    src = make_sample("silent", lengths=[20, 25], dorobot=True)
    out = tmp_path / "out"
    run = convert_recording(src, out, ConversionSettings(stats="copy"), work=tmp_path / "work")
    assert run.success, run.error
    assert not (out / "audio").exists()
    columns = pq.read_schema(out / "meta/episodes/chunk-000/file-000.parquet").names
    assert not [c for c in columns if c.startswith("audio/")]
    info = json.loads((out / "meta/info.json").read_text())
    assert info["audio_path"] is None and "audio_files_size_in_mb" not in info
    metadata = run.result.asset_materializations_for_node("audio")[0].metadata
    assert metadata["note"].value == "recording has no audio"
    assert metadata["files"].value == 0 and metadata["microphones"].value == 0
    view = DatasetView(root=out, info=info)
    for fn in (audio_wav_present, audio_duration_matches_episode):
        result = fn(view)
        assert result.passed and not result.applicable and result.description == "dataset has no audio"


def test_unreadable_wav_stops_the_whole_conversion_before_any_output(make_sample, tmp_path):
    src = make_sample("broken", lengths=[20, 25], mics=[synthetic.MicSpec(MIC16, 16000)])
    broken = src / f"audio/chunk-000/{MIC16}/episode_000001.wav"
    broken.write_bytes(b"RIFF????WAVEjunk")
    out = tmp_path / "out"
    run = convert_recording(src, out, ConversionSettings(stats="copy"), work=tmp_path / "work")
    assert not run.success
    assert str(broken) in run.error and "not a readable WAV file" in run.error and "[audio_unreadable]" in run.error
    # Every asset reads the recording first, so none of them wrote anything.
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_command_line_honours_the_audio_file_size(make_sample, tmp_path, capsys):
    src = make_sample("cli", lengths=[30, 30, 30], mics=[synthetic.MicSpec(MIC16, 16000)])
    out = tmp_path / "out"
    code = cli.main(["convert", str(src), str(out), "--stats", "copy", "--audio-file-size-mb", "0.07",
                     "--work", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err
    # 32000 bytes per episode: two fit under 0.07 MB (73400 bytes), the third starts file 1.
    rows = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert rows[f"audio/{MIC16}/file_index"] == [0, 0, 1]
    assert rows[f"audio/{MIC16}/from_timestamp"] == [0.0, 1.0, 0.0]
    assert json.loads((out / "meta/info.json").read_text())["audio_files_size_in_mb"] == 0.07
    for episode in range(3):
        samples, _ = load_episode_audio(out, episode, MIC16)
        np.testing.assert_array_equal(samples, source_samples(src, MIC16, episode)[0])

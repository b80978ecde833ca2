"""lib/audio.py without Dagster: placement, format changes, sample-exact spans, bad WAVs, byte-level copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dorobot_assets.lib import audio as audio_lib
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.synthetic import MicSpec
from dorobot_assets.lib.v21 import read_recording

MIC = "observation.audio.left"
LENGTHS = [30, 24, 36, 27, 33, 21]  # frames at 30 fps: 1.0, 0.8, 1.2, 0.9, 1.1, 0.7 s


def wav_of(rec, episode: int, key: str = MIC):
    return rec.episodes[episode].audio_paths[key]


def rewrite_wav(path, sample_rate: int, subtype: str = "PCM_16", channels: int = 1, seconds: float = 1.0):
    """Replace a source WAV (in the test's own copy) with distinct, known samples."""
    n = int(round(seconds * sample_rate))
    ramp = (np.arange(n * channels, dtype=np.int64) * 37 % 60001 - 30000).reshape(n, channels)
    if subtype == "PCM_24":
        samples = (ramp * 256).astype(np.int32)  # use the low byte of 24-bit too
    else:
        samples = ramp.astype(np.int16)
    sf.write(str(path), samples if channels > 1 else samples[:, 0], sample_rate, subtype=subtype)
    return samples


def read_span(path, begin: float, end: float, dtype: str):
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        f.seek(round(begin * sr))
        return f.read(round(end * sr) - round(begin * sr), dtype=dtype, always_2d=True), sr


def test_format_changes_start_new_files_and_every_episode_is_sample_exact(make_sample, tmp_path):
    src = make_sample("fmt", lengths=LENGTHS, mics=[MicSpec(MIC, 16000)])
    rec = read_recording(src)
    rewrite_wav(wav_of(rec, 2), 22050, seconds=1.2)
    rewrite_wav(wav_of(rec, 3), 16000, subtype="PCM_24", seconds=0.9)
    rewrite_wav(wav_of(rec, 4), 16000, channels=2, seconds=1.1)
    rec = read_recording(src)
    out = tmp_path / "out"

    # A limit no episode reaches: only the format changes split files. Small blocks cross
    # episode boundaries inside the copy loop.
    result = audio_lib.write_audio(rec, out, ConversionSettings(audio_file_size_mb=50), block_frames=1000)

    t = result.placements.to_pydict()
    assert t[f"audio/{MIC}/file_index"] == [0, 0, 1, 2, 3, 4]
    assert t[f"audio/{MIC}/chunk_index"] == [0] * 6
    assert t[f"audio/{MIC}/from_timestamp"] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert t[f"audio/{MIC}/to_timestamp"] == [1.0, 1.8, 1.2, 0.9, 1.1, 0.7]
    headers = [sf.info(str(f)) for f in result.files]
    assert [(h.samplerate, h.channels, h.subtype) for h in headers] == [
        (16000, 1, "PCM_16"), (22050, 1, "PCM_16"), (16000, 1, "PCM_24"), (16000, 2, "PCM_16"), (16000, 1, "PCM_16"),
    ]
    assert [h.frames for h in headers] == [28800, 26460, 14400, 17600, 11200]
    for e in range(6):
        dtype = "int32" if e == 3 else "int16"
        source, source_rate = sf.read(str(wav_of(rec, e)), dtype=dtype, always_2d=True)
        path = out / f"audio/{MIC}/chunk-000/file-{t[f'audio/{MIC}/file_index'][e]:03d}.wav"
        got, rate = read_span(path, t[f"audio/{MIC}/from_timestamp"][e], t[f"audio/{MIC}/to_timestamp"][e], dtype)
        assert rate == source_rate
        np.testing.assert_array_equal(got, source)
    # info.json shows the first episode's format and says why the files split.
    assert result.features_info == {
        MIC: {"audio.sample_rate": 16000, "audio.channels": 1, "audio.subtype": "PCM_16"}
    }
    assert any("changes format between episodes" in note and "22050 Hz/1 ch/PCM_16" in note for note in result.notes)


def test_size_rollover_skips_missing_episodes_and_nulls_their_columns(make_sample, tmp_path):
    src = make_sample("roll", lengths=LENGTHS, mics=[MicSpec(MIC, 16000, missing_episodes=[2])])
    rec = read_recording(src)
    # 16 kHz PCM_16 is 32000 bytes a second: episodes of 0.031, 0.024, (missing), 0.027, 0.034, 0.021 MB.
    result = audio_lib.write_audio(rec, tmp_path / "out", ConversionSettings(audio_file_size_mb=0.06))

    t = result.placements.to_pydict()
    assert t["episode_index"] == [0, 1, 2, 3, 4, 5]
    assert t[f"audio/{MIC}/file_index"] == [0, 0, None, 1, 2, 2]
    assert t[f"audio/{MIC}/from_timestamp"] == [0.0, 1.0, None, 0.0, 0.0, 1.1]
    assert t[f"audio/{MIC}/to_timestamp"] == [1.0, 1.8, None, 0.9, 1.1, 1.8]
    assert result.missing == [(MIC, 2)]
    assert any("no WAV for episodes [2]" in note for note in result.notes)
    assert [f.name for f in result.files] == ["file-000.wav", "file-001.wav", "file-002.wav"]
    assert result.bytes_written == sum(f.stat().st_size for f in result.files)
    schema = result.placements.schema
    assert [str(schema.field(f"audio/{MIC}/{c}").type) for c in audio_lib.PLACEMENT_FIELDS] == [
        "int64", "int64", "double", "double"
    ]


def test_rerun_with_other_limit_removes_files_it_no_longer_plans(make_sample, tmp_path):
    src = make_sample("stale", lengths=LENGTHS, mics=[MicSpec(MIC, 16000)])
    rec = read_recording(src)
    out = tmp_path / "out"
    first = audio_lib.write_audio(rec, out, ConversionSettings(audio_file_size_mb=0.03))
    assert len(first.files) == 6
    second = audio_lib.write_audio(rec, out, ConversionSettings(audio_file_size_mb=100))
    assert sorted(p.name for p in (out / "audio" / MIC / "chunk-000").iterdir()) == ["file-000.wav"]
    assert second.placements.column(f"audio/{MIC}/file_index").to_pylist() == [0] * 6
    assert sf.info(str(second.files[0])).frames == 16000 * sum(LENGTHS) // 30


def test_unreadable_wav_is_a_typed_error_naming_the_file_before_any_write(make_sample, tmp_path):
    src = make_sample("bad", lengths=LENGTHS[:3], mics=[MicSpec("observation.audio.a", 16000), MicSpec("observation.audio.b", 16000)])
    rec = read_recording(src)
    broken = rec.episodes[1].audio_paths["observation.audio.b"]
    broken.write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all")
    out = tmp_path / "out"
    with pytest.raises(RecordingError) as err:
        audio_lib.write_audio(rec, out, ConversionSettings())
    assert err.value.code == "audio_unreadable"
    assert err.value.path == broken
    assert str(broken) in str(err.value) and "not a readable WAV file" in str(err.value)
    # Microphone "a" sorts first and is fine, yet nothing of it was written.
    assert not out.exists()


def test_lossy_sample_format_is_refused(make_sample, tmp_path):
    src = make_sample("ulaw", lengths=LENGTHS[:2], mics=[MicSpec(MIC, 8000)])
    rec = read_recording(src)
    path = wav_of(rec, 0)
    sf.write(str(path), np.zeros(8000, np.int16), 8000, subtype="ULAW")
    with pytest.raises(RecordingError) as err:
        audio_lib.write_audio(rec, tmp_path / "out", ConversionSettings())
    assert err.value.code == "audio_unsupported" and err.value.path == path
    assert "sample format ULAW" in str(err.value)


def test_recording_without_audio_writes_no_files_and_no_columns(make_sample, tmp_path):
    src = make_sample("plain", lengths=LENGTHS[:3])
    out = tmp_path / "out"
    result = audio_lib.write_audio(read_recording(src), out, ConversionSettings())
    assert result.placements.column_names == ["episode_index"]
    assert result.files == [] and result.features_info == {} and result.missing == []
    assert not (out / "audio").exists()


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_sample_offsets_survive_the_round_trip_through_seconds(rate):
    rng = np.random.default_rng(rate)
    # Offsets up to a month of continuous audio in one file, plus awkward small ones.
    starts = [0, 1, rate - 1, rate + 1, *rng.integers(0, rate * 3600 * 24 * 31, 2000).tolist()]
    for start in starts:
        count = int(rng.integers(0, rate * 60))
        begin, end = audio_lib.sample_span_seconds(start, count, rate)
        assert round(begin * rate) == start
        assert round(end * rate) == start + count


# ----------------------------------------------------------------------------- byte-level copy


def data_chunk(path) -> bytes:
    """The bytes of a WAV file's data chunk, found by walking its RIFF chunks."""
    raw = path.read_bytes()
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk_id == b"data":
            return raw[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise AssertionError(f"{path}: no data chunk")


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("subtype, dtype", [("PCM_16", "int16"), ("FLOAT", "float32")])
def test_byte_copy_is_sample_exact_across_a_rollover(make_sample, tmp_path, rate, subtype, dtype):
    src = make_sample("bytes", lengths=LENGTHS, mics=[MicSpec(MIC, rate)])
    rec = read_recording(src)
    if subtype == "FLOAT":
        for e in range(len(LENGTHS)):
            samples, _ = sf.read(str(wav_of(rec, e)), dtype="float32")
            sf.write(str(wav_of(rec, e)), samples * np.float32(0.5), rate, subtype="FLOAT")
        rec = read_recording(src)
    frame_bytes = 2 if subtype == "PCM_16" else 4
    seconds = [n / 30 for n in LENGTHS]
    limit_mb = 2.5 * rate * frame_bytes / audio_lib.MB  # ~2.5 s per file: episodes 0+1, 2+3, 4+5
    result = audio_lib.write_audio(rec, tmp_path / "out", ConversionSettings(audio_file_size_mb=limit_mb))

    assert not any("libsndfile" in note for note in result.notes)
    t = result.placements.to_pydict()
    assert t[f"audio/{MIC}/file_index"] == [0, 0, 1, 1, 2, 2]
    expected_from = [0.0, seconds[0], 0.0, seconds[2], 0.0, seconds[4]]
    assert t[f"audio/{MIC}/from_timestamp"] == pytest.approx(expected_from, abs=0)
    for f, members in zip(result.files, ([0, 1], [2, 3], [4, 5])):
        info = sf.info(str(f))
        assert (info.samplerate, info.channels, info.subtype) == (rate, 1, subtype)
        assert info.frames == sum(rate * LENGTHS[e] // 30 for e in members)
        # The data chunk is the members' data chunks, byte for byte.
        assert data_chunk(f) == b"".join(data_chunk(wav_of(rec, e)) for e in members)
    for e in range(len(LENGTHS)):
        source, _ = sf.read(str(wav_of(rec, e)), dtype=dtype, always_2d=True)
        path = result.files[t[f"audio/{MIC}/file_index"][e]]
        got, got_rate = read_span(path, t[f"audio/{MIC}/from_timestamp"][e], t[f"audio/{MIC}/to_timestamp"][e], dtype)
        assert got_rate == rate and got.dtype == np.dtype(dtype)
        assert len(got) == rate * LENGTHS[e] // 30
        np.testing.assert_array_equal(got, source)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
def test_our_header_parser_reads_what_libsndfile_reads(tmp_path, subtype, channels, container):
    path = tmp_path / "x.wav"
    samples = (np.arange(1001 * channels).reshape(1001, channels) % 200 - 100).astype(np.int16)
    with sf.SoundFile(str(path), "w", 22050, channels, subtype=subtype, format=container) as f:
        f.title = "odd-sized metadata chunk"  # a LIST chunk libsndfile places before the samples
        f.write(samples)
    header = audio_lib.read_wav_header(path)
    info = sf.info(str(path))
    assert header.data_offset is not None, header.byte_copy_refusal
    assert (header.sample_rate, header.channels, header.subtype, header.frames) == (
        info.samplerate, info.channels, info.subtype, info.frames
    )
    assert header.data_bytes == len(data_chunk(path))


def test_odd_sized_data_is_padded_and_reads_back(make_sample, tmp_path):
    src = make_sample("u8", lengths=[3, 3], mics=[MicSpec(MIC, 8000)])
    rec = read_recording(src)
    sources = []
    for e, n in enumerate((801, 402)):  # 801 + 402 one-byte frames: an odd data chunk
        samples = (np.arange(n) * 97 % 65536 - 32768).astype(np.int16) & ~np.int16(0xFF)
        sf.write(str(wav_of(rec, e)), samples, 8000, subtype="PCM_U8")
        sources.append(samples)
    rec = read_recording(src)
    result = audio_lib.write_audio(rec, tmp_path / "out", ConversionSettings())
    (path,) = result.files
    assert path.stat().st_size % 2 == 0
    assert int.from_bytes(path.read_bytes()[4:8], "little") == path.stat().st_size - 8
    got, rate = sf.read(str(path), dtype="int16")
    assert rate == 8000 and sf.info(str(path)).subtype == "PCM_U8"
    np.testing.assert_array_equal(got, np.concatenate(sources))


def test_big_endian_wav_is_decoded_by_libsndfile_and_says_so(make_sample, tmp_path):
    src = make_sample("rifx", lengths=LENGTHS[:4], mics=[MicSpec(MIC, 16000)])
    rec = read_recording(src)
    rifx = wav_of(rec, 2)
    samples, _ = sf.read(str(rifx), dtype="int16")
    sf.write(str(rifx), samples, 16000, subtype="PCM_16", endian="BIG")
    assert rifx.read_bytes()[:4] == b"RIFX"
    rec = read_recording(src)
    # Episodes 0-1 and 2-3 share files (57600 and 67200 bytes): only the second file holds the
    # big-endian one.
    result = audio_lib.write_audio(rec, tmp_path / "out", ConversionSettings(audio_file_size_mb=0.07))

    t = result.placements.to_pydict()
    assert t[f"audio/{MIC}/file_index"] == [0, 0, 1, 1]
    (note,) = [n for n in result.notes if "libsndfile" in n]
    assert "1 WAV file(s) decoded by libsndfile" in note and str(rifx) in note and "RIFX" in note
    for e in range(4):
        source, _ = sf.read(str(wav_of(rec, e)), dtype="int16", always_2d=True)
        path = result.files[t[f"audio/{MIC}/file_index"][e]]
        got, _ = read_span(path, t[f"audio/{MIC}/from_timestamp"][e], t[f"audio/{MIC}/to_timestamp"][e], "int16")
        np.testing.assert_array_equal(got, source)
    # The file of episodes 0-1 is still a byte copy; the other is libsndfile's (little-endian) WAV.
    assert data_chunk(result.files[0]) == data_chunk(wav_of(rec, 0)) + data_chunk(wav_of(rec, 1))
    assert result.files[1].read_bytes()[:4] == b"RIFF"


def test_wav_header_with_zero_channels_is_refused_before_any_write(make_sample, tmp_path):
    src = make_sample("zero", lengths=LENGTHS[:3], mics=[MicSpec("observation.audio.a", 16000), MicSpec("observation.audio.b", 16000)])
    rec = read_recording(src)
    broken = rec.episodes[2].audio_paths["observation.audio.b"]
    raw = bytearray(broken.read_bytes())
    assert raw[12:16] == b"fmt " and raw[22:24] == b"\x01\x00"
    raw[22:24] = b"\x00\x00"  # a well-formed RIFF/WAVE file whose fmt chunk declares no channels
    broken.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(RecordingError) as err:
        audio_lib.write_audio(rec, out, ConversionSettings())
    assert err.value.code == "audio_unreadable" and err.value.path == broken
    assert not out.exists()
    with pytest.raises(RecordingError) as err:
        read_recording(src)  # and every asset's reader refuses the recording too
    assert err.value.path == broken


def test_wav_truncated_after_its_header_was_read_is_a_typed_error(make_sample, tmp_path):
    src = make_sample("shrunk", lengths=LENGTHS[:2], mics=[MicSpec(MIC, 16000)])
    rec = read_recording(src)
    victim = wav_of(rec, 1)
    header = audio_lib.read_wav_header(victim)
    out = tmp_path / "out"
    # The file loses samples between the header check and the copy (e.g. a recorder still writing).
    with open(victim, "r+b") as f:
        f.truncate(header.data_offset + 1000)
    with pytest.raises(RecordingError) as err:
        audio_lib._write_file_by_copy(out / "x.wav", [audio_lib.read_wav_header(wav_of(rec, 0)), header], audio_lib.FileSlot(0, 0))
    assert err.value.code == "audio_unreadable" and err.value.path == victim
    assert f"ends after 1000 of its {header.data_bytes} bytes" in err.value.fault
    assert not (out / "x.wav").exists() and not list(out.glob(".tmp-*"))


def test_copy_between_file_systems_falls_back_to_a_buffer(tmp_path):
    """copy_file_range refuses to cross file systems of different types (EXDEV): the same bytes
    then go through one bounded buffer."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's temporary folder")
    payload = bytes(range(256)) * 9000 + b"tail"  # > COPY_BUFFER_BYTES: several buffered reads
    src_path = shm / f"dorobot-test-{os.getpid()}.bin"
    src_path.write_bytes(b"HEAD" + payload)
    try:
        src = os.open(src_path, os.O_RDONLY)
        dst = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT)
        try:
            audio_lib._copy_range(src, dst, 4, len(payload), src_path)
            with pytest.raises(RecordingError, match="ends after 0 of its 10 bytes"):
                audio_lib._copy_range(src, dst, len(payload) + 4, 10, src_path)
        finally:
            os.close(src)
            os.close(dst)
    finally:
        src_path.unlink()
    assert (tmp_path / "out.bin").read_bytes() == payload

"""The VideoEncoder backends and the `reencode` path: PyAV software, ffmpeg CLI, Ascend NPU.

There is no Ascend NPU (nor any ffmpeg binary) on the test machines. The ffmpeg and NPU code paths
run end to end against a stand-in ``ffmpeg`` executable put on PATH: it checks the arguments it
gets (as Ascend's ffmpeg documents them: ``-c:v h264_ascend -device_id D -channel_id C -gop G
-frame_rate F``), refuses a channel id that another running encode holds, can report busy
channels or be slow on request, and writes a real MP4 with PyAV (libx264 standing in for the NPU).
"""

from __future__ import annotations

import _thread
import inspect
import json
import os
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pytest

from dorobot_assets import cli
from dorobot_assets.defs.resources import ConversionResource, StorageResource, VideoEncoderResource
from dorobot_assets.lib import synthetic
from dorobot_assets.lib.encoders import (
    AscendEncoder,
    ChannelsExhausted,
    EncoderConfig,
    EncoderError,
    EncoderUnavailable,
    FfmpegEncoder,
    PyAVEncoder,
    build_encoder,
)
from dorobot_assets.lib.episodes import read_episodes
from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import read_recording
from dorobot_assets.lib.v30 import video_file
from dorobot_assets.lib.video import write_videos
from dorobot_assets_tests.conftest import file_hashes

TOP, WRIST = "observation.images.top", "observation.images.wrist"
LENGTHS = [22, 27, 20, 25]
FPS = 30


def ffmpeg_standin(argv: list[str]) -> int:
    """Body of the stand-in ``ffmpeg`` (runs as its own process; stdlib + PyAV only).

    Environment: STANDIN_STATE (folder for its log, counter, channel locks and pid files),
    STANDIN_DEVICE and STANDIN_CHANNELS (what -device_id/-channel_id must be), STANDIN_NO_ASCEND
    (ffmpeg without h264_ascend), STANDIN_BUSY_CALLS (the first N encodes report busy channels),
    STANDIN_SLEEP (seconds to hold the channel before encoding).
    """
    import fcntl
    import json
    import os
    import sys
    import time

    os.environ.setdefault("SVT_LOG", "1")
    import av

    state = os.environ["STANDIN_STATE"]

    def locked_update(name, fn):
        with open(os.path.join(state, name), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            new = fn(f.read())
            f.seek(0)
            f.truncate()
            f.write(new)
            return new

    def log(entry):
        locked_update("calls.jsonl", lambda text: text + json.dumps(entry) + "\n")

    if "-encoders" in argv:
        print("Encoders:\n V..... = Video\n ------")
        print(" V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC (codec h264)")
        print(" V....D libsvtav1            SVT-AV1 (codec av1)")
        if not os.environ.get("STANDIN_NO_ASCEND"):
            print(" V..... h264_ascend          Ascend H.264 encoder (codec h264)")
        return 0

    problems = []

    def value(flag):
        if flag not in argv or argv.index(flag) + 1 >= len(argv):
            problems.append(f"{flag} is missing")
            return None
        return argv[argv.index(flag) + 1]

    def optional(flag):
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    for flag in ("-y", "-nostdin"):
        if flag not in argv:
            problems.append(f"{flag} is missing")
    for flag, expected in (("-map", "0:v:0"), ("-vsync", "passthrough"), ("-f", "mp4")):
        if value(flag) != expected:
            problems.append(f"{flag} must be {expected}")
    src, dst, encoder = value("-i"), argv[-1], value("-c:v")
    if src is None or not os.path.isfile(src):
        problems.append(f"input {src} does not exist")
    channel = None
    if encoder == "h264_ascend":
        if os.environ.get("STANDIN_NO_ASCEND"):
            problems.append("Unknown encoder 'h264_ascend'")
        if value("-device_id") != os.environ.get("STANDIN_DEVICE", "0"):
            problems.append(f"-device_id {value('-device_id')} is not the configured device")
        channel = int(value("-channel_id") or -1)
        if not 0 <= channel < int(os.environ.get("STANDIN_CHANNELS", "2")):
            problems.append(f"-channel_id {channel} is out of range")
        if "-crf" in argv or "-g" in argv:
            problems.append("h264_ascend takes -gop and no -crf/-g")
        codec, options = "libx264", {"g": value("-gop"), "crf": "12", "preset": "ultrafast"}
        if not 1 <= int(value("-frame_rate") or 0) <= 240:
            problems.append("-frame_rate must be in 1..240")
    elif encoder in ("libsvtav1", "libx264"):
        default_preset = "ultrafast" if encoder == "libx264" else "12"  # fast stand-ins for the defaults
        codec, options = encoder, {"g": value("-g"), "crf": value("-crf"), "preset": optional("-preset") or default_preset}
        if value("-pix_fmt") != "yuv420p":
            problems.append("-pix_fmt must be yuv420p")
    else:
        problems.append(f"unexpected encoder {encoder}")
    if problems:
        print("stand-in ffmpeg: " + "; ".join(problems), file=sys.stderr)
        return 2

    calls = int(locked_update("count", lambda text: str(int(text or 0) + 1)))
    log({"argv": argv, "pid": os.getpid(), "channel": channel, "start": time.time()})
    if calls <= int(os.environ.get("STANDIN_BUSY_CALLS", "0")):
        print("[h264_ascend] create venc channel failed: no free channel on device", file=sys.stderr)
        return 1
    lock = None
    if channel is not None:
        try:
            lock = os.open(os.path.join(state, f"channel-{channel}"), os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            print(f"stand-in: channel_id {channel} handed to two encodes at once", file=sys.stderr)
            return 3
    try:
        open(os.path.join(state, f"pid-{os.getpid()}"), "w").close()
        time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
        with av.open(src) as inp, av.open(dst, "w", format="mp4") as out:
            ist = inp.streams.video[0]
            ost = out.add_stream(codec, rate=ist.average_rate, options=options)
            ost.width, ost.height, ost.pix_fmt = ist.width, ist.height, "yuv420p"
            ost.time_base = ost.codec_context.time_base = ist.time_base
            for frame in inp.decode(ist):
                pts = frame.pts
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = pts, ist.time_base
                frame.pict_type = av.video.frame.PictureType.NONE  # let -gop place the key frames
                for p in ost.encode(frame):
                    out.mux(p)
            for p in ost.encode():
                out.mux(p)
    finally:
        if lock is not None:
            os.close(lock)
            os.unlink(os.path.join(state, f"channel-{channel}"))
    log({"pid": os.getpid(), "channel": channel, "end": time.time()})
    return 0


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """Put the stand-in ``ffmpeg`` first on PATH; returns its state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "standin"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "ffmpeg"
    script.write_text(
        f"#!{sys.executable}\nimport sys\n\n{inspect.getsource(ffmpeg_standin)}\n"
        "sys.exit(ffmpeg_standin(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_STATE", str(state))
    return state


def calls(state: Path) -> list[dict]:
    path = state / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def starts(state: Path) -> list[dict]:
    return [c for c in calls(state) if "argv" in c]


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def episode_mp4(root: Path, key: str, episode: int) -> Path:
    return root / synthetic.LEROBOT_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=episode)


def stream_facts(path: Path) -> tuple[str, list[int], list[bool]]:
    """Codec, packet pts in presentation order, and which of those frames are key frames."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        found = sorted((p.pts, p.is_keyframe) for p in c.demux(st) if p.dts is not None)
        return st.codec_context.codec.canonical_name, [p for p, _ in found], [k for _, k in found]


# ----------------------------------------------------------------------------- configuration


def test_defaults_are_lerobots_recorder_settings_and_bad_settings_are_refused():
    enc = build_encoder()
    assert isinstance(enc, PyAVEncoder) and enc.codec == "av1"
    assert enc.options() == {"g": "2", "crf": "30"} and enc.pix_fmt == "yuv420p"
    assert VideoEncoderResource().config() == EncoderConfig()
    npu = build_encoder(EncoderConfig(backend="npu", npu_device_id=1, npu_channels=3, npu_fallback_to_libx264=True))
    assert isinstance(npu, AscendEncoder) and npu.codec == "h264" and npu.channels == 3
    assert isinstance(npu.fallback, PyAVEncoder) and npu.fallback.encoder_name == "libx264"
    with pytest.raises(ConfigError, match="backend must be one of"):
        EncoderConfig(backend="gpu")
    with pytest.raises(ConfigError, match="npu_channels must be >= 1"):
        EncoderConfig(npu_channels=0)
    with pytest.raises(ConfigError, match="video_workers must be >= 1"):
        ConversionSettings(video_workers=0)


def test_pyav_encoder_transcodes_all_intra_h264_to_av1_keeping_every_pts(make_sample, tmp_path):
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    source = episode_mp4(src, WRIST, 1)  # all-intra H.264, as DoRobot's recorder writes
    dst = tmp_path / "av1.mp4"
    PyAVEncoder(preset="12").transcode(source, dst, fps=FPS)
    codec, pts, keys = stream_facts(dst)
    _, source_pts, source_keys = stream_facts(source)
    assert codec == "av1" and pts == source_pts and len(pts) == LENGTHS[1]
    assert all(source_keys) and keys == [k % 2 == 0 for k in range(LENGTHS[1])], "g=2"


# ----------------------------------------------------------------------------- ffmpeg CLI backend


def test_ffmpeg_backend_runs_the_configured_encoder_command(make_sample, standin, tmp_path):
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    enc = build_encoder(EncoderConfig(backend="ffmpeg", codec="libsvtav1", preset="12"))
    enc.prepare()
    dst = tmp_path / "out.mp4"
    enc.transcode(episode_mp4(src, WRIST, 0), dst, fps=FPS)
    (call,) = starts(standin)
    argv = call["argv"]
    assert arg(argv, "-c:v") == "libsvtav1" and arg(argv, "-g") == "2" and arg(argv, "-crf") == "30"
    assert arg(argv, "-i") == str(episode_mp4(src, WRIST, 0)) and argv[-1] == str(dst)
    codec, pts, _ = stream_facts(dst)
    assert codec == "av1" and pts == stream_facts(episode_mp4(src, WRIST, 0))[1]


def test_ffmpeg_failure_quotes_the_encoder(make_sample, standin, tmp_path):
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    enc = FfmpegEncoder("libx264", gop=2)
    enc.pix_fmt = "nv12"  # the stand-in insists on yuv420p, as a real command mismatch would fail
    with pytest.raises(EncoderError, match=r"failed \(exit 2\): stand-in ffmpeg: -pix_fmt must be yuv420p"):
        enc.transcode(episode_mp4(src, TOP, 0), tmp_path / "x.mp4", fps=FPS)


def test_missing_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EncoderUnavailable, match="no ffmpeg executable 'ffmpeg' on PATH"):
        build_encoder(EncoderConfig(backend="ffmpeg")).prepare()


# ----------------------------------------------------------------------------- Ascend NPU


def test_npu_reencode_end_to_end_through_the_cli(make_sample, standin, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_DEVICE", "3")
    monkeypatch.setenv("STANDIN_CHANNELS", "2")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    before = file_hashes(src)
    out = tmp_path / "out" / "cams"
    rc = cli.main(["convert", str(src), str(out), "--stats", "copy", "--reencode", "--encoder", "npu",
                   "--npu-device", "3", "--npu-channels", "2", "--video-file-size-mb", "0.02"])
    assert rc == 0
    assert file_hashes(src) == before

    encodes = starts(standin)
    assert len(encodes) == 2 * len(LENGTHS), "one NPU encode per camera and episode"
    for call in encodes:
        argv = call["argv"]
        assert arg(argv, "-c:v") == "h264_ascend" and arg(argv, "-device_id") == "3"
        assert arg(argv, "-channel_id") in {"0", "1"}
        assert arg(argv, "-gop") == "2" and arg(argv, "-frame_rate") == "30"
    sources = {arg(c["argv"], "-i") for c in encodes}
    assert sources == {str(episode_mp4(src, k, e)) for k in (TOP, WRIST) for e in range(len(LENGTHS))}

    features = json.loads((out / "meta" / "info.json").read_text())["features"]
    assert features[TOP]["info"]["video.codec"] == "h264", "info.json names the codec written (the source's was av1)"
    assert features[WRIST]["info"]["video.codec"] == "h264"
    eps = read_episodes(out).to_pylist()
    for key in (TOP, WRIST):
        files = sorted((out / "videos" / key).glob("chunk-*/file-*.mp4"))
        assert len(files) >= 2, "the tiny limit rolls the re-encoded videos over too"
        for e in eps:
            path = out / video_file(key, e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"])
            with av.open(str(path)) as c:
                st = c.streams.video[0]
                assert st.codec_context.codec.canonical_name == "h264"
                frames = [(float(Fraction(f.pts) * st.time_base), f.to_ndarray()) for f in c.decode(st)]
            with av.open(str(episode_mp4(src, key, e["episode_index"]))) as c:
                source = [f.to_ndarray() for f in c.decode(video=0)]
            pts = np.array([t for t, _ in frames])
            for k in range(e["length"]):
                query = e[f"videos/{key}/from_timestamp"] + k / FPS
                j = int(np.argmin(np.abs(pts - query)))
                assert abs(pts[j] - query) < 1e-4
                assert np.abs(frames[j][1].astype(int) - source[k].astype(int)).mean() < 3.0


def test_npu_channels_are_bounded_by_the_semaphore(make_sample, standin, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_SLEEP", "0.3")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    enc = AscendEncoder(channels=2)
    enc.prepare()
    errors = []

    def encode(i):
        try:
            enc.transcode(episode_mp4(src, TOP, i), tmp_path / f"{i}.mp4", fps=FPS)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(len(LENGTHS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # the stand-in fails (exit 3) if a channel id is handed out twice at once
    log = calls(standin)
    spans = {}
    for entry in log:
        spans.setdefault(entry["pid"], {}).update(entry)
    assert len(spans) == len(LENGTHS) and {s["channel"] for s in spans.values()} <= {0, 1}
    # sweep over start (+1) and end (-1) events; at equal times an end comes first
    events = sorted([(s["start"], 1) for s in spans.values()] + [(s["end"], -1) for s in spans.values()])
    running = np.cumsum([delta for _, delta in events])
    assert running.max() <= 2, "never more encodes at once than NPU channels"


def test_npu_busy_channels_are_retried_with_backoff(make_sample, standin, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_BUSY_CALLS", "2")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    enc = AscendEncoder(retries=3, backoff_s=0.01)
    enc.prepare()
    enc.transcode(episode_mp4(src, TOP, 0), tmp_path / "out.mp4", fps=FPS)
    assert len(starts(standin)) == 3, "two busy answers, then the encode"
    assert stream_facts(tmp_path / "out.mp4")[1] == stream_facts(episode_mp4(src, TOP, 0))[1]


def test_npu_channels_exhausted_raises_or_falls_back_to_libx264(make_sample, standin, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_BUSY_CALLS", "1000")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    source = episode_mp4(src, TOP, 0)
    with pytest.raises(ChannelsExhausted, match="every h264_ascend channel of NPU device 0 stayed busy through 2 retries"):
        AscendEncoder(retries=2, backoff_s=0.01).transcode(source, tmp_path / "a.mp4", fps=FPS)
    assert len(starts(standin)) == 3
    enc = AscendEncoder(retries=1, backoff_s=0.01, fallback=PyAVEncoder("libx264", preset="ultrafast"))
    enc.transcode(source, tmp_path / "b.mp4", fps=FPS)
    codec, pts, _ = stream_facts(tmp_path / "b.mp4")
    assert codec == "h264" and pts == stream_facts(source)[1]
    assert enc.notes == ["NPU channels exhausted, some episodes were encoded with "
                         "PyAV libx264 g=2 crf=30 preset=ultrafast yuv420p"]


def test_ffmpeg_without_h264_ascend_is_a_clear_error_before_writing(make_sample, standin, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_NO_ASCEND", "1")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    rec = read_recording(src)
    out = tmp_path / "ds"
    settings = ConversionSettings(reencode=True)
    with pytest.raises(EncoderUnavailable) as err:
        write_videos(rec, out, settings, AscendEncoder())
    message = str(err.value)
    assert "this ffmpeg has no h264_ascend encoder" in message and "--enable-ascend" in message
    assert message.startswith(str(standin.parent / "bin" / "ffmpeg"))
    assert not out.exists()
    # with the fallback enabled the conversion goes on with libx264, and says so
    enc = AscendEncoder(fallback=PyAVEncoder("libx264", preset="ultrafast"))
    result = write_videos(rec, out, settings, enc)
    assert starts(standin) == []
    assert any("no h264_ascend encoder" in n and "encoding with PyAV libx264" in n for n in result.notes)
    assert result.frames == 2 * sum(LENGTHS)


def test_interrupt_kills_running_encoder_subprocesses(make_sample, standin, monkeypatch, tmp_path):
    monkeypatch.setenv("STANDIN_SLEEP", "120")
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    rec = read_recording(src)
    out = tmp_path / "ds"
    seen: list[int] = []

    def interrupt_when_both_cameras_encode():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = [int(p.name.split("-")[1]) for p in standin.glob("pid-*")]
            if len(pids) >= 2:
                seen.extend(pids)
                break
            time.sleep(0.05)
        _thread.interrupt_main()  # what a Dagster run termination does to the step's main thread

    watcher = threading.Thread(target=interrupt_when_both_cameras_encode)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        write_videos(rec, out, ConversionSettings(reencode=True, video_workers=2), AscendEncoder())
    watcher.join()
    assert len(seen) == 2, "both cameras were encoding in parallel when interrupted"
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
    assert not [p for p in out.rglob("*") if p.is_file()], "no partial or temporary file is left"


# ----------------------------------------------------------------------------- parallel cameras


class BarrierEncoder(PyAVEncoder):
    """A real libx264 encoder whose first encode per camera waits for the other camera's."""

    def __init__(self, parties: int):
        super().__init__("libx264", preset="ultrafast")
        self.barrier = threading.Barrier(parties, timeout=20)
        self.threads: set[str] = set()

    def transcode(self, src, dst, *, fps, cancel=None):
        if src.name == "episode_000000.mp4":
            self.barrier.wait()  # breaks (raises) unless both cameras run at the same time
        self.threads.add(threading.current_thread().name)
        super().transcode(src, dst, fps=fps, cancel=cancel)


def test_cameras_are_converted_in_parallel_up_to_video_workers(make_sample, tmp_path):
    src = make_sample("cams", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    rec = read_recording(src)
    enc = BarrierEncoder(parties=2)
    result = write_videos(rec, tmp_path / "ds", ConversionSettings(reencode=True, video_workers=2), enc)
    assert len(enc.threads) == 2 and result.frames == 2 * sum(LENGTHS)
    sequential = PyAVEncoder("libx264", preset="ultrafast")
    one = write_videos(rec, tmp_path / "ds1", ConversionSettings(reencode=True, video_workers=1), sequential)
    assert one.placements.equals(result.placements)


# ----------------------------------------------------------------------------- Dagster wiring


def test_videos_asset_uses_the_encoder_resource_in_the_video_encoder_pool(make_sample, standin, tmp_path):
    from dorobot_assets.defs.assets import conversion_assets
    from dorobot_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_assets_def("videos").op.pool == "video_encoder"
    assert isinstance(defs.resources["video_encoder"], VideoEncoderResource)

    src = make_sample("cams", lengths=LENGTHS[:2], cameras=synthetic.demo_cameras())
    instance = dg.DagsterInstance.get()  # a real (SQLite) instance, where pools are enforced
    instance.event_log_storage.set_concurrency_slots("video_encoder", 1)
    instance.add_dynamic_partitions("recordings", ["cams"])
    result = dg.materialize(
        conversion_assets, partition_key="cams", instance=instance,
        resources={
            "storage": StorageResource(inbox=str(src.parent), output=str(tmp_path / "out")),
            "conversion": ConversionResource(stats="copy", reencode=True),
            "video_encoder": VideoEncoderResource(backend="npu", npu_channels=2),
        },
    )
    assert result.success
    md = result.asset_materializations_for_node("videos")[0].metadata
    assert md["mode"].value == "reencode" and md["encoder"].value.startswith("Ascend NPU ffmpeg")
    assert md["frames"].value == 2 * sum(LENGTHS[:2]) and md["cameras"].value == 2
    assert len(starts(standin)) == 2 * 2
    assert instance.event_log_storage.get_concurrency_info("video_encoder").slot_count == 1

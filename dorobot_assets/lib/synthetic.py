"""Synthetic, spec-conformant v2.1 recordings (LeRobot and DoRobot flavours) for demo, tests, bench.

Cameras are real MP4s encoded with PyAV the way the recorders do it: AV1 through libsvtav1 with
``g=2, crf=30`` (LeRobot), or all-intra H.264 through libx264 (DoRobot's NPU recorder writes every
frame as a key frame). DoRobot audio is a real PCM_16 mono WAV per episode and microphone.
``episodes_stats.jsonl`` is computed as LeRobot's recorder does (reference notes §4.3): numeric
features over every frame, cameras over sampled, downsampled frames scaled to [0, 1].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# SVT-AV1 prints a banner per encoder on stderr unless told otherwise (1 = errors only).
os.environ.setdefault("SVT_LOG", "1")

import av  # noqa: E402  (after SVT_LOG)
import soundfile as sf  # noqa: E402

LEROBOT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEROBOT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
DOROBOT_AUDIO_PATH = "audio/chunk-{episode_chunk:03d}/{audio_key}/episode_{episode_index:06d}.wav"

ENCODER_SETTINGS = {
    # codec name in info.json -> (PyAV encoder, options)
    "av1": ("libsvtav1", {"g": "2", "crf": "30", "preset": "12"}),
    "h264": ("libx264", {"g": "1", "crf": "23", "preset": "ultrafast", "tune": "zerolatency"}),
}


@dataclass
class CameraSpec:
    key: str  # feature name, e.g. observation.images.top
    codec: str = "av1"  # av1 | h264
    width: int = 64
    height: int = 48
    # episode_index -> {"codec"/"width"/"height": ...}: recordings that mix encoders per episode
    overrides: dict[int, dict] = field(default_factory=dict)
    # encoder options over ENCODER_SETTINGS (None removes one), e.g. a long GOP with B-frames
    encoder_options: dict[str, str | None] = field(default_factory=dict)


@dataclass
class MicSpec:
    key: str  # feature name, e.g. observation.audio.left
    sample_rate: int = 16000
    missing_episodes: Sequence[int] = ()
    # extra seconds of audio per episode (positive or negative): imperfect recordings
    drift_s: float = 0.0


def estimate_num_samples(length: int) -> int:
    """LeRobot's camera-stats sample count for an episode of ``length`` frames (notes §4.3)."""
    return max(min(100, length), min(int(length**0.75), 10000))


def sample_indices(length: int) -> np.ndarray:
    k = estimate_num_samples(length)
    return np.round(np.linspace(0, length - 1, k)).astype(int)


def downsample(frame_hwc: np.ndarray) -> np.ndarray:
    """LeRobot's stride downsampling for stats: frames with max(H, W) >= 300 are strided."""
    h, w = frame_hwc.shape[:2]
    if max(h, w) < 300:
        return frame_hwc
    step = int(w / 150) if w > h else int(h / 150)
    return frame_hwc[::step, ::step]


def camera_frame(width: int, height: int, episode: int, frame: int, cam: int) -> np.ndarray:
    """A deterministic RGB frame with a moving square, so decoded frames are all different."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1) + 7 * episode) % 256
    img[..., 1] = (y * 255 // max(1, height - 1) + 3 * frame) % 256
    img[..., 2] = (40 * cam + 2 * frame + 11 * episode) % 256
    s = max(4, min(width, height) // 4)
    ox = (frame * 3 + episode * 5) % max(1, width - s)
    oy = (frame * 2 + cam * 7) % max(1, height - s)
    img[oy : oy + s, ox : ox + s] = 255 - img[oy : oy + s, ox : ox + s]
    return img


def encode_video(
    path: Path, frames: Sequence[np.ndarray], fps: int, codec: str, extra_options: dict | None = None
) -> None:
    encoder, options = ENCODER_SETTINGS[codec]
    options = {k: v for k, v in {**options, **(extra_options or {})}.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        import shutil

        shutil.copyfile(src, dst)


def _numeric_stats(values: np.ndarray) -> dict:
    """min/max/mean/std/count of a (N,) or (N, D) array, as lists (scalars as length-1 lists)."""
    arr = values.reshape(len(values), -1)
    as_int = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    mn, mx = arr.min(axis=0), arr.max(axis=0)
    f = arr.astype(np.float64)
    return {
        "min": (mn.astype(np.int64) if as_int else mn.astype(np.float64)).tolist(),
        "max": (mx.astype(np.int64) if as_int else mx.astype(np.float64)).tolist(),
        "mean": f.mean(axis=0).tolist(),
        "std": f.std(axis=0).tolist(),
        "count": [int(len(arr))],
    }


def image_stats(frames_hwc: Sequence[np.ndarray]) -> dict:
    """Per-channel stats of uint8 RGB frames in [0, 1], shape (3, 1, 1); count = frames used."""
    px = np.concatenate([downsample(f).reshape(-1, 3) for f in frames_hwc]).astype(np.float64) / 255.0
    nest = lambda v: [[[float(c)]] for c in v]  # noqa: E731
    return {
        "min": nest(px.min(axis=0)),
        "max": nest(px.max(axis=0)),
        "mean": nest(px.mean(axis=0)),
        "std": nest(px.std(axis=0)),
        "count": [len(frames_hwc)],
    }


def _hf_features(state_dim: int, action_dim: int, extra_float: Sequence[str]) -> str:
    seq = lambda n: {"feature": {"dtype": "float32", "_type": "Value"}, "length": n, "_type": "Sequence"}  # noqa: E731
    val = lambda d: {"dtype": d, "_type": "Value"}  # noqa: E731
    feats = {"observation.state": seq(state_dim), "action": seq(action_dim)}
    for name in extra_float:
        feats[name] = val("float32")
    feats.update({
        "timestamp": val("float32"), "frame_index": val("int64"), "episode_index": val("int64"),
        "index": val("int64"), "task_index": val("int64"),
    })
    return json.dumps({"info": {"features": feats}})


def make_recording(
    out: Path | str,
    *,
    episodes: int = 3,
    lengths: Sequence[int] | None = None,
    fps: int = 30,
    state_dim: int = 6,
    action_dim: int = 6,
    extra_float_features: Sequence[str] = (),
    cameras: Sequence[CameraSpec] = (),
    mics: Sequence[MicSpec] = (),
    tasks: Sequence[str] = ("pick up the cube", "place the cube in the bowl"),
    chunks_size: int = 1000,
    dorobot: bool | None = None,
    shuffle_jsonl: bool = False,
    robot_type: str = "so101",
    seed: int = 0,
    codebase_version: str = "v2.1",
    timestamp_offset_frames: int = 0,
    reuse_videos: bool = False,
) -> Path:
    """Write a v2.1 recording to ``out`` (created; must not exist or be empty) and return it.

    ``dorobot`` (default: True when ``mics`` are given) adds DoRobot's ``dorobot_dataset_version``,
    ``audio_path``/``image_path`` keys and its ``op_dataid.jsonl``/``common_record.json``.
    ``shuffle_jsonl`` writes the jsonl lines out of order, as DoRobot's async saver does.
    ``codebase_version="v2.0"`` leaves out episodes_stats.jsonl (v2.0 had none);
    ``timestamp_offset_frames`` starts timestamps at that many frame periods (GR00T starts at 1).
    ``reuse_videos`` encodes each (camera, codec, size, length) once and hard-links that MP4 (and
    reuses its stats) for later episodes of the same length: every file stays a valid episode
    video, and a 2000-episode recording takes a minute instead of hours (the benchmark's recipe).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if lengths is None:
        lengths = [int(rng.integers(20, 40)) for _ in range(episodes)]
    lengths = list(lengths)
    episodes = len(lengths)
    dorobot = bool(mics) if dorobot is None else dorobot

    features: dict = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": [f"joint_{i}" for i in range(state_dim)]},
        "action": {"dtype": "float32", "shape": [action_dim], "names": [f"joint_{i}" for i in range(action_dim)]},
    }
    for name in extra_float_features:
        features[name] = {"dtype": "float32", "shape": [1], "names": None}
    for cam in cameras:
        features[cam.key] = {
            "dtype": "video", "shape": [cam.height, cam.width, 3], "names": ["height", "width", "channels"],
            "info": {
                "video.fps": float(fps), "video.height": cam.height, "video.width": cam.width,
                "video.channels": 3, "video.codec": cam.codec, "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False, "has_audio": False,
            },
        }
    for mic in mics:
        features[mic.key] = {"dtype": "audio", "shape": [1], "names": None}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}

    hf_meta = _hf_features(state_dim, action_dim, extra_float_features).encode()
    encoded: dict[tuple, tuple[Path, dict]] = {}  # reuse_videos: first MP4 and stats per key
    ep_lines, stat_lines = [], []
    global_index = 0
    for e, n in enumerate(lengths):
        chunk = e // chunks_size
        task_index = e % len(tasks)
        t = np.arange(n)
        phase = rng.uniform(0, 2 * np.pi, size=state_dim)
        state = (np.sin(t[:, None] / (7.0 + e) + phase) * (10 + e)).astype(np.float32)
        action = (state[:, :action_dim] + rng.normal(0, 0.5, size=(n, action_dim))).astype(np.float32)
        columns = {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), state_dim),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), action_dim),
        }
        extra_values = {}
        for name in extra_float_features:
            extra_values[name] = rng.normal(0, 1, size=n).astype(np.float32)
            columns[name] = pa.array(extra_values[name])
        ts = ((t + timestamp_offset_frames) / fps).astype(np.float32)
        index = np.arange(global_index, global_index + n, dtype=np.int64)
        columns.update({
            "timestamp": pa.array(ts), "frame_index": pa.array(t.astype(np.int64)),
            "episode_index": pa.array(np.full(n, e, np.int64)), "index": pa.array(index),
            "task_index": pa.array(np.full(n, task_index, np.int64)),
        })
        table = pa.table(columns).replace_schema_metadata({b"huggingface": hf_meta})
        data_path = out / LEROBOT_DATA_PATH.format(episode_chunk=chunk, episode_index=e)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)

        stats = {"observation.state": _numeric_stats(state), "action": _numeric_stats(action)}
        for name, values in extra_values.items():
            stats[name] = _numeric_stats(values)
        for c, cam in enumerate(cameras):
            spec = {"codec": cam.codec, "width": cam.width, "height": cam.height, **cam.overrides.get(e, {})}
            vpath = out / LEROBOT_VIDEO_PATH.format(episode_chunk=chunk, video_key=cam.key, episode_index=e)
            reuse_key = (c, spec["codec"], spec["width"], spec["height"], n)
            if reuse_videos and reuse_key in encoded:
                first_path, stats[cam.key] = encoded[reuse_key]
                _link_or_copy(first_path, vpath)
                continue
            frames = [camera_frame(spec["width"], spec["height"], e, k, c) for k in range(n)]
            encode_video(vpath, frames, fps, spec["codec"], cam.encoder_options)
            stats[cam.key] = image_stats([frames[i] for i in sample_indices(n)])
            encoded[reuse_key] = (vpath, stats[cam.key])
        for m, mic in enumerate(mics):
            if e in set(mic.missing_episodes):
                continue
            n_samples = int(round((n / fps + mic.drift_s) * mic.sample_rate))
            tt = np.arange(n_samples) / mic.sample_rate
            wave = 0.3 * np.sin(2 * np.pi * (220 + 55 * m + 10 * e) * tt) + rng.normal(0, 0.02, n_samples)
            samples = np.clip(wave * 32767, -32768, 32767).astype(np.int16)
            apath = out / DOROBOT_AUDIO_PATH.format(episode_chunk=chunk, audio_key=mic.key, episode_index=e)
            apath.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(apath), samples, mic.sample_rate, subtype="PCM_16")
        stats["timestamp"] = _numeric_stats(ts)
        stats["frame_index"] = _numeric_stats(t.astype(np.int64))
        stats["episode_index"] = _numeric_stats(np.full(n, e, np.int64))
        stats["index"] = _numeric_stats(index)
        stats["task_index"] = _numeric_stats(np.full(n, task_index, np.int64))
        ep_lines.append({"episode_index": e, "tasks": [tasks[task_index]], "length": n})
        stat_lines.append({"episode_index": e, "stats": stats})
        global_index += n

    if shuffle_jsonl:
        order = rng.permutation(episodes)
        ep_lines = [ep_lines[i] for i in order]
        stat_lines = [stat_lines[i] for i in order]

    info: dict = {"codebase_version": codebase_version}
    if dorobot:
        info["dorobot_dataset_version"] = "v1.0"
    info.update({
        "robot_type": robot_type, "total_episodes": episodes, "total_frames": int(sum(lengths)),
        "total_tasks": len(tasks), "total_videos": episodes * len(cameras),
        "total_chunks": (episodes - 1) // chunks_size + 1, "chunks_size": chunks_size, "fps": fps,
        "splits": {"train": f"0:{episodes}"}, "data_path": LEROBOT_DATA_PATH,
    })
    if dorobot:
        info["image_path"] = None
    info["video_path"] = LEROBOT_VIDEO_PATH if cameras else None
    if dorobot:
        info["audio_path"] = DOROBOT_AUDIO_PATH if mics else None
    info["features"] = features

    meta = out / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": s}) + "\n" for i, s in enumerate(tasks))
    )
    (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ep_lines))
    if codebase_version != "v2.0":  # v2.0 had no per-episode stats
        (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stat_lines))
    if dorobot:
        (meta / "op_dataid.jsonl").write_text(
            "".join(json.dumps({"episode_index": e, "dataid": f"{100 + e // 2:03d}"}) + "\n" for e in range(episodes))
        )
        (meta / "common_record.json").write_text(json.dumps({"task_id": "synthetic", "task_name": out.name}))
    return out


def demo_cameras(width: int = 64, height: int = 48) -> list[CameraSpec]:
    """The demo's two cameras: an AV1 one (LeRobot recorder) and an all-intra H.264 one (DoRobot NPU)."""
    return [
        CameraSpec("observation.images.top", "av1", width, height),
        CameraSpec("observation.images.wrist", "h264", width, height),
    ]


def demo_mics() -> list[MicSpec]:
    return [MicSpec("observation.audio.left", 48000)]

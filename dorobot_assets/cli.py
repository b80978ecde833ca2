"""The ``dorobot-assets`` command: convert, register, make-sample, validate, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dorobot_assets.lib.errors import DorobotError
from dorobot_assets.lib.settings import STATS_MODES, ConversionSettings
from dorobot_assets.lib.v30 import (
    DEFAULT_AUDIO_FILE_SIZE_MB,
    DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_VIDEO_FILE_SIZE_MB,
)


def _cmd_convert(args) -> int:
    from dorobot_assets.defs.convert import convert_recording

    settings = ConversionSettings(
        data_file_size_mb=args.data_file_size_mb,
        video_file_size_mb=args.video_file_size_mb,
        audio_file_size_mb=args.audio_file_size_mb,
        stats=args.stats,
        missing_cameras="drop" if args.drop_missing_cameras else "error",
    )
    run = convert_recording(args.src, args.out, settings, work=args.work, log_level=args.log_level)
    if not run.success:
        print(f"error: conversion of {args.src} failed: {run.error}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {run.dataset}")
    _print_summary(run.dataset)
    return 0


def _print_summary(dataset: Path) -> None:
    info = json.loads((dataset / "meta" / "info.json").read_text())
    print(
        f"  {info['codebase_version']}: {info['total_episodes']} episodes, "
        f"{info['total_frames']} frames, {info['total_tasks']} tasks"
    )
    for p in sorted(dataset.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            print(f"  {p.relative_to(dataset)}  ({p.stat().st_size} bytes)")


def _cmd_register(args) -> int:
    import dagster as dg

    from dorobot_assets.defs.partitions import recordings
    from dorobot_assets.defs.resources import StorageResource
    from dorobot_assets.lib.keys import resolve_recording
    from dorobot_assets.lib.v21 import read_info

    if not os.environ.get("DAGSTER_HOME"):
        print("error: set DAGSTER_HOME to the persistent Dagster instance folder first", file=sys.stderr)
        return 2
    storage = StorageResource()
    registry = storage.registry()
    keys = []
    for item in args.items:
        path = Path(item)
        folder = path if path.is_dir() else resolve_recording(item, storage.inbox_root(), registry)
        read_info(folder.resolve())  # refuse what is plainly not a v2.x recording
        key = registry.register(folder)
        keys.append(key)
        print(f"{key}\t{folder.resolve()}")
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(recordings.name, keys)
    return 0


def _parse_cameras(spec: str):
    from dorobot_assets.lib.synthetic import CameraSpec

    if spec in ("", "none"):
        return []
    cams = []
    for item in spec.split(","):
        name, _, codec = item.partition(":")
        cams.append((name, codec or "av1"))
    return cams


def _cmd_make_sample(args) -> int:
    from dorobot_assets.lib import synthetic

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    cameras = [
        synthetic.CameraSpec(f"observation.images.{name}", codec, args.width, args.height)
        for name, codec in _parse_cameras(args.cameras)
    ]
    mics = [synthetic.MicSpec(f"observation.audio.{m.partition(':')[0]}", int(m.partition(':')[2] or 48000))
            for m in args.mics.split(",") if m] if args.audio else []
    import numpy as np

    rng = np.random.default_rng(args.seed)
    lengths = [int(rng.integers(args.min_length, args.max_length + 1)) for _ in range(args.episodes)]
    synthetic.make_recording(
        out, lengths=lengths, fps=args.fps, cameras=cameras, mics=mics, seed=args.seed,
        dorobot=True if args.audio else None,
    )
    print(f"wrote a v2.1 recording to {out}: {args.episodes} episodes, {sum(lengths)} frames, "
          f"cameras {[c.key for c in cameras]}, microphones {[m.key for m in mics]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dorobot-assets", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert one v2.1 recording folder to a v3.0 dataset (in-process Dagster run)")
    c.add_argument("src", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--data-file-size-mb", type=float, default=DEFAULT_DATA_FILE_SIZE_MB)
    c.add_argument("--video-file-size-mb", type=float, default=DEFAULT_VIDEO_FILE_SIZE_MB)
    c.add_argument("--audio-file-size-mb", type=float, default=DEFAULT_AUDIO_FILE_SIZE_MB)
    c.add_argument("--stats", choices=STATS_MODES, default="recompute")
    c.add_argument("--drop-missing-cameras", action="store_true",
                   help="leave out cameras declared in info.json that have no mp4 files at all")
    c.add_argument("--work", type=Path, default=None, help="work folder (manifests, caches)")
    c.add_argument("--log-level", default="CRITICAL", help="Dagster console log level (e.g. INFO)")
    c.set_defaults(func=_cmd_convert)

    r = sub.add_parser("register", help="add recordings (folders or inbox keys) as partitions in $DAGSTER_HOME")
    r.add_argument("items", nargs="+")
    r.set_defaults(func=_cmd_register)

    m = sub.add_parser("make-sample", help="write a synthetic v2.1 recording")
    m.add_argument("out", type=Path)
    m.add_argument("--episodes", type=int, default=6)
    m.add_argument("--min-length", type=int, default=30)
    m.add_argument("--max-length", type=int, default=60)
    m.add_argument("--fps", type=int, default=30)
    m.add_argument("--cameras", default="top:av1,wrist:h264",
                   help="comma-separated name:codec (av1|h264), or 'none'")
    m.add_argument("--width", type=int, default=64)
    m.add_argument("--height", type=int, default=48)
    m.add_argument("--audio", action="store_true", help="add DoRobot microphones (see --mics)")
    m.add_argument("--mics", default="left:48000", help="comma-separated name:sample_rate")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_cmd_make_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DorobotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

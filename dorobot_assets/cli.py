"""The ``dorobot-assets`` command: convert, register, make-sample, validate, bench."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from pathlib import Path

from dorobot_assets.lib import encoders
from dorobot_assets.lib.errors import DorobotError
from dorobot_assets.lib.settings import DEFAULT_STATS_WORKERS, DEFAULT_VIDEO_WORKERS, STATS_MODES, ConversionSettings
from dorobot_assets.lib.v30 import (
    DEFAULT_AUDIO_FILE_SIZE_MB,
    DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_VIDEO_FILE_SIZE_MB,
)


@contextlib.contextmanager
def _collector_paused_for_startup(process_ends_after: bool):
    """Import Dagster and create the run's instance without the cyclic garbage collector, then
    freeze what was made, when this process ends right after the conversion (the console
    script). Importing Dagster and creating its instance makes ~300,000 long-lived objects: the
    collector's passes over them cost ~0.3 s of a one-episode conversion (~2.8 s), and each
    later full pass during the run would walk them again; frozen objects are never scanned.
    Module-level objects live until the process ends anyway. Not done when ``main`` is called
    inside a longer-lived process (tests, a notebook): freezing would keep its garbage forever."""
    if not process_ends_after:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _cmd_convert(args, *, process_ends_after: bool = False) -> int:
    with contextlib.ExitStack() as stack:
        with _collector_paused_for_startup(process_ends_after):
            from dorobot_assets.defs.convert import convert_recording, scratch_instance
            from dorobot_assets.defs.resources import VideoEncoderResource
            from dorobot_assets.definitions import defs  # noqa: F401  (the run imports it: count it here)

            instance = stack.enter_context(scratch_instance())
        settings = ConversionSettings(
            data_file_size_mb=args.data_file_size_mb,
            video_file_size_mb=args.video_file_size_mb,
            audio_file_size_mb=args.audio_file_size_mb,
            stats=args.stats,
            missing_cameras="drop" if args.drop_missing_cameras else "error",
            reencode=args.reencode,
            video_workers=args.video_workers,
            stats_workers=args.stats_workers,
        )
        encoder = encoders.EncoderConfig(
            backend=args.encoder, codec=args.video_codec, crf=args.crf, gop=args.gop, preset=args.video_preset,
            ffmpeg=args.ffmpeg, npu_device_id=args.npu_device, npu_channels=args.npu_channels,
            npu_fallback_to_libx264=args.npu_fallback,
        )
        run = convert_recording(args.src, args.out, settings, work=args.work, log_level=args.log_level,
                                instance=instance,
                                resources={"video_encoder": VideoEncoderResource.from_config(encoder)})
        if args.step_times:
            Path(args.step_times).write_text(json.dumps(run.step_seconds, indent=2))
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


# The UI's defaults are the demo's instance and folders, so the UI shows what the demo converted.
UI_HOME = "dagster_home"
UI_INBOX = "demo/inbox"
UI_OUTPUT = "demo/output"
DAGSTER_YAML_TEMPLATE = "dagster.yaml.template"


def project_root() -> Path:
    """The checkout this package was installed from (it holds dagster.yaml.template), else the cwd."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / DAGSTER_YAML_TEMPLATE).is_file() else Path.cwd()


def _cmd_ui(args) -> int:
    import shutil
    import signal

    root = project_root()
    home = Path(os.environ.get("DAGSTER_HOME") or root / UI_HOME).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault("DOROBOT_INBOX", str(root / UI_INBOX))
    os.environ.setdefault("DOROBOT_OUTPUT", str(root / UI_OUTPUT))
    for folder in (home, Path(os.environ["DOROBOT_INBOX"]), Path(os.environ["DOROBOT_OUTPUT"])):
        folder.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        template = root / DAGSTER_YAML_TEMPLATE
        if not template.is_file():
            print(f"error: {config} is missing and there is no {template} to copy", file=sys.stderr)
            return 2
        shutil.copyfile(template, config)
    print(f"Dagster instance: {home}\ninbox watched by the sensor: {os.environ['DOROBOT_INBOX']}\n"
          f"datasets: {os.environ['DOROBOT_OUTPUT']}\nUI: http://{args.host}:{args.port}", flush=True)
    dagster = Path(sys.executable).with_name("dagster")
    argv = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", "dorobot_assets",
            "-h", args.host, "-p", str(args.port)]
    # A background job of a non-interactive shell starts with SIGINT ignored, and dagster dev
    # handles SIGTERM through its SIGINT handler: restore SIGINT so SIGTERM stops it too.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execvp(argv[0], argv)
    return 0  # not reached: exec replaces this process


def _cmd_validate(args) -> int:
    from dorobot_assets.lib import validate

    results = validate.validate_dataset(args.path, deep=args.deep)
    if args.json:
        print(json.dumps(validate.results_to_json(results, args.path), indent=2))
    else:
        print(validate.format_report(results, args.path))
    return 0 if validate.is_valid(results) else 1


def _parse_cameras(spec: str):
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


def _cmd_bench(args) -> int:
    from dorobot_assets.lib import bench

    try:
        cfg = bench.config_from_options(**{k: v for k, v in vars(args).items() if k not in ("command", "func", "json")})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = bench.run_bench(cfg)
    path = bench.write_json(result, args.json or cfg.cache / "results" / "latest.json")
    print(bench.format_table(result))
    print(f"\nresults: {path}")
    return 0 if bench.all_ok(result) else 1


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
    c.add_argument("--video-workers", type=int, default=DEFAULT_VIDEO_WORKERS, help="cameras converted at once")
    c.add_argument("--stats-workers", type=int, default=DEFAULT_STATS_WORKERS,
                   help="decoding threads for camera statistics with --stats recompute (1: in-process)")
    c.add_argument("--reencode", action="store_true",
                   help="transcode every video through --encoder instead of copying it (stream copy is the default)")
    c.add_argument("--encoder", choices=encoders.BACKENDS, default=encoders.DEFAULT_BACKEND,
                   help="with --reencode: pyav (in-process), ffmpeg (an ffmpeg executable), npu (Ascend h264_ascend)")
    c.add_argument("--video-codec", choices=encoders.SOFTWARE_CODECS, default=encoders.DEFAULT_CODEC,
                   help="codec of the pyav and ffmpeg encoders")
    c.add_argument("--crf", type=int, default=encoders.DEFAULT_CRF)
    c.add_argument("--gop", type=int, default=encoders.DEFAULT_GOP, help="key frame interval")
    c.add_argument("--video-preset", default=None, help="encoder preset (default: the encoder's own)")
    c.add_argument("--ffmpeg", default=None, help="ffmpeg executable for --encoder ffmpeg|npu (default: ffmpeg on PATH)")
    c.add_argument("--npu-device", type=int, default=encoders.DEFAULT_NPU_DEVICE, help="Ascend device id")
    c.add_argument("--npu-channels", type=int, default=encoders.DEFAULT_NPU_CHANNELS,
                   help="NPU encoding channels used at once")
    c.add_argument("--npu-fallback", action="store_true",
                   help="encode with libx264 when h264_ascend is missing or every NPU channel stays busy")
    c.add_argument("--work", type=Path, default=None, help="work folder (manifests, caches)")
    c.add_argument("--log-level", default="CRITICAL", help="Dagster console log level (e.g. INFO)")
    c.add_argument("--step-times", type=Path, default=None, help="write seconds per asset step as JSON to this file")
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

    v = sub.add_parser("validate", help="run the DuckDB checks on any v3.0 dataset; exit 1 when an error-level check fails")
    v.add_argument("path", type=Path)
    v.add_argument("--json", action="store_true", help="print the results as JSON")
    v.add_argument("--deep", action="store_true", help="also decode every video frame to check its timestamp")
    v.set_defaults(func=_cmd_validate)

    u = sub.add_parser("ui", help="serve the web UI with the inbox sensor (dagster dev on a persistent $DAGSTER_HOME)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=_cmd_ui)

    b = sub.add_parser("bench", help="benchmark convert and dagster asset materialize (optionally against LeRobot's converter)")
    b.add_argument("--sizes", "--episodes", dest="sizes", default=None,
                   help="comma-separated episode counts (default 200,2000; with --quick 20)")
    b.add_argument("--quick", action="store_true", help="one repeat, --stats copy, default executor only")
    b.add_argument("--repeat", type=int, default=None, help="runs of each workload, alternating (default 2; --quick 1)")
    b.add_argument("--stats", default=None, help="comma-separated stats modes (default copy,recompute; --quick copy)")
    b.add_argument("--entry", default=None, help="comma-separated: convert, materialize (default both)")
    b.add_argument("--executors", default=None,
                   help="executors to measure dagster asset materialize with: default (the project's), "
                        "in_process, multiprocess (default: default)")
    b.add_argument("--cameras", default=None, help="name:codec,... or none (default top:av1,wrist:h264)")
    b.add_argument("--data-file-size-mb", type=float, default=None, help="data rollover limit given to every converter")
    b.add_argument("--video-file-size-mb", type=float, default=None, help="video rollover limit (default: each converter's)")
    b.add_argument("--official-python", type=Path, default=None,
                   help="a Python with lerobot==0.4.4: also run LeRobot's converter on the same recordings")
    b.add_argument("--cache", type=Path, default=None, help="recordings and scratch space (default .bench_cache)")
    b.add_argument("--json", type=Path, default=None, help="write the results here (default <cache>/results/latest.json)")
    b.add_argument("--no-fixed-overhead", action="store_true", help="skip the 1-episode runs")
    b.add_argument("--no-floors", action="store_true", help="skip the copy and decode floors")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None, *, process_ends_after: bool = False) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func is _cmd_convert:
            return _cmd_convert(args, process_ends_after=process_ends_after)
        return args.func(args)
    except DorobotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script (and ``python -m dorobot_assets.cli``). After ``convert`` the process
    ends at once: every file is written and closed, the run's temporary folder removed, and the
    interpreter's orderly teardown (collecting Dagster's run objects, joining idle pool threads)
    took ~0.7 s, a quarter of a one-episode conversion."""
    argv = sys.argv[1:]
    ends_after = argv[:1] == ["convert"]
    code = main(argv, process_ends_after=ends_after)
    if ends_after:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

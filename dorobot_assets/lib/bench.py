"""The benchmark behind ``dorobot-assets bench`` (issue 8). Plain Python: every conversion runs as a
separate process (``dorobot-assets convert``, ``dagster asset materialize``, LeRobot's converter in
its own venv) so that wall time, CPU time and the peak memory of the whole process tree are those a
user sees, start-up included.

- Recordings are synthetic (``synthetic.make_recording``) and cached under the cache folder; the
  recipe (episodes, cameras, lengths) is in the folder name, so a changed recipe builds anew.
- Peak memory: a thread samples ``/proc`` every ``SAMPLE_INTERVAL_S``, following children of every
  thread, and keeps the largest sum of RSS (and of PSS, which splits pages shared between the
  processes of a tree, e.g. Dagster's step processes) seen at once.
- Floors, measured in the same run: copying the recording's bytes (each read once, written once),
  and decoding exactly the frames LeRobot's camera-stats sampling rule needs (plus the frames they
  depend on), on every core.
- Runs alternate (ours, official, ours, ...) so that a change of machine load hits both sides.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")

DEFAULT_SIZES = (200, 2000)
QUICK_SIZES = (20,)
DEFAULT_CAMERAS = "top:av1,wrist:h264"
CAMERA_WIDTH, CAMERA_HEIGHT = 320, 240
# Episode lengths are drawn from this grid: 150..450 frames. Few distinct lengths let
# make_recording(reuse_videos=True) encode each (camera, length) once.
LENGTH_GRID = tuple(range(150, 451, 10))
FIXED_OVERHEAD_LENGTH = 300  # the 1-episode recording that measures Dagster's fixed overhead
RECIPE_VERSION = 1  # bump when the recording recipe changes, so cached recordings are rebuilt
# The 2000-episode recording holds ~60 MB of data (one file at LeRobot's 100 MB default); a lower
# data limit makes it roll over into several files as the issue asks. Videos roll over at 200 MB.
DEFAULT_DATA_FILE_SIZE_MB = 16.0
DEFAULT_REPEAT = 2
DEFAULT_CACHE = ".bench_cache"  # relative to the working directory; git ignores it
SAMPLE_INTERVAL_S = 0.02
COPY_BLOCK = 1 * MIB
STATS_MODES = ("copy", "recompute")
ENTRIES = ("convert", "materialize")
# How `dagster asset materialize` picks its executor: "default" is whatever the Definitions
# configure; the others select a branch of Dagster's multi_or_in_process executor by run config.
EXECUTOR_CONFIG = {
    "default": None,
    "in_process": {"in_process": {}},
    "multiprocess": {"multiprocess": {}},
}
OFFICIAL_LABEL = "official"
OFFICIAL_REPO_ID = "bench/recording"  # 0.4.4 reads <root>/<repo_id>

# The targets of issue 8, checked against the figures of one run.
TARGET_WALL_RATIO = {200: 0.25, 2000: 0.2}  # ours / official with --stats copy
TARGET_PEAK_RSS_MIB = 300.0
TARGET_RSS_GROWTH = 1.10  # peak at the largest size / at the smallest
TARGET_FIXED_OVERHEAD_S = 3.0
TARGET_RECOMPUTE_VS_DECODE = 1.25
TARGET_NUMERIC_QUANTILE_EXTRA = 0.20


# ----------------------------------------------------------------------------- configuration


@dataclass
class BenchConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    cameras: str = DEFAULT_CAMERAS  # "name:codec,..." or "none"
    stats: tuple[str, ...] = STATS_MODES
    entries: tuple[str, ...] = ENTRIES
    executors: tuple[str, ...] = ("default",)  # for `dagster asset materialize`
    repeat: int = DEFAULT_REPEAT
    cache: Path = Path(DEFAULT_CACHE)
    official_python: Path | None = None
    data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB
    video_file_size_mb: float | None = None  # None: the converter's default
    numeric_twin: bool = True  # also convert a camera-less twin, to time numeric quantiles alone
    fixed_overhead: bool = True
    floors: bool = True
    seed: int = 0
    python: Path = Path(sys.executable)
    quick: bool = False


def _items(text: str | None, default: tuple) -> tuple:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else tuple(default)


def config_from_options(
    *, sizes: str | None = None, quick: bool = False, repeat: int | None = None, stats: str | None = None,
    entry: str | None = None, executors: str | None = None, cameras: str | None = None,
    data_file_size_mb: float | None = None, video_file_size_mb: float | None = None,
    official_python: Path | None = None, cache: Path | None = None,
    no_fixed_overhead: bool = False, no_floors: bool = False,
) -> BenchConfig:
    """A BenchConfig from the command line's strings; ``quick`` picks small, fast defaults."""
    cfg = BenchConfig(
        sizes=tuple(int(x) for x in _items(sizes, QUICK_SIZES if quick else DEFAULT_SIZES)),
        cameras=cameras or DEFAULT_CAMERAS,
        stats=_items(stats, ("copy",) if quick else STATS_MODES),
        entries=_items(entry, ENTRIES),
        executors=_items(executors, ("default",) if quick else tuple(EXECUTOR_CONFIG)),
        repeat=repeat or (1 if quick else DEFAULT_REPEAT),
        cache=Path(cache or DEFAULT_CACHE).resolve(),
        official_python=Path(official_python) if official_python else None,
        data_file_size_mb=data_file_size_mb or DEFAULT_DATA_FILE_SIZE_MB,
        video_file_size_mb=video_file_size_mb,
        numeric_twin=not quick,
        fixed_overhead=not no_fixed_overhead,
        floors=not no_floors,
        quick=quick,
    )
    bad = ([x for x in cfg.stats if x not in STATS_MODES] + [x for x in cfg.entries if x not in ENTRIES]
           + [x for x in cfg.executors if x not in EXECUTOR_CONFIG])
    if bad:
        raise ValueError(f"unknown bench choices {bad}")
    if any(n < 1 for n in cfg.sizes) or cfg.repeat < 1:
        raise ValueError("sizes and --repeat must be >= 1")
    if cfg.official_python is not None and not cfg.official_python.exists():
        raise ValueError(f"{cfg.official_python} does not exist")
    return cfg


def all_ok(result: dict) -> bool:
    """Every workload succeeded at least once at every size."""
    return all(s.get("ok") for entry in result["sizes"].values() for s in entry["summary"].values()) and all(
        s.get("ok") for s in result.get("fixed_overhead_summary", {}).values())


def camera_specs(spec: str) -> list:
    from dorobot_assets.lib.synthetic import CameraSpec

    if spec in ("", "none"):
        return []
    cams = []
    for item in spec.split(","):
        name, _, codec = item.partition(":")
        cams.append(CameraSpec(f"observation.images.{name}", codec or "av1", CAMERA_WIDTH, CAMERA_HEIGHT))
    return cams


# ----------------------------------------------------------------------------- recordings


@dataclass
class RecordingInfo:
    path: Path
    episodes: int
    frames: int
    cameras: int
    files: int
    bytes: int
    generate_s: float  # how long building it took (0 when it came from the cache)
    cached: bool


def recording_name(episodes: int, cameras: str, seed: int) -> str:
    cams = "nocam" if cameras in ("", "none") else cameras.replace(":", "-").replace(",", "_")
    return f"ep{episodes}-{cams}-{CAMERA_WIDTH}x{CAMERA_HEIGHT}-s{seed}-r{RECIPE_VERSION}"


def episode_lengths(episodes: int, seed: int, fixed: int | None = None) -> list[int]:
    if fixed is not None:
        return [fixed] * episodes
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(LENGTH_GRID, size=episodes)]


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) below ``root``; hard-linked files count once per name, as a copy would."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            total += os.stat(os.path.join(dirpath, name)).st_size
    return files, total


def ensure_recording(cache: Path, episodes: int, cameras: str, seed: int, length: int | None = None) -> RecordingInfo:
    """The cached synthetic recording for this recipe, built (into a ``.part`` folder, then renamed) if absent."""
    from dorobot_assets.lib import synthetic

    name = recording_name(episodes, cameras, seed) + (f"-len{length}" if length else "")
    folder = Path(cache).resolve() / "recordings" / name
    sidecar = folder.with_name(name + ".json")
    if folder.is_dir() and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        return RecordingInfo(path=folder, cached=True, **{**meta, "generate_s": meta["generate_s"]})
    part = folder.with_name(name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    lengths = episode_lengths(episodes, seed, length)
    t0 = time.perf_counter()
    synthetic.make_recording(part, lengths=lengths, cameras=camera_specs(cameras), seed=seed, reuse_videos=True)
    generate_s = time.perf_counter() - t0
    part.rename(folder)
    files, size = tree_size(folder)
    meta = {"episodes": episodes, "frames": int(sum(lengths)), "cameras": len(camera_specs(cameras)),
            "files": files, "bytes": size, "generate_s": round(generate_s, 3)}
    sidecar.write_text(json.dumps(meta, indent=2))
    return RecordingInfo(path=folder, cached=False, **meta)


def link_tree(src: Path, dst: Path) -> None:
    """A copy of ``src``'s folders whose files are hard links (LeRobot's converter only renames
    folders and reads files, so the cached recording stays as it was)."""
    for dirpath, _dirs, names in os.walk(src):
        target = dst / os.path.relpath(dirpath, src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.link(os.path.join(dirpath, name), target / name)


# ----------------------------------------------------------------------------- measuring a process tree


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return kids


def process_tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS and PSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.max_processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = process_tree(self.pid)
            self.max_processes = max(self.max_processes, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_rss_bytes(p) for p in pids))
            self.peak_pss = max(self.peak_pss, sum(_pss_bytes(p) for p in pids))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Measurement:
    label: str
    ok: bool
    wall_s: float
    cpu_s: float
    peak_rss_mib: float = 0.0  # sum over the process tree at the worst moment
    peak_pss_mib: float = 0.0
    max_process_rss_mib: float = 0.0  # the kernel's high-water mark of the largest single process
    processes: int = 1
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per Dagster step (asset)
    error: str = ""
    extra: dict = field(default_factory=dict)


def run_measured(label: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> Measurement:
    """Run ``cmd`` to completion; wall, CPU (the tree's, from wait4) and peak tree memory."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{label.replace('/', '_')}.out", log_dir / f"{label.replace('/', '_')}.err"
    load_before = os.getloadavg()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    error = ""
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-15:]
        error = f"exit {proc.returncode}: " + "\n".join(tail)
    return Measurement(
        label=label, ok=proc.returncode == 0, wall_s=round(wall, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mib=round(sampler.peak_rss / MIB, 1), peak_pss_mib=round(sampler.peak_pss / MIB, 1),
        max_process_rss_mib=round(usage.ru_maxrss / 1024, 1), processes=sampler.max_processes,
        load_before=load_before, load_after=os.getloadavg(), error=error,
    )


# ----------------------------------------------------------------------------- floors


def copy_floor(src: Path, dst: Path) -> Measurement:
    """Copy every file of ``src`` through user space in 1 MiB blocks: each byte read once and
    written once, no conversion. What any converter that writes a full new dataset must pay."""
    load_before = os.getloadavg()
    buf = bytearray(COPY_BLOCK)
    view = memoryview(buf)
    shutil.rmtree(dst, ignore_errors=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for dirpath, _dirs, names in os.walk(src):
        target = dst / os.path.relpath(dirpath, src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as fi, open(target / name, "wb", buffering=0) as fo:
                while n := fi.readinto(buf):
                    fo.write(view[:n])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    shutil.rmtree(dst, ignore_errors=True)
    return Measurement("copy_floor", True, round(wall, 3), round(cpu, 3), load_before=load_before,
                       load_after=os.getloadavg())


def _decode_sampled(path: str, length: int) -> tuple[int, int]:
    """Decode the frames LeRobot samples for camera stats from one episode MP4 (and the frames
    back to the preceding key frame that they need), converting only sampled ones to RGB.
    Returns (frames decoded, frames sampled)."""
    import av

    from dorobot_assets.lib.synthetic import sample_indices

    wanted = set(int(i) for i in sample_indices(length))
    decoded = converted = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        pending: list = []  # packets since the last key frame, not yet decoded
        index = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_keyframe:
                pending = []
            pending.append((index, packet))
            if index in wanted:
                for i, p in pending:
                    for frame in codec.decode(p):
                        decoded += 1
                        if i in wanted:
                            frame.to_ndarray(format="rgb24")
                            converted += 1
                pending = []
            index += 1
        for frame in codec.decode(None):
            decoded += 1
    return decoded, converted


def _decode_batch(jobs: list[tuple[str, int]]) -> tuple[int, int]:
    decoded = converted = 0
    for path, length in jobs:
        d, c = _decode_sampled(path, length)
        decoded += d
        converted += c
    return decoded, converted


def decode_floor(rec_path: Path, workers: int | None = None) -> Measurement:
    """Decode exactly the frames camera statistics need (LeRobot's sampling rule), every camera of
    every episode, spread over ``workers`` processes (default: every core)."""
    from dorobot_assets.lib.v21 import read_recording

    rec = read_recording(rec_path)
    jobs = [(str(ep.video_paths[k]), ep.length) for ep in rec.episodes for k in rec.video_keys]
    workers = workers or os.cpu_count() or 1
    batches = [jobs[i::workers * 8] for i in range(min(len(jobs), workers * 8))]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    decoded = converted = 0
    if jobs:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            for d, c in pool.map(_decode_batch, batches):
                decoded += d
                converted += c
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measurement(
        "decode_floor", True, round(wall, 3), round(cpu, 3), load_before=load_before, load_after=os.getloadavg(),
        extra={"videos": len(jobs), "frames_decoded": decoded, "frames_sampled": converted, "workers": workers,
               "ms_per_sampled_frame_cpu": round(cpu / converted * 1000, 3) if converted else None},
    )


# ----------------------------------------------------------------------------- conversions


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOROBOT_", "DAGSTER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _dataset_ok(dataset: Path, episodes: int) -> str:
    info = dataset / "meta" / "info.json"
    if not info.is_file():
        return f"{info} was not written"
    meta = json.loads(info.read_text())
    if meta.get("codebase_version") != "v3.0" or meta.get("total_episodes") != episodes:
        return f"{info}: codebase_version {meta.get('codebase_version')}, total_episodes {meta.get('total_episodes')}"
    return ""


def _finish(m: Measurement, dataset: Path, episodes: int) -> Measurement:
    if m.ok:
        problem = _dataset_ok(dataset, episodes)
        if problem:
            m.ok, m.error = False, problem
    if m.ok:
        m.extra["output_files"], m.extra["output_bytes"] = tree_size(dataset)
        m.extra["data_files"] = len(list(dataset.glob("data/*/*.parquet")))
        m.extra["video_files"] = len(list(dataset.glob("videos/*/*/*.mp4")))
    return m


def _size_args(cfg: BenchConfig) -> list[str]:
    args = ["--data-file-size-mb", str(cfg.data_file_size_mb)]
    if cfg.video_file_size_mb is not None:
        args += ["--video-file-size-mb", str(cfg.video_file_size_mb)]
    return args


def run_convert(cfg: BenchConfig, rec: RecordingInfo, stats: str, run_dir: Path, label: str) -> Measurement:
    shutil.rmtree(run_dir, ignore_errors=True)
    dataset, timings = run_dir / "dataset", run_dir / "steps.json"
    cmd = [str(cfg.python), "-m", "dorobot_assets.cli", "convert", str(rec.path), str(dataset),
           "--stats", stats, "--work", str(run_dir / "work"), "--step-times", str(timings), *_size_args(cfg)]
    m = run_measured(label, cmd, _clean_env(), run_dir.parent / "logs")
    if timings.is_file():
        m.steps = json.loads(timings.read_text())
    m = _finish(m, dataset, rec.episodes)
    shutil.rmtree(run_dir, ignore_errors=True)
    return m


class DagsterHome:
    """A temporary Dagster instance (``DAGSTER_HOME``) with the recordings registered as partitions."""

    def __init__(self, cfg: BenchConfig, folder: Path):
        self.cfg, self.folder = cfg, folder
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "home").mkdir(parents=True)
        template = Path(__file__).resolve().parents[2] / "dagster.yaml.template"
        config = "telemetry:\n  enabled: false\n"
        if template.is_file():
            config = template.read_text()
        (folder / "home" / "dagster.yaml").write_text(config)
        self.keys: dict[Path, str] = {}

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env["DAGSTER_HOME"] = str(self.folder / "home")
        env["DOROBOT_OUTPUT"] = str(self.folder / "output")
        env["DOROBOT_WORK"] = str(self.folder / "work")
        return env

    def register(self, rec: Path) -> str:
        if rec not in self.keys:
            out = subprocess.run([str(self.cfg.python), "-m", "dorobot_assets.cli", "register", str(rec)],
                                 env=self.env(), capture_output=True, text=True, check=True)
            self.keys[rec] = out.stdout.split("\t")[0].strip()
        return self.keys[rec]

    def latest_run_steps(self) -> dict[str, float]:
        """Seconds per step of the newest run, from the instance's SQLite event log."""
        runs = sorted((self.folder / "home" / "history" / "runs").glob("*.db"), key=lambda p: p.stat().st_mtime)
        if not runs:
            return {}
        steps: dict[str, float] = {}
        with sqlite3.connect(runs[-1]) as db:
            rows = db.execute("SELECT step_key, event FROM event_logs WHERE dagster_event_type = 'STEP_SUCCESS'")
            for step_key, event in rows:
                try:
                    data = json.loads(event)["dagster_event"]["event_specific_data"]
                    steps[step_key] = round(data["duration_ms"] / 1000, 3)
                except (KeyError, TypeError, ValueError):
                    continue
        return steps


def dagster_cli(python: Path) -> list[str]:
    exe = python.with_name("dagster")
    return [str(exe)] if exe.exists() else [str(python), "-m", "dagster"]


def run_materialize(
    cfg: BenchConfig, home: DagsterHome, rec: RecordingInfo, stats: str, executor: str, label: str
) -> Measurement:
    key = home.register(rec.path)
    dataset = home.folder / "output" / key
    shutil.rmtree(dataset, ignore_errors=True)
    shutil.rmtree(home.folder / "work" / key, ignore_errors=True)
    conversion = {"stats": stats, "data_file_size_mb": cfg.data_file_size_mb}
    if cfg.video_file_size_mb is not None:
        conversion["video_file_size_mb"] = cfg.video_file_size_mb
    run_config: dict = {"resources": {"conversion": {"config": conversion}}}
    if EXECUTOR_CONFIG[executor] is not None:
        run_config["execution"] = {"config": EXECUTOR_CONFIG[executor]}
    cmd = [*dagster_cli(cfg.python), "asset", "materialize", "-m", "dorobot_assets", "--select", "*",
           "--partition", key, "--config-json", json.dumps(run_config)]
    m = run_measured(label, cmd, home.env(), home.folder / "logs")
    m.steps = home.latest_run_steps()
    m = _finish(m, dataset, rec.episodes)
    shutil.rmtree(dataset, ignore_errors=True)
    return m


# Our own driver for LeRobot's converter, run by the official venv's Python (never imported here).
OFFICIAL_DRIVER = """
import sys
from lerobot.datasets.v30.convert_dataset_v21_to_v30 import convert_dataset
root, repo_id, data_mb, video_mb = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
convert_dataset(repo_id=repo_id, root=root, data_file_size_in_mb=data_mb,
                video_file_size_in_mb=float(video_mb) if video_mb != "default" else None,
                push_to_hub=False, force_conversion=True)
"""


def run_official(cfg: BenchConfig, rec: RecordingInfo, run_dir: Path, label: str) -> Measurement:
    """LeRobot 0.4.4's converter, offline, on a hard-linked copy (it renames folders in place;
    0.4.4's ``root`` is the parent folder of ``<repo_id>``)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    dataset = run_dir / "root" / OFFICIAL_REPO_ID
    link_tree(rec.path, dataset)
    env = _clean_env()
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(run_dir / "hf"),
                "HF_LEROBOT_HOME": str(run_dir / "lerobot_home"), "TOKENIZERS_PARALLELISM": "false"})
    video_mb = "default" if cfg.video_file_size_mb is None else str(cfg.video_file_size_mb)
    cmd = [str(cfg.official_python), "-c", OFFICIAL_DRIVER, str(run_dir / "root"), OFFICIAL_REPO_ID,
           str(cfg.data_file_size_mb), video_mb]
    m = run_measured(label, cmd, env, run_dir.parent / "logs")
    m = _finish(m, dataset, rec.episodes)
    shutil.rmtree(run_dir, ignore_errors=True)
    return m


# ----------------------------------------------------------------------------- the suite


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[Measurement], rec: RecordingInfo) -> dict:
    ok = [m for m in runs if m.ok]
    if not ok:
        return {"ok": False, "error": runs[-1].error if runs else "not run"}
    wall = _median([m.wall_s for m in ok])
    steps: dict[str, list[float]] = {}
    for m in ok:
        for k, v in m.steps.items():
            steps.setdefault(k, []).append(v)
    return {
        "ok": True, "runs": len(ok), "failed": len(runs) - len(ok),
        "wall_s": wall, "wall_s_all": [m.wall_s for m in runs],
        "cpu_s": _median([m.cpu_s for m in ok]),
        "peak_rss_mib": max(m.peak_rss_mib for m in ok), "peak_pss_mib": max(m.peak_pss_mib for m in ok),
        "max_process_rss_mib": max(m.max_process_rss_mib for m in ok),
        "processes": max(m.processes for m in ok),
        "mb_per_s": round(rec.bytes / MIB / wall, 1) if wall else None,
        "frames_per_s": round(rec.frames / wall, 1) if wall else None,
        "steps_s": {k: _median(v) for k, v in sorted(steps.items())},
        "load": [m.load_before[0] for m in ok],
    }


def _workloads(cfg: BenchConfig, official: bool) -> list[tuple[str, str, str | None]]:
    """(label, entry, stats or None) in the order one repeat runs them: ours and the official
    converter alternate, floors sit next to what they bound."""
    order: list[tuple[str, str, str | None]] = []
    if cfg.floors:
        order.append(("copy_floor", "floor", None))
    for stats in cfg.stats:
        if "convert" in cfg.entries:
            order.append((f"convert/{stats}", "convert", stats))
        if stats == "copy" and official:
            order.append((OFFICIAL_LABEL, "official", None))
        if "materialize" in cfg.entries:
            for ex in cfg.executors:
                order.append((f"materialize/{stats}/{ex}", "materialize", stats))
        if stats == "recompute" and cfg.floors and cfg.cameras not in ("", "none"):
            order.append(("decode_floor", "floor", None))
    return order


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(cfg: BenchConfig, progress=_log) -> dict:
    cache = Path(cfg.cache).resolve()
    work = cache / "work"
    official = cfg.official_python is not None
    result: dict = {
        "schema": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_at_start": os.getloadavg(), "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "recordings": {}, "fixed_overhead": {}, "sizes": {},
    }
    home = DagsterHome(cfg, work / "dagster") if "materialize" in cfg.entries else None

    if cfg.fixed_overhead:
        rec1 = ensure_recording(cache, 1, cfg.cameras, cfg.seed, length=FIXED_OVERHEAD_LENGTH)
        result["recordings"]["1"] = _rec_json(rec1)
        fixed: dict[str, list[Measurement]] = {}
        for rep in range(cfg.repeat):
            if "convert" in cfg.entries:
                m = run_convert(cfg, rec1, "copy", work / "run", "fixed/convert")
                fixed.setdefault("convert", []).append(m)
                progress(_line(m, 1))
            if home is not None:
                m = run_materialize(cfg, home, rec1, "copy", cfg.executors[0], "fixed/materialize")
                fixed.setdefault("materialize", []).append(m)
                progress(_line(m, 1))
        result["fixed_overhead"] = {k: [asdict(m) for m in v] for k, v in fixed.items()}
        result["fixed_overhead_summary"] = {k: summarize(v, rec1) for k, v in fixed.items()}

    for size in cfg.sizes:
        t0 = time.perf_counter()
        rec = ensure_recording(cache, size, cfg.cameras, cfg.seed)
        if not rec.cached:
            progress(f"built the {size}-episode recording in {rec.generate_s:.1f} s ({rec.bytes / MIB:.0f} MiB)")
        twin = None
        if cfg.numeric_twin and "recompute" in cfg.stats and cfg.cameras not in ("", "none"):
            twin = ensure_recording(cache, size, "none", cfg.seed)
        result["recordings"][str(size)] = _rec_json(rec)
        runs: dict[str, list[Measurement]] = {}
        for rep in range(cfg.repeat):
            for label, entry, stats in _workloads(cfg, official):
                if label == "copy_floor":
                    m = copy_floor(rec.path, work / "copy")
                elif label == "decode_floor":
                    m = decode_floor(rec.path)
                elif entry == "convert":
                    m = run_convert(cfg, rec, stats, work / "run", label)
                elif entry == "official":
                    m = run_official(cfg, rec, work / "official", label)
                else:
                    executor = label.rsplit("/", 1)[1]
                    m = run_materialize(cfg, home, rec, stats, executor, label)
                runs.setdefault(label, []).append(m)
                progress(_line(m, size))
            if twin is not None and "convert" in cfg.entries:
                for stats in ("copy", "recompute"):
                    label = f"numeric_twin/convert/{stats}"
                    m = run_convert(cfg, twin, stats, work / "run", label)
                    runs.setdefault(label, []).append(m)
                    progress(_line(m, size))
        entry_json = {
            "recording": str(size),
            "runs": {k: [asdict(m) for m in v] for k, v in runs.items()},
            "summary": {k: summarize(v, twin if k.startswith("numeric_twin") and twin else rec) for k, v in runs.items()},
            "bench_seconds": round(time.perf_counter() - t0, 1),
        }
        if twin is not None:
            result["recordings"][f"{size}-numeric_twin"] = _rec_json(twin)
        _add_ratios(entry_json, runs)
        result["sizes"][str(size)] = entry_json
    result["targets"] = check_targets(result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def _rec_json(rec: RecordingInfo) -> dict:
    d = asdict(rec)
    d["path"] = str(rec.path)
    d["mib"] = round(rec.bytes / MIB, 1)
    return d


def _pairwise_ratio(ours: list[Measurement], theirs: list[Measurement]) -> list[float]:
    """Ratios of runs made next to each other (repeat i of ours with repeat i of theirs)."""
    return [round(a.wall_s / b.wall_s, 3) for a, b in zip(ours, theirs) if a.ok and b.ok and b.wall_s]


def _add_ratios(entry: dict, runs: dict[str, list[Measurement]]) -> None:
    summary = entry["summary"]
    ratios: dict = {}
    floor = summary.get("copy_floor", {}).get("wall_s")
    for label, s in summary.items():
        if not s.get("ok") or label in ("copy_floor", "decode_floor"):
            continue
        r: dict = {}
        if floor:
            r["vs_copy_floor"] = round(s["wall_s"] / floor, 2)
        if OFFICIAL_LABEL in runs and label != OFFICIAL_LABEL and summary[OFFICIAL_LABEL].get("ok"):
            r["vs_official"] = round(s["wall_s"] / summary[OFFICIAL_LABEL]["wall_s"], 3)
            r["vs_official_pairwise"] = _pairwise_ratio(runs[label], runs[OFFICIAL_LABEL])
        ratios[label] = r
    copy, recompute = summary.get("convert/copy", {}), summary.get("convert/recompute", {})
    decode = summary.get("decode_floor", {})
    if copy.get("ok") and recompute.get("ok"):
        extra = recompute["wall_s"] - copy["wall_s"]
        ratios["recompute_extra_s"] = round(extra, 3)
        if decode.get("ok") and decode["wall_s"]:
            ratios["recompute_extra_vs_decode_floor"] = round(extra / decode["wall_s"], 3)
    tcopy, trec = summary.get("numeric_twin/convert/copy", {}), summary.get("numeric_twin/convert/recompute", {})
    if tcopy.get("ok") and trec.get("ok"):
        extra = trec["wall_s"] - tcopy["wall_s"]
        ratios["numeric_quantile_extra_s"] = round(extra, 3)
        ratios["numeric_quantile_extra_vs_twin_copy"] = round(extra / tcopy["wall_s"], 3)
        if copy.get("ok"):
            ratios["numeric_quantile_extra_vs_copy"] = round(extra / copy["wall_s"], 3)
    entry["ratios"] = ratios


def check_targets(result: dict) -> list[dict]:
    """Issue 8's targets against this run's figures; a target without figures is 'not measured'."""
    out: list[dict] = []

    def add(name: str, value, limit, holds) -> None:
        out.append({"target": name, "value": value, "limit": limit,
                    "holds": None if value is None else bool(holds)})

    sizes = result["sizes"]
    for size, entry in sizes.items():
        ratio = entry["ratios"].get("convert/copy", {}).get("vs_official")
        limit = TARGET_WALL_RATIO.get(int(size))
        if limit is not None:
            add(f"convert --stats copy wall / official at {size} episodes", ratio, limit, ratio is not None and ratio <= limit)
        for label, s in entry["summary"].items():
            if s.get("ok") and (label.startswith("convert/") or label.startswith("materialize/")):
                add(f"peak RSS (MiB) {label} at {size}", s["peak_rss_mib"], TARGET_PEAK_RSS_MIB,
                    s["peak_rss_mib"] <= TARGET_PEAK_RSS_MIB)
        extra = entry["ratios"].get("recompute_extra_vs_decode_floor")
        add(f"recompute extra / decode floor at {size}", extra, TARGET_RECOMPUTE_VS_DECODE,
            extra is not None and extra <= TARGET_RECOMPUTE_VS_DECODE)
        q = entry["ratios"].get("numeric_quantile_extra_vs_twin_copy")
        add(f"numeric quantiles extra / copy time (camera-less twin) at {size}", q, TARGET_NUMERIC_QUANTILE_EXTRA,
            q is not None and q <= TARGET_NUMERIC_QUANTILE_EXTRA)
    if len(sizes) >= 2:
        small, large = str(min(map(int, sizes))), str(max(map(int, sizes)))
        for label in sizes[small]["summary"]:
            a, b = sizes[small]["summary"][label], sizes[large]["summary"].get(label, {})
            if a.get("ok") and b.get("ok") and a.get("peak_rss_mib") and (label.startswith(("convert/", "materialize/"))):
                growth = round(b["peak_rss_mib"] / a["peak_rss_mib"], 3)
                add(f"peak RSS growth {large} vs {small} episodes, {label}", growth, TARGET_RSS_GROWTH,
                    growth <= TARGET_RSS_GROWTH)
    fixed = result.get("fixed_overhead_summary", {}).get("convert", {})
    add("fixed overhead, 1-episode convert (s)", fixed.get("wall_s"), TARGET_FIXED_OVERHEAD_S,
        fixed.get("wall_s") is not None and fixed["wall_s"] <= TARGET_FIXED_OVERHEAD_S)
    return out


# ----------------------------------------------------------------------------- printing


def _line(m: Measurement, size: int) -> str:
    status = "ok" if m.ok else "FAILED"
    text = (f"[{size:>5} ep] {m.label:<34} {status:<6} wall {m.wall_s:7.2f} s  cpu {m.cpu_s:7.2f} s  "
            f"peak rss {m.peak_rss_mib:7.1f} MiB  load {m.load_before[0]:.1f}")
    if not m.ok:
        text += "\n    " + m.error.replace("\n", "\n    ")
    return text


def format_table(result: dict) -> str:
    lines = []
    head = (f"{'size':>6} {'workload':<34} {'wall s':>8} {'cpu s':>8} {'rss MiB':>8} {'pss MiB':>8} "
            f"{'MB/s':>7} {'frames/s':>9} {'x floor':>7} {'x official':>10}")
    lines.append(head)
    lines.append("-" * len(head))
    fixed = result.get("fixed_overhead_summary", {})
    for entry, s in fixed.items():
        if s.get("ok"):
            lines.append(f"{1:>6} {'fixed overhead/' + entry:<34} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} "
                         f"{s['peak_rss_mib']:>8.1f} {s['peak_pss_mib']:>8.1f}")
    for size, entry in result["sizes"].items():
        for label, s in entry["summary"].items():
            if not s.get("ok"):
                lines.append(f"{size:>6} {label:<34} FAILED: {s.get('error', '').splitlines()[-1:] or ''}")
                continue
            r = entry["ratios"].get(label, {})
            lines.append(
                f"{size:>6} {label:<34} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} {s['peak_rss_mib']:>8.1f} "
                f"{s['peak_pss_mib']:>8.1f} {s['mb_per_s'] or 0:>7.1f} {s['frames_per_s'] or 0:>9.0f} "
                f"{r.get('vs_copy_floor', ''):>7} {r.get('vs_official', ''):>10}"
            )
        steps = {k: v for k, v in entry["summary"].get("convert/copy", {}).get("steps_s", {}).items()}
        if steps:
            lines.append(f"{'':>6} convert/copy seconds per asset: " + ", ".join(f"{k} {v}" for k, v in steps.items()))
        extras = {k: v for k, v in entry["ratios"].items() if not isinstance(v, dict)}
        if extras:
            lines.append(f"{'':>6} " + ", ".join(f"{k} {v}" for k, v in extras.items()))
    lines.append("")
    lines.append("targets (issue 8):")
    for t in result.get("targets", []):
        mark = {True: "holds", False: "MISSED", None: "not measured"}[t["holds"]]
        lines.append(f"  {mark:<12} {t['target']}: {t['value']} (limit {t['limit']})")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path

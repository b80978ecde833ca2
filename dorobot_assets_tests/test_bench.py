"""The benchmark harness (lib/bench.py, `dorobot-assets bench`): fields and sane values, not speed.
Speed and memory targets are checked by running the benchmark itself, never here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import dorobot_assets
from dorobot_assets.cli import main
from dorobot_assets.lib import bench, synthetic
from dorobot_assets.lib.v21 import read_recording, recording_fingerprint


def test_quick_bench_writes_json_with_sane_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--episodes", "2,3", "--quick", "--cameras", "none", "--entry", "convert",
               "--no-fixed-overhead", "--cache", str(tmp_path / "cache"), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpus"] >= 1 and len(result["machine"]["load_at_start"]) == 3
    assert set(result["sizes"]) == {"2", "3"}
    for size, entry in result["sizes"].items():
        rec = result["recordings"][size]
        assert rec["episodes"] == int(size) and rec["frames"] >= 150 * int(size) and rec["bytes"] > 0
        s = entry["summary"]["convert/copy"]
        assert s["ok"] and s["runs"] == 1
        assert 0 < s["wall_s"] < 300 and 0 < s["cpu_s"] < 300
        assert 50 < s["peak_rss_mib"] < 4096 and 0 < s["peak_pss_mib"] <= s["peak_rss_mib"]
        assert s["frames_per_s"] > 0 and s["mb_per_s"] > 0
        assert {"data", "episodes", "info"} <= set(s["steps_s"])  # seconds per asset
        assert entry["summary"]["copy_floor"]["ok"]
        assert entry["ratios"]["convert/copy"]["vs_copy_floor"] > 0
        run = entry["runs"]["convert/copy"][0]
        assert len(run["load_before"]) == 3 and run["extra"]["data_files"] == 1
    names = [t["target"] for t in result["targets"]]
    assert any("peak RSS growth 3 vs 2" in n for n in names)
    printed = capsys.readouterr().out
    assert "convert/copy" in printed and "targets (issue 8)" in printed


def test_recordings_are_cached_and_spec_conformant(tmp_path):
    first = bench.ensure_recording(tmp_path, 2, "top:h264", seed=1)
    again = bench.ensure_recording(tmp_path, 2, "top:h264", seed=1)
    assert not first.cached and again.cached and again.path == first.path
    assert again.generate_s == first.generate_s
    rec = read_recording(first.path)  # the reader's validation passes
    assert len(rec.episodes) == 2 and rec.video_keys == ["observation.images.top"]
    assert all(e.length in bench.LENGTH_GRID for e in rec.episodes)


def test_reused_videos_are_linked_and_keep_their_stats(tmp_path):
    cams = synthetic.demo_cameras()
    root = synthetic.make_recording(tmp_path / "r", lengths=[12, 12, 13], cameras=cams, reuse_videos=True)
    rec = read_recording(root)
    top = [rec.episodes[i].video_paths[cams[0].key] for i in range(3)]
    assert os.path.samefile(top[0], top[1]) and not os.path.samefile(top[0], top[2])
    stats = [json.loads(line)["stats"] for line in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert stats[0][cams[0].key] == stats[1][cams[0].key]
    plain = synthetic.make_recording(tmp_path / "p", lengths=[12, 12, 13], cameras=cams)
    p0 = plain / "videos/chunk-000/observation.images.top/episode_000000.mp4"
    p1 = plain / "videos/chunk-000/observation.images.top/episode_000001.mp4"
    assert not os.path.samefile(p0, p1)  # the default is unchanged


def test_tree_sampler_sums_a_process_tree(tmp_path):
    # A parent holding ~60 MiB with a child holding ~60 MiB: the tree peak sees both.
    code = ("import subprocess, sys, time; b = bytearray(60 << 20); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; b = bytearray(60 << 20); time.sleep(1.5)']); "
            "c.wait()")
    m = bench.run_measured("tree", [sys.executable, "-c", code], dict(os.environ), tmp_path / "logs")
    assert m.ok and m.processes >= 2
    assert m.peak_rss_mib > 120 and 60 < m.max_process_rss_mib < m.peak_rss_mib
    assert m.wall_s >= 1.5 and m.cpu_s > 0


def test_failed_run_is_recorded_not_raised(tmp_path):
    m = bench.run_measured("fails", [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                           dict(os.environ), tmp_path / "logs")
    assert not m.ok and "exit 3" in m.error and "boom" in m.error
    assert bench.summarize([m], bench.RecordingInfo(tmp_path, 1, 1, 0, 1, 1, 0.0, True)) == {
        "ok": False, "error": m.error}


def test_floors_on_a_tiny_recording(tmp_path):
    root = synthetic.make_recording(tmp_path / "r", lengths=[120, 30], cameras=synthetic.demo_cameras())
    copy = bench.copy_floor(root, tmp_path / "copy")
    assert copy.ok and copy.wall_s >= 0 and not (tmp_path / "copy").exists()
    decode = bench.decode_floor(root, workers=2)
    sampled = len(synthetic.sample_indices(120)) + len(synthetic.sample_indices(30))
    assert decode.extra["frames_sampled"] == 2 * sampled  # two cameras
    # AV1 (g=2) needs the key frame before an odd sampled frame; all-intra H.264 needs nothing more.
    assert 2 * sampled <= decode.extra["frames_decoded"] <= 2 * 2 * sampled
    assert decode.cpu_s > 0


def test_official_runs_on_a_linked_copy_that_leaves_the_cache_alone(tmp_path):
    rec = bench.ensure_recording(tmp_path, 2, "none", seed=0)
    before = recording_fingerprint(rec.path)
    # A stand-in for LeRobot's Python: renames the dataset in place and writes a v3.0 info.json,
    # as convert_dataset does (the real one is far too heavy for a test).
    fake = tmp_path / "fake_python"
    # ... and that runs with Arrow's own allocator unless the user chose one (ours is glibc's).
    expected_pool = None if dorobot_assets.ARROW_POOL_CHOSEN_HERE else os.environ["ARROW_DEFAULT_MEMORY_POOL"]
    fake.write_text(
        "#!" + sys.executable + "\n"
        "import json, os, sys\n"
        f"assert os.environ.get('ARROW_DEFAULT_MEMORY_POOL') == {expected_pool!r}, os.environ.get('ARROW_DEFAULT_MEMORY_POOL')\n"
        "root, repo = sys.argv[3], sys.argv[4]\n"
        "ds = os.path.join(root, repo)\n"
        "os.rename(ds, ds + '_old')\n"
        "os.makedirs(os.path.join(ds, 'meta'))\n"
        "json.dump({'codebase_version': 'v3.0', 'total_episodes': 2}, open(os.path.join(ds, 'meta', 'info.json'), 'w'))\n"
    )
    fake.chmod(0o755)
    cfg = bench.BenchConfig(official_python=fake, cache=tmp_path)
    m = bench.run_official(cfg, rec, tmp_path / "official", "official")
    assert m.ok, m.error
    assert recording_fingerprint(rec.path) == before
    assert not (tmp_path / "official").exists()


def test_targets_and_table_from_figures():
    def summary(wall, rss):
        return {"ok": True, "wall_s": wall, "cpu_s": wall, "peak_rss_mib": rss, "peak_pss_mib": rss,
                "mb_per_s": 1.0, "frames_per_s": 1.0, "steps_s": {"data": 0.1}}

    def entry(ours, official, rss):
        return {"summary": {"convert/copy": summary(ours, rss), "official": summary(official, 900)},
                "ratios": {"convert/copy": {"vs_official": round(ours / official, 3)}}}

    result = {"sizes": {"200": entry(2.0, 10.0, 250), "2000": entry(30.0, 100.0, 290)},
              "fixed_overhead_summary": {"convert": summary(2.5, 200)}}
    targets = {t["target"]: t for t in bench.check_targets(result)}
    assert targets["convert --stats copy wall / official at 200 episodes"]["holds"] is True
    assert targets["convert --stats copy wall / official at 2000 episodes"]["holds"] is False  # 0.3 > 0.2
    assert targets["peak RSS growth 2000 vs 200 episodes, convert/copy"]["holds"] is False  # 1.16 > 1.10
    assert targets["fixed overhead, 1-episode convert (s)"]["holds"] is True
    assert targets["recompute extra / decode floor at 200"]["holds"] is None  # not measured
    result["targets"] = list(targets.values())
    table = bench.format_table(result)
    assert "MISSED" in table and "holds" in table and "not measured" in table


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError):
        bench.config_from_options(stats="copy,fast")
    cfg = bench.config_from_options(quick=True)
    assert cfg.sizes == bench.QUICK_SIZES and cfg.repeat == 1 and cfg.stats == ("copy",)
    full = bench.config_from_options(executors="in_process,multiprocess")
    assert full.sizes == bench.DEFAULT_SIZES and full.executors == ("in_process", "multiprocess")


def test_conversions_allocate_arrow_buffers_with_glibc_unless_the_user_chose():
    """Arrow's buffers come from glibc's malloc (mimalloc kept freed segments: +13 MiB peak at
    2000 episodes); a pool the user names in ARROW_DEFAULT_MEMORY_POOL is left alone."""
    import subprocess

    code = "import dorobot_assets.lib.v21, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "jemalloc"


def test_sampler_reads_rss_often_and_pss_rarely(monkeypatch):
    """PSS (smaps_rollup) stalls the measured process's memory map while the kernel walks it, so
    the sampler reads it every PSS_INTERVAL_S and RSS (statm) every SAMPLE_INTERVAL_S."""
    import subprocess

    calls = {"rss": 0, "pss": 0}
    rss, pss = bench._rss_bytes, bench._pss_bytes

    def count(kind, fn):
        def counted(pid):
            calls[kind] += 1
            return fn(pid)
        return counted

    monkeypatch.setattr(bench, "_rss_bytes", count("rss", rss))
    monkeypatch.setattr(bench, "_pss_bytes", count("pss", pss))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.2)"])
    sampler = bench.TreeSampler(proc.pid)
    sampler.start()
    proc.wait()
    sampler.stop()
    assert calls["rss"] >= 20  # every 20 ms over 1.2 s, give or take the machine's load
    assert 1 <= calls["pss"] <= 1.2 / bench.PSS_INTERVAL_S + 2
    assert 0 < sampler.peak_pss <= sampler.peak_rss

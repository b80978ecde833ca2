"""What the web UI shows for a conversion: every materialization records episodes, frames,
files, bytes, duration and output path; meta/episodes and meta/stats.json get markdown previews."""

from __future__ import annotations

import json

import numpy as np

from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib import report
from dorobot_assets.lib.settings import ConversionSettings

SUMMARY_KEYS = {"episodes", "frames", "duration_s", "files", "bytes", "path"}


def materializations(run) -> dict[str, dict]:
    out = {}
    for event in run.result.all_events:
        if event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return out


def test_every_materialization_reports_the_summary_and_previews(tmp_path, make_sample):
    rec = make_sample("rec", lengths=[30, 31, 32, 33, 34, 35, 36], fps=30)
    run = convert_recording(rec, tmp_path / "out", ConversionSettings(stats="copy"))
    assert run.success, run.error
    shown = materializations(run)

    assert set(shown) == {"tasks", "data", "videos", "audio", "episode_stats", "episodes", "dataset_stats", "info"}
    for asset, metadata in shown.items():
        assert SUMMARY_KEYS <= set(metadata), asset
        assert metadata["episodes"] == 7 and metadata["duration_s"] == round(231 / 30, 3), asset
    dataset = tmp_path / "out"
    on_disk = [p for p in dataset.rglob("*") if p.is_file()]
    assert shown["info"]["path"] == str(dataset) and shown["info"]["frames"] == 231
    assert (shown["info"]["files"], shown["info"]["bytes"]) == (len(on_disk), sum(p.stat().st_size for p in on_disk))
    assert (shown["data"]["files"], shown["videos"]["files"]) == (1, 0)

    # meta/episodes preview: the first five episodes, where they landed, and how many there are.
    episodes_md = shown["episodes"]["preview"]
    rows = [line for line in episodes_md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1", "| 2", "| 3", "| 4"]
    assert "| 0 | 30 | pick up the cube | chunk 0 file 0 | 0–30 |" in episodes_md
    assert "First 5 of 7 episodes." in episodes_md

    # Stats preview: one row per feature of meta/stats.json with its overall range.
    stats = json.loads((dataset / "meta" / "stats.json").read_text())
    stats_md = shown["dataset_stats"]["preview"]
    for feature, values in stats.items():
        row = next(line for line in stats_md.splitlines() if line.startswith(f"| `{feature}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) == float(f"{np.min(values['min']):.5g}")
        assert float(cells[7]) == float(f"{np.max(values['max']):.5g}")
        assert cells[4:7] == ["", "", ""]  # copied v2.1 stats have no quantiles
    assert shown["info"]["preview"] == report.dataset_card(dataset)
    assert "### Episodes" in shown["info"]["preview"] and "### Statistics per feature" in shown["info"]["preview"]


def test_previews_of_an_unfinished_dataset_say_what_is_missing(tmp_path):
    assert "not been written" in report.episodes_preview(tmp_path)
    assert "not been written" in report.stats_summary(tmp_path)

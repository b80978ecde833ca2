"""Warning-level checks of DoRobot audio in a v3.0 dataset (issue: audio).

Both read the audio columns of the episodes table (``meta/episodes``, or during a conversion the
pending one the view carries). Neither is fatal: a recording with a silent microphone or a
drifting sound card still converts, and the user is told which episodes are affected.
"""

from __future__ import annotations

from dorobot_assets.lib.audio import placement_column
from dorobot_assets.lib.validate import (
    WARNING,
    CheckResult,
    DatasetView,
    check,
    failed,
    not_applicable,
    passed,
    q,
    short_list,
)

LISTED = 20  # episode numbers named in a description


@check(
    "audio_wav_present",
    asset="audio",
    severity=WARNING,
    description="Every episode has audio for every microphone. Lists the episodes whose WAV was "
    "missing in the recording; their audio columns are null.",
)
def audio_wav_present(view: DatasetView) -> CheckResult:
    keys = view.audio_keys
    if not keys:
        return not_applicable("dataset has no audio")
    con = view.connect(episodes=True)
    columns = set(view.columns(con, "episodes"))
    episodes = con.execute("SELECT count(*) FROM episodes").fetchone()[0]
    offending: list[dict] = []
    parts: list[str] = []
    for key in keys:
        column = placement_column(key, "file_index")
        # A microphone without placement columns has no audio anywhere.
        where = f"{q(column)} IS NULL" if column in columns else "TRUE"
        absent = [r[0] for r in con.execute(f"SELECT episode_index FROM episodes WHERE {where} ORDER BY ep_row").fetchall()]
        if absent:
            episodes_named = short_list([str(e) for e in absent], LISTED)
            parts.append(f"{key}: no WAV for episode{'s' if len(absent) > 1 else ''} {episodes_named}")
            offending.extend({"audio_key": key, "episode_index": e} for e in absent)
    con.close()
    counts = {"episodes": episodes, "microphones": len(keys), "missing": len(offending)}
    if parts:
        return failed("; ".join(parts), counts, offending)
    return passed(f"all {episodes} episodes have audio for every microphone ({', '.join(keys)})", counts)


@check(
    "audio_duration_matches_episode",
    asset="audio",
    severity=WARNING,
    description="Each episode's audio lasts as long as the episode (length / fps) within one "
    "frame period; longer or shorter audio points at a dropped or drifting microphone.",
)
def audio_duration_matches_episode(view: DatasetView) -> CheckResult:
    keys = view.audio_keys
    if not keys:
        return not_applicable("dataset has no audio")
    fps = view.fps
    period = 1.0 / fps
    con = view.connect(episodes=True)
    columns = set(view.columns(con, "episodes"))
    offending: list[dict] = []
    parts: list[str] = []
    compared = 0
    for key in keys:
        begin, end = placement_column(key, "from_timestamp"), placement_column(key, "to_timestamp")
        if end not in columns:
            continue  # no audio at all for this microphone: audio_wav_present says so
        rows = con.execute(
            f"""
            SELECT episode_index, {q(end)} - {q(begin)} AS audio_s, length / ?::DOUBLE AS episode_s
            FROM episodes WHERE {q(end)} IS NOT NULL ORDER BY ep_row
            """,
            [fps],
        ).fetchall()
        compared += len(rows)
        bad = [(e, a, s) for e, a, s in rows if abs(a - s) > period]
        offending.extend(
            {"audio_key": key, "episode_index": e, "audio_seconds": round(a, 6), "episode_seconds": round(s, 6)}
            for e, a, s in bad
        )
        if bad:
            parts.append(f"{key}: " + short_list([f"episode {e} ({a:.3f} s vs {s:.3f} s)" for e, a, s in bad], LISTED))
    con.close()
    counts = {"compared": compared, "mismatched": len(offending)}
    if parts:
        return failed(
            f"audio duration differs from the episode by more than one frame period ({period:.4f} s): "
            + "; ".join(parts),
            counts, offending,
        )
    return passed(
        f"{compared} episode audio tracks last as long as their episodes (within one frame period, {period:.4f} s)",
        counts,
    )

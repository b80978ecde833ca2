"""One asset per v3.0 artifact, all partitioned by recording. Bodies resolve folders from the
partition key, call one lib function, and report what was written."""


import time
from pathlib import Path

import dagster as dg

from dorobot_assets.defs.checks import info_check_results, info_check_specs
from dorobot_assets.defs.partitions import recordings
from dorobot_assets.defs.resources import ConversionResource, StorageResource, VideoEncoderResource
from dorobot_assets.lib import audio as audio_lib
from dorobot_assets.lib import data as data_lib
from dorobot_assets.lib import dorobot as dorobot_lib
from dorobot_assets.lib import episodes as episodes_lib
from dorobot_assets.lib import info as info_lib
from dorobot_assets.lib import report as report_lib
from dorobot_assets.lib import stats as stats_lib
from dorobot_assets.lib import tasks as tasks_lib
from dorobot_assets.lib import video as video_lib
from dorobot_assets.lib.fsutil import remove_stale_temp_files
from dorobot_assets.lib.manifest import manifest_path, read_manifest, write_manifest
from dorobot_assets.lib.v21 import Recording, read_recording_cached, recording_fingerprint
from dorobot_assets.lib.v30 import INFO_PATH
from dorobot_assets.lib.validate import DatasetView

GROUP = "lerobot_v30"
CODE_VERSION = "1"


def load_recording(storage: StorageResource, settings: ConversionResource, key: str) -> Recording:
    """Read (and validate) the partition's recording; raises RecordingError before any write."""
    source = storage.source_dir(key)
    return read_recording_cached(
        source,
        storage.work_dir(key) / "cache",
        missing_cameras=settings.settings().missing_cameras,
    )


def begin_write(dataset_root: Path) -> None:
    """About to change files of the dataset: withdraw info.json so no reader sees a mix."""
    (dataset_root / INFO_PATH).unlink(missing_ok=True)
    remove_stale_temp_files(dataset_root)


def _mb(n: int) -> float:
    return round(n / (1024 * 1024), 3)


@dg.observable_source_asset(
    partitions_def=recordings,
    group_name=GROUP,
    description="A source LeRobot v2.1 / DoRobot recording folder. Its data version is a "
    "fingerprint of the files (path, size, mtime), so converted partitions show as stale when "
    "the recording changes.",
)
def recording(context, storage: StorageResource) -> dg.DataVersionsByPartition:
    versions = {}
    keys = context.instance.get_dynamic_partitions(recordings.name)
    for key in keys:
        try:
            versions[key] = dg.DataVersion(recording_fingerprint(storage.source_dir(key)))
        except Exception as e:  # an unreadable or vanished recording has no version
            context.log.warning(f"recording {key}: {e}")
    return dg.DataVersionsByPartition(versions)


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"parquet"},
    description="meta/tasks.parquet: task strings as the pandas index named `task`, rows in task_index order.",
)
def tasks(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    rec = load_recording(storage, conversion, key)
    root = storage.dataset_root(key)
    begin_write(root)
    result = tasks_lib.write_tasks(rec.tasks, root)
    return dg.MaterializeResult(
        metadata={**report_lib.artifact_summary(rec, result.path),
                  "tasks": result.total_tasks, "path": dg.MetadataValue.path(str(result.path)),
                  "dagster/row_count": result.total_tasks},
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"parquet"},
    description="data/chunk-XXX/file-YYY.parquet: episodes streamed into files rolled over by "
    "summed uncompressed size (fixed LeRobot rule), whole episodes per file.",
)
def data(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    settings = conversion.settings()
    rec = load_recording(storage, conversion, key)
    root = storage.dataset_root(key)
    begin_write(root)
    t0 = time.perf_counter()
    result = data_lib.write_data(rec, root, settings.data_file_size_mb, settings.files_per_chunk)
    write_manifest(storage.work_dir(key), "data", result.placements, rec.fingerprint())
    return dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, root / "data"),
            "episodes": len(rec.episodes), "frames": result.rows, "files": len(result.files),
            "bytes": result.bytes_written, "megabytes": _mb(result.bytes_written),
            "seconds": round(time.perf_counter() - t0, 3),
            "path": dg.MetadataValue.path(str(root / "data")),
            "dagster/row_count": result.rows,
        },
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"video"},
    # Cross-run limit on a scarce encoder (NPU channels, CPU): `dagster instance concurrency set video_encoder N`.
    pool="video_encoder",
    description="videos/{video_key}/chunk-XXX/file-YYY.mp4: each camera's episode MP4s "
    "concatenated by stream copy (or re-encoded through the video_encoder resource when "
    "`reencode` is set), rolled over by size per camera.",
)
def videos(
    context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource,
    video_encoder: VideoEncoderResource,
):
    key = context.partition_key
    settings = conversion.settings()
    rec = load_recording(storage, conversion, key)
    root = storage.dataset_root(key)
    begin_write(root)
    t0 = time.perf_counter()
    encoder = video_encoder.encoder() if settings.reencode else None
    result = video_lib.write_videos(rec, root, settings, encoder, log=context.log.info)
    result.dropped_cameras = sorted(set(result.dropped_cameras) | set(rec.dropped_features))
    for note in result.notes:
        context.log.warning(note)
    write_manifest(
        storage.work_dir(key), "videos", result.placements, rec.fingerprint(),
        {"dropped_cameras": result.dropped_cameras, "features_info": result.features_info},
    )
    return dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, root / "videos"),
            "cameras": len(rec.video_keys), "files": len(result.files),
            "frames": result.frames, "bytes": result.bytes_written, "megabytes": _mb(result.bytes_written),
            "dropped_cameras": ", ".join(result.dropped_cameras) or "none",
            "mode": result.mode, "encoder": result.encoder or "none (stream copy)",
            "seconds": round(time.perf_counter() - t0, 3),
            "path": dg.MetadataValue.path(str(root / "videos")),
        },
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"wav"},
    description="audio/{audio_key}/chunk-XXX/file-YYY.wav: DoRobot microphones, episodes "
    "concatenated sample-exactly, rolled over by size; nothing for recordings without audio.",
)
def audio(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    settings = conversion.settings()
    rec = load_recording(storage, conversion, key)
    root = storage.dataset_root(key)
    begin_write(root)
    t0 = time.perf_counter()
    result = audio_lib.write_audio(rec, root, settings)
    for note in result.notes:
        context.log.warning(note)
    write_manifest(
        storage.work_dir(key), "audio", result.placements, rec.fingerprint(),
        {"features_info": result.features_info, "missing": result.missing},
    )
    return dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, root / "audio"),
            "microphones": len(rec.audio_keys), "files": len(result.files),
            "bytes": result.bytes_written, "missing_wavs": len(result.missing),
            "note": "recording has no audio" if not rec.audio_keys else "",
            "seconds": round(time.perf_counter() - t0, 3),
            "path": dg.MetadataValue.path(str(root / "audio")),
        },
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"parquet"},
    description="Per-episode statistics (min, max, mean, std, count and, when recomputed, "
    "q01..q99) that become the stats/<feature>/<stat> columns of meta/episodes.",
)
def episode_stats(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    settings = conversion.settings()
    rec = load_recording(storage, conversion, key)
    t0 = time.perf_counter()
    if settings.stats == "copy":
        table = stats_lib.copy_source_stats(rec)
        extra = {"mode": "copy"}
    else:
        table, extra = stats_lib.compute_episode_stats(rec, storage.work_dir(key))
        extra = {"mode": "recompute", **extra}
    write_manifest(storage.work_dir(key), "episode_stats", table, rec.fingerprint(), extra)
    return dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, manifest_path(storage.work_dir(key), "episode_stats")),
            "mode": settings.stats, "episodes": table.num_rows,
            "columns": len(table.column_names) - 1, "seconds": round(time.perf_counter() - t0, 3),
            # recompute reuses the stats of episodes whose source files did not change
            "episodes_computed": extra.get("episodes_computed", 0),
            "episodes_reused": extra.get("episodes_reused", 0),
            "source_notes": "\n".join(rec.notes) or "none",
        },
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[data, videos, audio, episode_stats], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"parquet"},
    description="meta/episodes/chunk-000/file-000.parquet: one row per episode with its data, "
    "video and audio placements, tasks, length and per-episode stats.",
)
def episodes(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    rec = load_recording(storage, conversion, key)
    work = storage.work_dir(key)
    fp = rec.fingerprint()
    data_table, _ = read_manifest(work, "data", fp)
    placements = [(name, read_manifest(work, name, fp)[0]) for name in ("videos", "audio")]
    stats_table, _ = read_manifest(work, "episode_stats", fp)
    root = storage.dataset_root(key)
    begin_write(root)
    table = episodes_lib.build_episodes_table(rec, data_table, placements, stats_table)
    result = episodes_lib.write_episodes(table, root)
    dorobot_meta = dorobot_lib.carry_over_meta(rec.root, root)
    return dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, root / "meta" / "episodes"),
            "preview": dg.MetadataValue.md(report_lib.episodes_preview(root)),
            "episodes": result.episodes, "columns": len(result.columns),
            "path": dg.MetadataValue.path(str(result.path)), "dagster/row_count": result.episodes,
            "dorobot_meta": ", ".join(p.name for p in dorobot_meta) or "none",
        },
        data_version=dg.DataVersion(fp),
    )


@dg.asset(
    partitions_def=recordings, deps=[episodes], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"json"},
    description="meta/stats.json: dataset statistics pooled exactly from the per-episode stats.",
)
def dataset_stats(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    rec = load_recording(storage, conversion, key)
    work = storage.work_dir(key)
    stats_table, extra = read_manifest(work, "episode_stats", rec.fingerprint())
    root = storage.dataset_root(key)
    begin_write(root)
    quantiles = stats_lib.dataset_quantiles(work) if extra.get("mode") == "recompute" else None
    agg = stats_lib.aggregate(stats_table, quantiles)
    path = stats_lib.write_stats_json(agg, root)
    return dg.MaterializeResult(
        metadata={**report_lib.artifact_summary(rec, path),
                  "preview": dg.MetadataValue.md(report_lib.stats_summary(root)),
                  "features": len(agg), "path": dg.MetadataValue.path(str(path)),
                  "quantiles": bool(quantiles)},
        data_version=dg.DataVersion(rec.fingerprint()),
    )


@dg.asset(
    partitions_def=recordings, deps=[tasks, data, videos, audio, episodes, dataset_stats], group_name=GROUP,
    code_version=CODE_VERSION, kinds={"json"},
    check_specs=info_check_specs(),
    description="meta/info.json, written last (a v3.0 folder without it is incomplete): v3.0 "
    "templates and limits, totals counted from the files written. Its checks inspect the "
    "pending info.json and a failing one keeps it unwritten.",
)
def info(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    key = context.partition_key
    settings = conversion.settings()
    rec = load_recording(storage, conversion, key)
    root = storage.dataset_root(key)
    work = storage.work_dir(key)
    fp = rec.fingerprint()
    _, video_extra = read_manifest(work, "videos", fp)
    _, audio_extra = read_manifest(work, "audio", fp)
    info_args = dict(
        audio_features_info=audio_extra.get("features_info") or None,
        dropped_features=tuple(video_extra.get("dropped_cameras", ())),
        video_features_info=video_extra.get("features_info") or None,
    )
    pending = info_lib.pending_info(rec, root, settings, **info_args)
    yield from info_check_results(DatasetView(root=root, info=pending, source=rec.root, work=work))
    written = info_lib.write_info(rec, root, settings, **info_args)
    yield dg.MaterializeResult(
        metadata={
            **report_lib.artifact_summary(rec, root),
            "preview": dg.MetadataValue.md(report_lib.dataset_card(root)),
            "episodes": written["total_episodes"], "frames": written["total_frames"],
            "tasks": written["total_tasks"], "path": dg.MetadataValue.path(str(root)),
            # source quirks handled while converting (v2.0, GR00T): renamed keys, stale totals...
            "source_notes": "\n".join(rec.notes) or "none",
        },
        data_version=dg.DataVersion(rec.fingerprint()),
    )


conversion_assets = [recording, tasks, data, videos, audio, episode_stats, episodes, dataset_stats, info]

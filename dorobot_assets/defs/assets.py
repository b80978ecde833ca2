"""One asset per v3.0 artifact, all partitioned by recording. Bodies resolve folders from the
partition key, call one lib function, and report what was written."""


import resource
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from dorobot_assets.defs import checks
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
from dorobot_assets.lib.arrow import release_freed_memory
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.fsutil import remove_stale_temp_files
from dorobot_assets.lib.manifest import manifest_path, read_manifest, write_manifest
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording, read_recording_cached, recording_fingerprint
from dorobot_assets.lib.v30 import INFO_PATH, MB
from dorobot_assets.lib.validate import DatasetView

GROUP = "lerobot_v30"
CODE_VERSION = "1"


# The recording's fingerprint per (run, folder): taken by the run's first step and reused by
# the others (a stat walk of a 6000-file recording costs ~0.07 s, and a run has 8 steps). The
# info asset takes it again before publishing, so a recording changed mid-run is never published.
_RUN_FINGERPRINTS: dict[tuple[str, Path], str] = {}


def run_fingerprint(run_id: str, source: Path) -> str:
    if (run_id, source) not in _RUN_FINGERPRINTS:
        if len(_RUN_FINGERPRINTS) > 64:  # a long-lived process (the webserver's, a sensor's) runs many
            _RUN_FINGERPRINTS.clear()
        _RUN_FINGERPRINTS[(run_id, source)] = recording_fingerprint(source)
    return _RUN_FINGERPRINTS[(run_id, source)]


def load_recording(storage: StorageResource, settings: ConversionResource, key: str, run_id: str | None = None) -> Recording:
    """Read (and validate) the partition's recording; raises RecordingError before any write."""
    source = storage.source_dir(key)
    return read_recording_cached(
        source,
        storage.work_dir(key) / "cache",
        missing_cameras=settings.settings().missing_cameras,
        fingerprint=run_fingerprint(run_id, source) if run_id else None,
    )


def begin_write(dataset_root: Path) -> None:
    """About to change files of the dataset: withdraw info.json so no reader sees a mix."""
    (dataset_root / INFO_PATH).unlink(missing_ok=True)
    remove_stale_temp_files(dataset_root)


def _mb(n: int) -> float:
    return round(n / MB, 3)


@dataclass
class ConversionStep:
    """What every artifact asset starts from: the partition's validated recording, its folders
    and settings, the source fingerprint (the data version of everything written) and a clock."""

    key: str
    settings: ConversionSettings
    rec: Recording
    fingerprint: str
    root: Path  # the v3.0 dataset folder
    work: Path  # manifests and caches, never published
    started: float

    def manifest(self, name: str) -> tuple:
        """A placement manifest made from this very version of the recording."""
        return read_manifest(self.work, name, self.fingerprint)

    def view(self, asset: str) -> DatasetView:
        """The dataset as the checks of ``asset`` see it right after the asset wrote."""
        return checks.conversion_view(self.rec, self.root, self.work, self.settings, asset)

    def result(
        self, context: dg.AssetExecutionContext, artifact: Path, *, run_checks: bool = True, **metadata
    ) -> dg.MaterializeResult:
        """The materialization, with the results of the asset's checks run on what it wrote
        (``run_checks=False`` for an asset that ran them itself before writing)."""
        asset = context.asset_key.to_user_string()
        seconds = round(time.perf_counter() - self.started, 3)  # the write, without the checks
        check_results = checks.check_results(context, asset, lambda: self.view(asset)) if run_checks else None
        # Every step, checks or not: with all steps in one process, pages the step freed but the
        # allocator kept would raise the next step's start (episode_stats kept 17 MiB at 2000
        # episodes, which then counted in the run's peak).
        release_freed_memory()
        return dg.MaterializeResult(
            metadata={
                **report_lib.artifact_summary(self.rec, artifact),
                "seconds": seconds,
                # The process's high-water mark so far: with every step in one process, the
                # first step whose value jumps is the one that needed the memory.
                "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                **metadata,
            },
            data_version=dg.DataVersion(self.fingerprint),
            check_results=check_results,
        )


def start_step(
    context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource, *, writes: bool = True
) -> ConversionStep:
    """Read (and validate) the recording first; only then, if the asset writes into the dataset,
    withdraw info.json (begin_write)."""
    key = context.partition_key
    rec = load_recording(storage, conversion, key, context.run_id)
    step = ConversionStep(
        key=key, settings=conversion.settings(), rec=rec, fingerprint=rec.fingerprint(),
        root=storage.dataset_root(key), work=storage.work_dir(key), started=time.perf_counter(),
    )
    if writes:
        begin_write(step.root)
    return step


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
    check_specs=checks.check_specs("tasks"),
    kinds={"parquet"},
    description="meta/tasks.parquet: task strings as the pandas index named `task`, rows in task_index order.",
)
def tasks(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion)
    result = tasks_lib.write_tasks(step.rec.tasks, step.root)
    return step.result(
        context, result.path, tasks=result.total_tasks, path=dg.MetadataValue.path(str(result.path)),
        **{"dagster/row_count": result.total_tasks},
    )


@dg.asset(
    # after tasks: the data_task_index check reads meta/tasks.parquet
    partitions_def=recordings, deps=[recording, tasks], group_name=GROUP, code_version=CODE_VERSION,
    check_specs=checks.check_specs("data"),
    kinds={"parquet"},
    description="data/chunk-XXX/file-YYY.parquet: episodes streamed into files rolled over by "
    "summed uncompressed size (fixed LeRobot rule), whole episodes per file.",
)
def data(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion)
    result = data_lib.write_data(step.rec, step.root, step.settings.data_file_size_mb, step.settings.files_per_chunk)
    write_manifest(step.work, "data", result.placements, step.fingerprint)
    return step.result(
        context, step.root / "data",
        frames=result.rows, files=len(result.files), bytes=result.bytes_written,
        megabytes=_mb(result.bytes_written), path=dg.MetadataValue.path(str(step.root / "data")),
        **{"dagster/row_count": result.rows},
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    check_specs=checks.check_specs("videos"),
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
    step = start_step(context, storage, conversion)
    encoder = video_encoder.encoder() if step.settings.reencode else None
    result = video_lib.write_videos(step.rec, step.root, step.settings, encoder, log=context.log.info)
    result.dropped_cameras = sorted(set(result.dropped_cameras) | set(step.rec.dropped_features))
    for note in result.notes:
        context.log.warning(note)
    write_manifest(
        step.work, "videos", result.placements, step.fingerprint,
        {"dropped_cameras": result.dropped_cameras, "features_info": result.features_info},
    )
    return step.result(
        context, step.root / "videos",
        cameras=len(step.rec.video_keys), files=len(result.files),
        frames=result.frames, bytes=result.bytes_written, megabytes=_mb(result.bytes_written),
        dropped_cameras=", ".join(result.dropped_cameras) or "none",
        mode=result.mode, encoder=result.encoder or "none (stream copy)",
        path=dg.MetadataValue.path(str(step.root / "videos")),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    check_specs=checks.check_specs("audio"),
    kinds={"wav"},
    description="audio/{audio_key}/chunk-XXX/file-YYY.wav: DoRobot microphones, episodes "
    "concatenated sample-exactly, rolled over by size; nothing for recordings without audio.",
)
def audio(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion)
    result = audio_lib.write_audio(step.rec, step.root, step.settings)
    for note in result.notes:
        context.log.warning(note)
    write_manifest(
        step.work, "audio", result.placements, step.fingerprint,
        {"features_info": result.features_info, "missing": result.missing},
    )
    return step.result(
        context, step.root / "audio",
        microphones=len(step.rec.audio_keys), files=len(result.files),
        bytes=result.bytes_written, missing_wavs=len(result.missing),
        note="recording has no audio" if not step.rec.audio_keys else "",
        path=dg.MetadataValue.path(str(step.root / "audio")),
    )


@dg.asset(
    partitions_def=recordings, deps=[recording], group_name=GROUP, code_version=CODE_VERSION,
    kinds={"parquet"},
    description="Per-episode statistics (min, max, mean, std, count and, when recomputed, "
    "q01..q99) that become the stats/<feature>/<stat> columns of meta/episodes.",
)
def episode_stats(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    # Writes only to the work folder: the published dataset is left alone.
    step = start_step(context, storage, conversion, writes=False)
    if step.settings.stats == "copy":
        table = stats_lib.copy_source_stats(step.rec)
        extra = {"mode": "copy"}
    else:
        table, extra = stats_lib.compute_episode_stats(step.rec, step.work, workers=step.settings.stats_workers)
        extra = {"mode": "recompute", **extra}
    write_manifest(step.work, "episode_stats", table, step.fingerprint, extra)
    return step.result(
        context, manifest_path(step.work, "episode_stats"),
        mode=step.settings.stats, episodes=table.num_rows, columns=len(table.column_names) - 1,
        # recompute reuses the stats of episodes whose source files did not change
        episodes_computed=extra.get("episodes_computed", 0),
        episodes_reused=extra.get("episodes_reused", 0),
        source_notes="\n".join(step.rec.notes) or "none",
    )


@dg.asset(
    partitions_def=recordings, deps=[data, videos, audio, episode_stats], group_name=GROUP, code_version=CODE_VERSION,
    check_specs=checks.check_specs("episodes"),
    kinds={"parquet"},
    description="meta/episodes/chunk-000/file-000.parquet: one row per episode with its data, "
    "video and audio placements, tasks, length and per-episode stats.",
)
def episodes(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion, writes=False)
    data_table, _ = step.manifest("data")
    placements = [(name, step.manifest(name)[0]) for name in ("videos", "audio")]
    stats_table, _ = step.manifest("episode_stats")
    begin_write(step.root)  # every manifest is there and current: now change the dataset
    table = episodes_lib.build_episodes_table(step.rec, data_table, placements, stats_table)
    result = episodes_lib.write_episodes(table, step.root)
    dorobot_meta = dorobot_lib.carry_over_meta(step.rec.root, step.root)
    return step.result(
        context, step.root / "meta" / "episodes",
        preview=dg.MetadataValue.md(report_lib.episodes_preview(step.root)),
        episodes=result.episodes, columns=len(result.columns),
        path=dg.MetadataValue.path(str(result.path)),
        dorobot_meta=", ".join(p.name for p in dorobot_meta) or "none",
        **{"dagster/row_count": result.episodes},
    )


@dg.asset(
    partitions_def=recordings, deps=[episodes], group_name=GROUP, code_version=CODE_VERSION,
    check_specs=checks.check_specs("dataset_stats"),
    kinds={"json"},
    description="meta/stats.json: dataset statistics pooled exactly from the per-episode stats.",
)
def dataset_stats(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion, writes=False)
    stats_table, extra = step.manifest("episode_stats")
    begin_write(step.root)
    quantiles = stats_lib.dataset_quantiles(step.work) if extra.get("mode") == "recompute" else None
    agg = stats_lib.aggregate(stats_table, quantiles)
    path = stats_lib.write_stats_json(agg, step.root)
    return step.result(
        context, path,
        preview=dg.MetadataValue.md(report_lib.stats_summary(step.root)),
        features=len(agg), path=dg.MetadataValue.path(str(path)), quantiles=bool(quantiles),
    )


@dg.asset(
    partitions_def=recordings, deps=[tasks, data, videos, audio, episodes, dataset_stats], group_name=GROUP,
    code_version=CODE_VERSION, kinds={"json"},
    check_specs=checks.check_specs("info"),
    description="meta/info.json, written last (a v3.0 folder without it is incomplete): v3.0 "
    "templates and limits, totals counted from the files written. Its checks inspect the "
    "pending info.json and a failing one keeps it unwritten.",
)
def info(context: dg.AssetExecutionContext, storage: StorageResource, conversion: ConversionResource):
    step = start_step(context, storage, conversion, writes=False)
    if recording_fingerprint(step.rec.root) != step.fingerprint:
        raise RecordingError(
            "recording_changed", step.rec.root,
            "files of the recording changed while it was being converted; meta/info.json not written, "
            "materialize the partition again",
        )
    info_args = checks.info_arguments(step.manifest("videos")[1], step.manifest("audio")[1])
    pending = info_lib.pending_info(step.rec, step.root, step.settings, **info_args)
    yield from checks.info_check_results(
        context, DatasetView(root=step.root, info=pending, source=step.rec.root, work=step.work)
    )
    written = info_lib.write_info(step.rec, step.root, step.settings, **info_args)
    yield step.result(
        context, step.root, run_checks=False,
        preview=dg.MetadataValue.md(report_lib.dataset_card(step.root)),
        episodes=written["total_episodes"], frames=written["total_frames"],
        tasks=written["total_tasks"], path=dg.MetadataValue.path(str(step.root)),
        # source quirks handled while converting (v2.0, GR00T): renamed keys, stale totals...
        source_notes="\n".join(step.rec.notes) or "none",
    )


conversion_assets = [recording, tasks, data, videos, audio, episode_stats, episodes, dataset_stats, info]

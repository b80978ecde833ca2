"""Run the asset graph in-process for one recording folder (``dorobot-assets convert``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from dorobot_assets.lib.errors import ConfigError, DorobotError
from dorobot_assets.lib.keys import sanitize_key
from dorobot_assets.lib.settings import ConversionSettings


@dataclass
class ConversionRun:
    success: bool
    dataset: Path
    partition_key: str
    error: str | None = None
    materialized: list[str] = field(default_factory=list)
    result: object = None
    step_seconds: dict[str, float] = field(default_factory=dict)  # per successful step (asset or check)


def _our_error_names() -> set[str]:
    """Class names of every DorobotError subclass defined so far (lib modules add their own)."""
    from dorobot_assets.lib.errors import DorobotError

    names, todo = set(), [DorobotError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            # Dagster wraps the user's exception; ours (a DorobotError subclass) is somewhere in
            # the cause chain, possibly above a library error it was raised from.
            chain = []
            err = event.step_failure_data.error
            while err is not None:
                chain.append(err)
                err = err.cause
            ours = [e for e in chain if e.cls_name in _our_error_names()]
            err = ours[0] if ours else chain[-1]
            if err.cls_name == "DagsterAssetCheckFailedError":
                continue  # a blocking check failed: its own description (below) names the fault
            return f"{event.step_key}: {err.message.strip()}"
    from dorobot_assets.defs.checks import lib_check_results
    from dorobot_assets.lib.validate import ERROR

    evaluations = result.get_asset_check_evaluations()
    # Errors (which block) before warnings.
    for ev in sorted(evaluations, key=lambda ev: ev.severity != dg.AssetCheckSeverity.ERROR):
        failed = [(name, r) for name, r in lib_check_results(ev).items() if not r["passed"]]
        for name, r in sorted(failed, key=lambda item: item[1]["severity"] != ERROR):
            return f"check {name} on {ev.asset_key.to_user_string()} failed: {r['description']}".strip()
        if not ev.passed:
            return f"check {ev.check_name} on {ev.asset_key.to_user_string()} failed: {ev.description or ''}".strip()
    return "the run failed"


def convert_recording(
    source: Path | str,
    dataset: Path | str,
    settings: ConversionSettings = ConversionSettings(),
    *,
    work: Path | str | None = None,
    instance: dg.DagsterInstance | None = None,
    resources: dict | None = None,
    log_level: str = "CRITICAL",
) -> ConversionRun:
    """Convert ``source`` (a v2.1 recording folder) into the v3.0 dataset folder ``dataset``."""
    source = Path(source).resolve()
    dataset = Path(dataset).resolve()
    if not source.is_dir():
        raise ConfigError(f"{source}: recording folder does not exist")
    if dataset == source or source in dataset.parents:
        raise ConfigError(f"{dataset}: the output must not be inside the source recording {source}")
    if dataset in source.parents:
        raise ConfigError(f"{dataset}: the output must not contain the source recording {source}")
    key = sanitize_key(source.name)
    if instance is not None:
        return _run(instance, key, source, dataset, settings, work, resources, log_level)
    with scratch_instance() as instance:
        return _run(instance, key, source, dataset, settings, work, resources, log_level)


@contextlib.contextmanager
def scratch_instance() -> Iterator[dg.DagsterInstance]:
    """An in-memory Dagster instance for one conversion. Its local artifact storage is a
    temporary folder removed on exit, not left to interpreter exit (cli.entry ends at once)."""
    with tempfile.TemporaryDirectory(prefix="dorobot-run-") as scratch:
        yield dg.DagsterInstance.ephemeral(tempdir=scratch)


def _run(
    instance: dg.DagsterInstance, key: str, source: Path, dataset: Path, settings: ConversionSettings,
    work: Path | str | None, resources: dict | None, log_level: str,
) -> ConversionRun:
    from dorobot_assets.defs.assets import conversion_assets
    from dorobot_assets.defs.partitions import recordings
    from dorobot_assets.defs.resources import ConversionResource, StorageResource
    from dorobot_assets.definitions import defs

    instance.add_dynamic_partitions(recordings.name, [key])
    run_resources = {
        "storage": StorageResource(
            recording_dir=str(source), dataset_dir=str(dataset),
            work=str(work) if work else str(dataset.parent / ".dorobot_work" / dataset.name),
        ),
        "conversion": ConversionResource(
            data_file_size_mb=settings.data_file_size_mb,
            video_file_size_mb=settings.video_file_size_mb,
            audio_file_size_mb=settings.audio_file_size_mb,
            files_per_chunk=settings.files_per_chunk,
            stats=settings.stats,
            missing_cameras=settings.missing_cameras,
            reencode=settings.reencode,
            video_workers=settings.video_workers,
            stats_workers=settings.stats_workers,
        ),
    }
    for name, res in defs.resources.items():
        run_resources.setdefault(name, res)
    run_resources.update(resources or {})
    result = dg.materialize(
        conversion_assets,
        partition_key=key,
        instance=instance,
        resources=run_resources,
        raise_on_error=False,
        # The CLI prints the first error itself; Dagster's console log is opt-in (--log-level).
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    run = ConversionRun(success=result.success, dataset=dataset, partition_key=key, result=result)
    if not result.success:
        run.error = _first_error(result)
    run.materialized = [
        e.asset_key.to_user_string() for e in result.all_events if e.is_step_materialization and e.asset_key
    ] if hasattr(result, "all_events") else []
    run.step_seconds = {
        e.step_key: round(e.step_success_data.duration_ms / 1000, 3)
        for e in result.all_events if e.is_step_success and e.step_key
    }
    return run


__all__ = ["convert_recording", "ConversionRun", "DorobotError"]

"""The one Definitions object of the project (re-exported by the package as ``defs``)."""

import warnings

import dagster as dg

# observable_source_asset and partitioned checks are beta/preview in 1.13 (pinned minor).
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from dorobot_assets.defs.assets import conversion_assets
from dorobot_assets.defs.checks import conversion_checks
from dorobot_assets.defs.jobs import convert_recording_job
from dorobot_assets.defs.resources import ConversionResource, StorageResource, VideoEncoderResource
from dorobot_assets.defs.sensors import inbox_sensor


def default_resources() -> dict:
    """Resources for UI, sensor and CLI runs; folders come from DOROBOT_* at run time."""
    return {
        "storage": StorageResource(),
        "conversion": ConversionResource(),
        "video_encoder": VideoEncoderResource(),
    }


defs = dg.Definitions(
    assets=conversion_assets,
    asset_checks=conversion_checks,
    jobs=[convert_recording_job],
    sensors=[inbox_sensor],
    resources=default_resources(),
    # One process per run: a conversion is ~35 short steps (assets and their DuckDB checks) and
    # a subprocess per step costs seconds each, minutes per run on 2 cores. Recordings still
    # convert side by side (the run queue limit in dagster.yaml); pools apply in-process too.
    executor=dg.in_process_executor,
)

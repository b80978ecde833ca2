"""The one Definitions object of the project (re-exported by the package as ``defs``)."""

import dagster as dg

from dorobot_assets.defs.assets import conversion_assets
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
    jobs=[convert_recording_job],
    sensors=[inbox_sensor],
    resources=default_resources(),
    # One process per run: a conversion is 8 short steps (each asset runs its own DuckDB checks)
    # and a subprocess per step costs seconds each on 2 cores. Recordings still
    # convert side by side (the run queue limit in dagster.yaml); pools apply in-process too.
    executor=dg.in_process_executor,
)

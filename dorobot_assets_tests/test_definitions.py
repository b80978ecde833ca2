"""The code location loads the way every Dagster entry point loads it, and the configuration
files that name it agree (pyproject.toml wins over workspace.yaml when both are present)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import dagster as dg
import yaml

from dorobot_assets import defs
from dorobot_assets.defs.partitions import recordings
from dorobot_assets.lib import inbox
from dorobot_assets_tests.services import REPO, VENV_BIN, service_env


def test_definitions_are_loadable_with_the_sensor_running_by_default():
    dg.Definitions.validate_loadable(defs)

    sensor = defs.resolve_sensor_def("inbox_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == inbox.sensor_interval_seconds()  # 30 s unless set
    assert sensor.job_name == "convert_recording"

    job = defs.resolve_job_def("convert_recording")
    assert job.partitions_def == recordings
    converted = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert converted == {"tasks", "data", "videos", "audio", "episode_stats", "episodes", "dataset_stats", "info"}


def test_pyproject_and_workspace_name_the_same_location():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"] == [
        {"python_module": {"module_name": tool["module_name"], "location_name": tool["code_location_name"]}}
    ]
    assert tool["module_name"] == tool["code_location_name"] == "dorobot_assets"


def test_dagster_cli_loads_the_location_from_pyproject_and_from_workspace_yaml():
    for extra in ([], ["-w", "workspace.yaml"]):
        done = subprocess.run(
            [str(VENV_BIN / "dagster"), "definitions", "validate", *extra], cwd=REPO, env=service_env(),
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "dorobot_assets" in done.stdout + done.stderr


def test_every_environment_variable_the_code_reads_is_documented():
    readme = (REPO / "README.md").read_text()
    used = set()
    for path in (REPO / "dorobot_assets").rglob("*.py"):
        used |= set(re.findall(r"""["'](DOROBOT_[A-Z_]+)["']""", path.read_text()))
    assert used, "no DOROBOT_* variables found: the pattern is stale"
    assert sorted(v for v in used if f"`{v}`" not in readme) == []

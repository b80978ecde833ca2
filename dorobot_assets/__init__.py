"""dorobot_assets: LeRobot v2.1 / DoRobot recordings -> LeRobot v3.0 datasets, as a Dagster asset graph.

The package re-exports ``defs`` so that every Dagster command can use ``-m dorobot_assets`` and
the code location is called ``dorobot_assets`` everywhere (CLI, workspace.yaml, pyproject).
The plain-Python converter lives in ``dorobot_assets.lib`` and never imports Dagster itself.
"""

from dorobot_assets.definitions import defs

__all__ = ["defs"]

"""dorobot_assets: LeRobot v2.1 / DoRobot recordings -> LeRobot v3.0 datasets, as a Dagster asset graph.

The package exposes ``defs`` so that every Dagster command can use ``-m dorobot_assets`` and
the code location is called ``dorobot_assets`` everywhere (CLI, workspace.yaml, pyproject).
The plain-Python converter lives in ``dorobot_assets.lib`` and never imports Dagster itself.

``defs`` is built on first access rather than at import: importing ``dorobot_assets.lib.*`` (the
CLI's light commands, the worker processes that decode video for statistics) then costs no
Dagster import (about 1.5 s and 100 MiB per process). Dagster's module loader lists
``dir(module)`` and reads each name, so it still finds ``defs``. The attribute is a property
because the subpackage ``dorobot_assets/defs/`` shares the name: importing it makes Python
assign the subpackage to the package attribute, which must not hide the Definitions.
"""

import sys
import types

__all__ = ["defs"]


class _Package(types.ModuleType):
    @property
    def defs(self):
        from dorobot_assets.definitions import defs

        return defs

    @defs.setter
    def defs(self, subpackage) -> None:
        # Python binds the subpackage dorobot_assets.defs here after importing it; it stays
        # reachable through sys.modules, which is all `from dorobot_assets.defs.x import y` uses.
        pass

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {"defs"})


sys.modules[__name__].__class__ = _Package

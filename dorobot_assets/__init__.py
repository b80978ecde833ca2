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

import os
import sys
import types

# Arrow's buffers from glibc's malloc instead of its bundled mimalloc, which keeps freed segments
# mapped: a 2000-episode conversion peaked 13 MiB higher with mimalloc (278 vs 265 MiB; 234 vs
# 237 at 200 episodes), for no less CPU. Read once, when pyarrow first allocates, so it is set
# here, before any of the package's modules imports pyarrow. Subprocesses inherit it.
ARROW_POOL_CHOSEN_HERE = "ARROW_DEFAULT_MEMORY_POOL" not in os.environ  # not by the user (bench)
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

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

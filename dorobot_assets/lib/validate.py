"""DuckDB checks over any v3.0 dataset directory (issue: validation).

Each check is a plain function registered with :func:`check`; it receives a :class:`DatasetView`
and returns a :class:`CheckResult`. ``defs/checks.py`` turns every registered check into a
Dagster asset check on the asset it inspects; ``dorobot-assets validate`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ERROR = "error"
WARNING = "warning"


@dataclass
class CheckResult:
    name: str
    passed: bool
    severity: str  # ERROR or WARNING: what a failure means
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    offending: list[dict] = field(default_factory=list)  # the first offending rows
    applicable: bool = True  # False: nothing to check here (e.g. no audio); passed is then True


@dataclass
class DatasetView:
    """What a check may look at: the dataset folder, its info (from info.json, or the pending
    one while a conversion has not yet published info.json) and, during a conversion, the
    source recording folder and the work folder."""

    root: Path
    info: dict
    source: Path | None = None
    work: Path | None = None


@dataclass(frozen=True)
class CheckSpec:
    name: str
    asset: str  # the asset (artifact) the check inspects: tasks, data, videos, audio, episodes, dataset_stats, info
    severity: str
    fn: Callable[[DatasetView], CheckResult]
    description: str


CHECKS: list[CheckSpec] = []


def check(name: str, asset: str, severity: str, description: str):
    """Register a check function."""

    def wrap(fn: Callable[[DatasetView], CheckResult]):
        CHECKS.append(CheckSpec(name=name, asset=asset, severity=severity, fn=fn, description=description))
        return fn

    return wrap

"""The size-based placement rule shared by data, video and audio files (pure: sizes in, slots out).

Rule (LeRobot v0.5.0+/HEAD, reference notes §3.4/§3.5): before adding item *i*, if the current file
already holds something and ``acc + size_i >= limit``, close the file and move to the next slot
(``acc = 0``). Whole items only; a file exceeds the limit only when it holds a single item.
We deliberately do not reproduce LeRobot 0.4.x's data rollover bug (huggingface/lerobot#2401,
#2643), where the episode crossing the limit was written to the next file but recorded in the
previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dorobot_assets.lib.v30 import DEFAULT_FILES_PER_CHUNK


@dataclass(frozen=True, order=True)
class FileSlot:
    chunk_index: int
    file_index: int

    def next(self, files_per_chunk: int = DEFAULT_FILES_PER_CHUNK) -> "FileSlot":
        if self.file_index + 1 >= files_per_chunk:
            return FileSlot(self.chunk_index + 1, 0)
        return FileSlot(self.chunk_index, self.file_index + 1)


FIRST_SLOT = FileSlot(0, 0)


def plan_rollover(
    sizes_mb: Sequence[float],
    limit_mb: float,
    *,
    files_per_chunk: int = DEFAULT_FILES_PER_CHUNK,
    new_file_before: Sequence[bool] | None = None,
) -> list[FileSlot]:
    """Assign each item (in order) to a file slot.

    ``new_file_before[i]`` forces item *i* into a fresh file even below the limit (used when the
    encoding parameters of a camera or microphone change and the two cannot share one file).
    """
    if limit_mb <= 0:
        raise ValueError(f"file size limit must be > 0 MB, got {limit_mb}")
    slots: list[FileSlot] = []
    slot = FIRST_SLOT
    acc = 0.0
    in_file = 0
    for i, size in enumerate(sizes_mb):
        forced = bool(new_file_before[i]) if new_file_before is not None else False
        if in_file > 0 and (acc + size >= limit_mb or forced):
            slot = slot.next(files_per_chunk)
            acc = 0.0
            in_file = 0
        slots.append(slot)
        acc += size
        in_file += 1
    return slots


def group_by_slot(slots: Sequence[FileSlot]) -> list[tuple[FileSlot, list[int]]]:
    """Consecutive items sharing a slot, as ``(slot, [item positions])`` in order."""
    groups: list[tuple[FileSlot, list[int]]] = []
    for i, slot in enumerate(slots):
        if groups and groups[-1][0] == slot:
            groups[-1][1].append(i)
        else:
            groups.append((slot, [i]))
    return groups

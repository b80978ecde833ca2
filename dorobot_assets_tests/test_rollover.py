"""The size rule (reference notes §3.4 examples) and chunk/file progression."""

import pytest

from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover


def files(slots):
    return [s.file_index for s in slots]


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ([40, 40, 40, 40], [0, 0, 1, 1]),  # 80 + 40 >= 100 rolls
        ([60, 40, 10], [0, 1, 1]),  # 60 + 40 == 100 already rolls (>=)
        ([120, 10, 10], [0, 1, 1]),  # an oversized first episode sits alone in file 0
        ([10, 120, 10], [0, 1, 2]),
        ([99.9], [0]),
    ],
)
def test_fixed_rule_matches_reference_examples(sizes, expected):
    assert files(plan_rollover(sizes, 100)) == expected


def test_file_zero_is_never_skipped_unlike_lerobot_0_4_bug():
    # LeRobot 0.4.x never wrote file-000 when the first episode exceeded the limit (#2643).
    slots = plan_rollover([150, 150], 100)
    assert slots[0] == FileSlot(0, 0) and slots[1] == FileSlot(0, 1)


def test_chunk_advances_after_files_per_chunk():
    slots = plan_rollover([1] * 7, 1, files_per_chunk=3)
    assert [(s.chunk_index, s.file_index) for s in slots] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)
    ]


def test_forced_new_file_on_parameter_change():
    slots = plan_rollover([1, 1, 1, 1], 100, new_file_before=[False, False, True, False])
    assert files(slots) == [0, 0, 1, 1]
    assert group_by_slot(slots) == [(FileSlot(0, 0), [0, 1]), (FileSlot(0, 1), [2, 3])]


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        plan_rollover([1], 0)

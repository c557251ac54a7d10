from datetime import datetime

import pytest

from backfill.files.filenames import parse_name


@pytest.mark.parametrize(
    ("name", "timestamp", "stage", "label"),
    [
        ("20250708_060711_stage1_generated.png", "20250708_060711", 1.0, "stage1_generated"),
        ("20250708_060726_stage1.5_face_swapped.png", "20250708_060726", 1.5,
         "stage1.5_face_swapped"),
        ("20250708_060841_stage2_upscaled.PNG", "20250708_060841", 2.0, "stage2_upscaled"),
        ("20250708_061011_stage3_enhanced.jpeg", "20250708_061011", 3.0, "stage3_enhanced"),
        ("20250708_060711_stage2.png", "20250708_060711", 2.0, "stage2"),
        ("20250708_060711_stage1.5.png", "20250708_060711", 1.5, "stage1.5"),
        ("20250708_060711_Stage2_Upscaled (1).png", "20250708_060711", 2.0, "stage2_upscaled"),
    ],
)
def test_parses_timestamp_and_stage(name, timestamp, stage, label):
    parsed = parse_name(name)
    assert (parsed.timestamp, parsed.stage, parsed.stage_label) == (timestamp, stage, label)
    assert parsed.problem is None


def test_taken_at_is_the_timestamp_as_a_datetime():
    assert parse_name("20250708_060711_stage2.png").taken_at == datetime(2025, 7, 8, 6, 7, 11)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("IMG_0001.png", "no timestamp"),
        ("20251399_060711_stage1_generated.png", "invalid timestamp"),
        ("120250708_060711_stage1_generated.png", "no timestamp"),
        ("20250708_060711_thumbnail.png", "no stage label"),
        ("20250708_060711_backstage2.png", "no stage label"),
    ],
)
def test_names_that_cannot_be_grouped_say_why(name, problem):
    assert problem in parse_name(name).problem


def test_a_stage_before_the_timestamp_is_found():
    parsed = parse_name("stage2_upscaled_20250708_060711.png")
    assert (parsed.timestamp, parsed.stage, parsed.problem) == ("20250708_060711", 2.0, None)

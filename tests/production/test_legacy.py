"""production.legacy: the old scripts' decisions CSV read as v3 rows."""

from __future__ import annotations

import json

from backfill.production.legacy import read_decisions_csv


def test_a_legacy_csv_reads_as_v3_rows_and_bad_lines_are_reported(tmp_path):
    header = ("group_id,timestamp,project_id,directory,batch_number,image_1_filename,"
              "image_2_filename,image_3_filename,image_4_filename,ai_selected_index,"
              "ai_crop_x1,ai_crop_y1,ai_crop_x2,ai_crop_y2,ai_confidence,user_selected_index,"
              "user_action,final_crop_x1,final_crop_y1,final_crop_x2,final_crop_y2,"
              "crop_timestamp,image_width,image_height,selection_match,crop_match")
    lines = [header,
             "g1,2025-09-01T10:00:00Z,p,d,1,a.png,b.png,,,1,0.1,0.1,0.9,0.9,0.8,1,crop,"
             "0.2,0.2,0.8,0.8,2025-09-01T11:00:00Z,832,1216,True,False",
             "g2,2025-09-01T10:05:00Z,p,,,c.png,d.png,e.png,,,,,,,,0,reject,,,,,,832,1216,,",
             ",2025-09-01T10:09:00Z,p,,,f.png,,,,,,,,,,0,approve,,,,,,832,1216,,",
             "g4,2025-09-01T10:10:00Z,p,,,g.png,,,,,,,,,,x,approve,,,,,,832,1216,,"]
    path = tmp_path / "p_decisions.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, problems = read_decisions_csv(path, "p")
    assert rows["group_id"].tolist() == ["g1", "g2"]
    g1 = rows.iloc[0]
    assert json.loads(g1["images"]) == ["a.png", "b.png"]
    assert g1["ai_crop_coords"] == "[0.1, 0.1, 0.9, 0.9]" and g1["ai_selected_index"] == 1
    assert g1["final_crop_coords"] == "[0.2, 0.2, 0.8, 0.8]" and g1["selection_match"] is True
    assert rows.iloc[1]["ai_selected_index"] is None and rows.iloc[1]["final_crop_coords"] is None
    assert [d.split(": ")[1] for d in problems["detail"]] == [
        "no group_id", "user_selected_index unreadable"]
    assert "line 4" in problems["detail"][0]

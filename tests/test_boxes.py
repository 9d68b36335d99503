"""Boxes: IoU/IoBB on hand-made boxes, regions -> boxes, coordinate mapping, NIH box file, the accuracy table."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from paddle_chexnet.data.transforms import EvalTransform
from paddle_chexnet.localization.boxes import (
    BBOX_FINDINGS,
    BBoxFileError,
    Box,
    InputGeometry,
    boxes_from_heatmap,
    format_localization_txt,
    iobb,
    iou,
    localization_accuracy,
    match_boxes,
    read_bbox_csv,
    read_localization_txt,
    threshold_level,
    upsample_heatmap,
    write_boxes_csv,
    write_localization_txt,
)

# --- IoU / IoBB --------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,expected", [
    (Box(0, 0, 2, 2), Box(0, 0, 2, 2), 1.0),
    (Box(0, 0, 2, 2), Box(1, 0, 2, 2), 2 / 6),
    (Box(0, 0, 2, 2), Box(1, 1, 2, 2), 1 / 7),
    (Box(0, 0, 4, 4), Box(1, 1, 2, 2), 4 / 16),
    (Box(0, 0, 2, 2), Box(2, 0, 2, 2), 0.0),  # touching edges do not overlap
    (Box(0, 0, 2, 2), Box(5, 5, 1, 1), 0.0),
    (Box(10.5, 20.25, 3, 4), Box(11.5, 20.25, 3, 4), 8 / 16),
])
def test_iou_known_answers(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_iobb_is_intersection_over_the_detected_box():
    big, small = Box(0, 0, 4, 4), Box(1, 1, 2, 2)
    assert iobb(small, big) == pytest.approx(1.0)  # detection inside the expert box
    assert iobb(big, small) == pytest.approx(0.25)
    assert iobb(Box(0, 0, 2, 2), Box(1, 0, 2, 2)) == pytest.approx(0.5)
    assert iobb(Box(0, 0, 0, 0), big) == 0.0


def test_negative_size_box_is_rejected():
    with pytest.raises(ValueError, match="width and height"):
        Box(0, 0, -1, 2)


# --- boxes from a heatmap -----------------------------------------------------------------------

def test_two_regions_give_two_boxes_with_exact_pixels():
    heatmap = np.zeros((40, 60), dtype=np.float32)
    heatmap[5:15, 10:30] = 1.0   # rows 5..14, cols 10..29
    heatmap[25:35, 40:45] = 0.8
    boxes = boxes_from_heatmap(heatmap, threshold=0.5, finding="Mass")
    assert [(b.x, b.y, b.w, b.h) for b in boxes] == [(10, 5, 20, 10), (40, 25, 5, 10)]
    assert [b.score for b in boxes] == pytest.approx([1.0, 0.8])
    assert all(b.finding == "Mass" for b in boxes)
    # threshold above the weaker region's peak keeps only the stronger one
    assert len(boxes_from_heatmap(heatmap, threshold=0.9)) == 1
    assert len(boxes_from_heatmap(heatmap, threshold=0.5, max_boxes=1)) == 1
    assert len(boxes_from_heatmap(heatmap, threshold=0.5, min_area=100)) == 1  # 5x10 = 50 < 100


def test_connectivity_joins_diagonal_neighbours_only_when_8():
    heatmap = np.zeros((6, 6))
    heatmap[1, 1] = heatmap[2, 2] = 1.0
    assert len(boxes_from_heatmap(heatmap, connectivity=8)) == 1
    assert len(boxes_from_heatmap(heatmap, connectivity=4)) == 2


def test_flat_and_negative_maps():
    assert boxes_from_heatmap(np.zeros((5, 5))) == []
    # a signed CAM: only the positive part counts, relative to the maximum
    cam = -np.ones((10, 10))
    cam[1:3, 1:3] = 0.3   # below 0.5 * max
    cam[6:8, 5:9] = 1.0
    assert threshold_level(cam, 0.5) == pytest.approx(0.5)
    (box,) = boxes_from_heatmap(cam, threshold=0.5)
    assert (box.x, box.y, box.w, box.h) == (5, 6, 4, 2)
    assert len(boxes_from_heatmap(cam, threshold=0.2)) == 2
    # nothing positive: measured from the minimum so the least negative region still shows
    negative = -np.ones((10, 10))
    negative[2:4, 6:9] = -0.2
    assert threshold_level(negative, 0.5) == pytest.approx(-0.6)
    (box,) = boxes_from_heatmap(negative, threshold=0.5)
    assert (box.x, box.y, box.w, box.h) == (6, 2, 3, 2)
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_heatmap(cam, threshold=1.5)


# --- coordinate mapping --------------------------------------------------------------------------

def test_geometry_matches_the_transform_for_nih_size():
    g = InputGeometry.for_transform(1024, 1024, resize=256, crop=224)
    assert (g.resized_width, g.resized_height, g.left, g.top, g.input_width) == (256, 256, 16, 16, 224)
    assert g.input_to_original(0, 0) == (64.0, 64.0)
    assert g.input_to_original(224, 224) == (960.0, 960.0)
    full = InputGeometry.for_transform(1024, 1024, resize=256)
    assert (full.left, full.top, full.input_width, full.input_height) == (0, 0, 256, 256)
    assert full.input_box_to_original(Box(10, 20, 30, 40)) == Box(40, 80, 120, 160)


@pytest.mark.parametrize("size,crop", [((300, 200), 56), ((200, 300), 56), ((300, 200), None), ((97, 131), 40)])
def test_geometry_follows_a_marker_through_eval_transform(size, crop):
    """A bright block in the original lands where the geometry says in the transformed input."""
    width, height = size
    pixels = np.zeros((height, width), dtype=np.uint8)
    x0, y0 = int(width * 0.45), int(height * 0.4)
    pixels[y0:y0 + height // 8, x0:x0 + width // 8] = 255
    resize = 64 if crop else 48
    if crop is None:
        from paddle_chexnet.data.transforms import normalize, resize_shorter_side

        chw = normalize(resize_shorter_side(Image.fromarray(pixels), resize))
    else:
        chw = EvalTransform(crops="center", resize=resize, crop=crop)(Image.fromarray(pixels))
    g = InputGeometry.for_transform(width, height, resize=resize, crop=crop)
    assert chw.shape[1:] == (g.input_height, g.input_width)
    bright = chw[0] > chw[0].min() + 0.5 * (chw[0].max() - chw[0].min())
    rows, cols = np.nonzero(bright)
    mapped = g.input_box_to_original(Box(cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()))
    truth = Box(x0, y0, width // 8, height // 8)
    # one input pixel of slack on each edge
    assert abs(mapped.x - truth.x) <= g.scale_x + 1e-9 and abs(mapped.y - truth.y) <= g.scale_y + 1e-9
    assert abs(mapped.x2 - truth.x2) <= g.scale_x + 1e-9 and abs(mapped.y2 - truth.y2) <= g.scale_y + 1e-9


def test_upsample_reproduces_a_linear_map_exactly():
    """Bilinear interpolation of a ramp is the ramp: checks scale, crop offset and cell centres at once."""
    g = InputGeometry.for_transform(1024, 1024, resize=256, crop=224)
    cells = 7
    ramp = np.tile(np.arange(cells, dtype=np.float64), (cells, 1))  # value = column index
    up = upsample_heatmap(ramp, g)
    assert up.shape == (1024, 1024)
    x = np.arange(1024) + 0.5
    position = ((x / 4.0) - 16.0) * cells / 224.0 - 0.5
    expected = np.clip(position, 0, cells - 1)
    inside = (x / 4.0 - 16 >= 0) & (x / 4.0 - 16 < 224)
    expected[~inside] = 0.0
    np.testing.assert_allclose(up[500], expected, atol=1e-5)
    # outside the crop the network saw nothing
    assert np.all(up[:64] == 0) and np.all(up[:, 960:] == 0)


def test_upsample_batched_and_constant():
    g = InputGeometry.for_transform(300, 200, resize=64)
    maps = np.stack([np.full((4, 6), 2.0), np.full((4, 6), -1.0)])
    up = upsample_heatmap(maps, g)
    assert up.shape == (2, 200, 300)
    np.testing.assert_allclose(up[0], 2.0, atol=1e-6)
    np.testing.assert_allclose(up[1], -1.0, atol=1e-6)


def test_box_in_input_coordinates_comes_back_in_original_pixels():
    g = InputGeometry.for_transform(300, 200, resize=64, crop=56)  # resized 96x64, left 20, top 4
    assert (g.resized_width, g.resized_height, g.left, g.top) == (96, 64, 20, 4)
    heatmap = np.zeros((56, 56))
    heatmap[12:20, 10:30] = 1.0  # input box (10, 12, 20, 8)
    (box,) = boxes_from_heatmap(upsample_heatmap(heatmap, g), threshold=0.5)
    expected = Box((10 + 20) * 300 / 96, (12 + 4) * 200 / 64, 20 * 300 / 96, 8 * 200 / 64)
    assert expected == Box(93.75, 50.0, 62.5, 25.0)
    assert abs(box.x - expected.x) <= 2 and abs(box.y - expected.y) <= 2
    assert abs(box.x2 - expected.x2) <= 2 and abs(box.y2 - expected.y2) <= 2
    assert iou(box, expected) > 0.9


# --- NIH's box file ---------------------------------------------------------------------------------

def test_read_bbox_csv_handmade(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "a.png,Infiltrate,10.5,20,30,40,,,\n"
        "a.png,Mass,1,2,3,4\n"
        "b.png,Nodule,5,6,7,8,,\n"
    )
    boxes = read_bbox_csv(path)
    assert boxes == {
        "a.png": [Box(10.5, 20, 30, 40, finding="Infiltration"), Box(1, 2, 3, 4, finding="Mass")],
        "b.png": [Box(5, 6, 7, 8, finding="Nodule")],
    }


@pytest.mark.parametrize("line,message", [
    ("a.png,Mass,1,2,x,4", "must be numbers"),
    ("a.png,Tumour,1,2,3,4", "unknown finding"),
    ("a.png,Mass,1,2,3", "expected"),
    ("a.png,Mass,1,2,3,-4", "negative"),
])
def test_read_bbox_csv_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\n" + line + "\n")
    with pytest.raises(BBoxFileError, match=rf"boxes.csv:3: .*{message}"):
        read_bbox_csv(path)


@pytest.mark.shared_data
def test_read_real_nih_bbox_csv(meta_dir):
    boxes = read_bbox_csv(meta_dir / "BBox_List_2017.csv")
    flat = [b for image_boxes in boxes.values() for b in image_boxes]
    assert len(flat) == 984
    counts = {f: sum(b.finding == f for b in flat) for f in BBOX_FINDINGS}
    assert counts == {"Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltration": 123,
                      "Mass": 85, "Nodule": 79, "Pneumonia": 120, "Pneumothorax": 98}
    assert all(0 <= b.x and b.x2 <= 1025 and 0 <= b.y and b.y2 <= 1025 for b in flat)
    assert len(boxes) == 880  # images with at least one box


# --- the accuracy table -----------------------------------------------------------------------------

def test_localization_accuracy_handmade():
    truths = {
        "a.png": [Box(0, 0, 10, 10, finding="Mass"), Box(50, 50, 10, 10, finding="Nodule")],
        "b.png": [Box(0, 0, 10, 10, finding="Mass")],
    }
    predictions = {
        # IoU with a's Mass = 1 ; one false positive far away
        "a.png": [Box(0, 0, 10, 10, finding="Mass"), Box(80, 80, 5, 5, finding="Mass"),
                  # Nodule: IoU 0.25 (inside the expert box, IoBB 1)
                  Box(52.5, 52.5, 5, 5, finding="Nodule")],
        # b: a Mass box with IoU 50/150 = 1/3 (shifted by 5), and a box of the wrong finding on top
        "b.png": [Box(5, 0, 10, 10, finding="Mass"), Box(0, 0, 10, 10, finding="Nodule")],
    }
    matches = match_boxes(predictions, truths)
    assert [round(m.best_iou, 4) for m in matches] == [1.0, 0.25, round(1 / 3, 4)]
    report = localization_accuracy(predictions, truths, iou_thresholds=(0.1, 0.3, 0.5), iobb_thresholds=(0.5, 0.9))
    mass, nodule = report.rows["Mass"], report.rows["Nodule"]
    assert list(report.rows) == ["Mass", "Nodule", "Mean"]
    assert mass["n"] == 2 and nodule["n"] == 1
    assert (mass["acc_iou@0.1"], mass["acc_iou@0.3"], mass["acc_iou@0.5"]) == (1.0, 1.0, 0.5)
    assert (nodule["acc_iou@0.1"], nodule["acc_iou@0.3"]) == (1.0, 0.0)
    assert nodule["acc_iobb@0.9"] == 1.0 and mass["acc_iobb@0.9"] == 0.5
    # Mass false positives at T=0.5: a's far box, b's shifted box -> 2 over 2 images
    assert mass["afp_iou@0.5"] == 1.0 and mass["afp_iou@0.1"] == 0.5
    assert report.rows["Mean"]["acc_iou@0.5"] == pytest.approx(0.25)
    assert report.rows["Mean"]["n"] == 3
    csv_text = report.to_csv()
    assert csv_text.splitlines()[0].startswith("finding,n,acc_iou@0.1,acc_iou@0.3")
    assert "| Mass | 2 | 1.000 | 1.000 | 0.500 |" in report.to_markdown()


def test_missing_predictions_count_as_misses():
    truths = {"a.png": [Box(0, 0, 10, 10, finding="Effusion")]}
    report = localization_accuracy({}, truths)
    assert report.rows["Effusion"]["acc_iou@0.1"] == 0.0
    assert report.rows["Effusion"]["afp_iou@0.1"] == 0.0


# --- export ----------------------------------------------------------------------------------------

def test_writers_round_trip(tmp_path):
    boxes = {"x/1.png": [Box(1, 2, 3, 4, 0.9, "Mass"), Box(5.25, 6, 7, 8, 0.5, "Nodule")], "2.png": []}
    write_boxes_csv(tmp_path / "boxes.csv", boxes)
    with open(tmp_path / "boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["finding"] for r in rows] == ["Mass", "Nodule"]
    assert rows[1] == {"image": "x/1.png", "finding": "Nodule", "x": "5.2", "y": "6.0", "w": "7.0", "h": "8.0",
                       "score": "0.5000"}
    text = format_localization_txt(boxes)
    assert text == "x/1.png 2\nMass 1.0 2.0 3.0 4.0\nNodule 5.2 6.0 7.0 8.0\n2.png 0\n"
    write_localization_txt(tmp_path / "bounding_box.txt", boxes)
    back = read_localization_txt(tmp_path / "bounding_box.txt")
    assert back["x/1.png"][0] == Box(1, 2, 3, 4, finding="Mass") and back["2.png"] == []
    (tmp_path / "bad.txt").write_text("a.png 2\nMass 1 2 3 4\n")
    with pytest.raises(BBoxFileError, match="bad.txt:3"):
        read_localization_txt(tmp_path / "bad.txt")

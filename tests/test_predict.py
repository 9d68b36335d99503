"""tools/predict.py and tools/localize_eval.py end to end, on generated images and on a few real ones."""
from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_chexnet import CLASS_NAMES, DenseNet, densenet121
from paddle_chexnet.data.images import list_images
from paddle_chexnet.localization.boxes import Box, read_localization_txt
from paddle_chexnet.localization.cam import class_activation_maps
from paddle_chexnet.localization.predict import (
    format_prediction_table,
    iter_heatmaps,
    prepare_input,
    read_thresholds,
)
from paddle_chexnet.localization.protocol import localize_known_findings
from paddle_chexnet.models.densenet import TINY
from paddle_chexnet.models.loading import infer_densenet_options, load_network

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """The command behind ``tools/<name>.py``."""
    return importlib.import_module(f"paddle_chexnet.cli.{name}")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    paddle.seed(3)
    net = DenseNet(**TINY, num_classes=14)
    path = tmp_path_factory.mktemp("weights") / "tiny.pdparams"
    paddle.save(net.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A PNG (gray, non-square), a JPEG (RGB) in a subfolder and a 16-bit MONOCHROME1 DICOM without suffix."""
    from test_dicom import write_dicom

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (160, 200), dtype=np.uint8), "L").save(folder / "a.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8), "RGB").save(folder / "sub" / "b.jpg")
    write_dicom(folder / "c_dicom", rng.integers(0, 4096, (96, 128)).astype(np.uint16), "MONOCHROME1", 12)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_list_images_finds_png_jpeg_and_suffixless_dicom(image_folder):
    names = [p.relative_to(image_folder).as_posix() for p in list_images(image_folder)]
    assert names == ["a.png", "c_dicom", "sub/b.jpg"]
    assert list_images(image_folder / "a.png") == [image_folder / "a.png"]
    with pytest.raises(FileNotFoundError, match="no such image"):
        list_images(image_folder / "missing")


def test_infer_config_and_load_weights_without_a_sidecar(tiny_weights):
    assert infer_densenet_options(paddle.load(str(tiny_weights))) == TINY
    full = infer_densenet_options(densenet121(num_classes=14).state_dict())
    assert full == {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64, "bn_size": 4}
    net = load_network(tiny_weights)
    assert not net.training and net.class_names == CLASS_NAMES and net.spec.arch == "tiny"
    assert infer_densenet_options({"fc.weight": np.zeros((2, 2))}) is None


def test_read_thresholds(tmp_path):
    np.testing.assert_array_equal(read_thresholds("0.3"), np.full(14, 0.3))
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": {"default": 0.9, "Infiltrate": 0.2, "Mass": 0.4}}))
    got = read_thresholds(str(tmp_path / "t.json"))
    assert got[CLASS_NAMES.index("Infiltration")] == 0.2 and got[CLASS_NAMES.index("Mass")] == 0.4
    assert got[0] == 0.9
    (tmp_path / "t.csv").write_text("finding,threshold\n" + "".join(f"{n},0.{i % 9 + 1}\n" for i, n in
                                                                    enumerate(CLASS_NAMES)))
    assert read_thresholds(str(tmp_path / "t.csv"))[13] == pytest.approx(0.5)
    (tmp_path / "partial.json").write_text(json.dumps({"Mass": 0.4}))
    with pytest.raises(ValueError, match="partial.json: no threshold for Atelectasis"):
        read_thresholds(str(tmp_path / "partial.json"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_thresholds("1.5")
    (tmp_path / "bad.csv").write_text("Mass,0.3\nEdema,high\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_thresholds(str(tmp_path / "bad.csv"))


def test_predict_end_to_end_on_generated_images(tiny_weights, image_folder, tmp_path):
    predict = load_tool("predict")
    (tmp_path / "thr.json").write_text(json.dumps({"default": 1.0, "Effusion": 0.0}))
    out = tmp_path / "out"
    args = predict.get_args_parser().parse_args([
        str(image_folder), "--weights", str(tiny_weights), "--output_dir", str(out), "--cam", "gradcampp",
        "--threshold", str(tmp_path / "thr.json"), "--batch-size", "2", "--quiet",
    ])
    result = predict.run(args)
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", *CLASS_NAMES]
    assert [r[0] for r in rows[1:]] == ["a.png", "c_dicom", "sub/b.jpg"]
    probabilities = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert ((probabilities > 0) & (probabilities < 1)).all()
    # only Effusion is at or above its threshold: one overlay per image, at the image's own size
    sizes = {"a.png": (200, 160), "c_dicom": (128, 96), "sub/b.jpg": (120, 120)}
    # small images are drawn enlarged by an integer factor (shorter side >= 384) so the label is legible
    drawn = {"a.png": (600, 480), "c_dicom": (512, 384), "sub/b.jpg": (480, 480)}
    for name in sizes:
        overlay = out / "heatmaps" / f"{name.rsplit('.', 1)[0].replace('/', '__')}_Effusion.png"
        with Image.open(overlay) as picture:
            assert picture.size == drawn[name] and picture.mode == "RGB"
    assert len(list((out / "heatmaps").iterdir())) == 3 and len(result.overlays) == 3
    boxes = read_localization_txt(out / "bounding_box.txt")
    assert set(boxes) == set(sizes)
    for name, image_boxes in boxes.items():
        assert image_boxes and all(b.finding == "Effusion" for b in image_boxes)
        width, height = sizes[name]
        assert all(0 <= b.x and b.x2 <= width and 0 <= b.y and b.y2 <= height for b in image_boxes)
    with open(out / "boxes.csv", newline="") as handle:
        box_rows = list(csv.DictReader(handle))
    assert len(box_rows) == sum(len(b) for b in boxes.values())
    table = (out / "predictions.txt").read_text()
    assert table.startswith("a.png\n") and "* Effusion" in table and "(threshold 1.0000)" in table


def test_predicted_probabilities_are_those_of_the_shown_input(tiny_weights, image_folder, tmp_path):
    """The CSV's numbers are the network's output on the whole resized image (one forward pass)."""
    predict = load_tool("predict")
    out = tmp_path / "o"
    predict.main(predict.get_args_parser().parse_args([
        str(image_folder / "a.png"), "--weights", str(tiny_weights), "--output-dir", str(out), "--threshold", "1",
        "--resize", "64", "--quiet",
    ]))
    with open(out / "predictions.csv", newline="") as handle:
        row = list(csv.reader(handle))[1]
    assert row[0] == "a.png" and not (out / "heatmaps").exists()
    net = load_network(tiny_weights)
    chw, geometry = prepare_input(Image.open(image_folder / "a.png"), resize=64)
    assert chw.shape == (3, 64, 80) and (geometry.width, geometry.height) == (200, 160)
    expected = class_activation_maps(net, chw[None]).probabilities[0]
    np.testing.assert_allclose([float(v) for v in row[1:]], expected, atol=2e-6)


def test_prediction_table_marks_findings_above_threshold():
    probabilities = np.linspace(0.0, 0.65, 14)
    text = format_prediction_table([("x.png", probabilities)], CLASS_NAMES, np.full(14, 0.62))
    lines = text.splitlines()
    assert lines[1].strip().startswith("* Hernia") and lines[2].strip().startswith("Pleural_Thickening")


def test_localize_eval_end_to_end(tiny_weights, tmp_path):
    rng = np.random.default_rng(5)
    images = tmp_path / "images" / "images_001" / "images"
    images.mkdir(parents=True)
    for name in ("p1.png", "p2.png"):
        Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8), "L").save(images / name)
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "p1.png,Infiltrate,10,10,60,60,,,\np2.png,Mass,30,40,20,20,,,\nmissing.png,Mass,1,1,5,5\n")
    tool = load_tool("localize_eval")
    base = ["--weights", str(tiny_weights), "--bbox-csv", str(bbox), "--data-dir", str(tmp_path / "images")]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tool.run(tool.get_args_parser().parse_args(base))
    out = tmp_path / "eval"
    report = tool.run(tool.get_args_parser().parse_args(
        base + ["--skip-missing", "--output-dir", str(out), "--iou-thresholds", "0.1,0.5"]))
    assert list(report.rows) == ["Infiltration", "Mass", "Mean"]
    assert report.rows["Infiltration"]["n"] == 1 and report.rows["Mean"]["n"] == 2
    for row in report.rows.values():
        assert 0.0 <= row["acc_iou@0.1"] <= 1.0 and row["acc_iou@0.5"] <= row["acc_iou@0.1"]
    assert (out / "localization.csv").read_text().startswith("finding,n,acc_iou@0.1,acc_iou@0.5,afp_iou@0.1")
    detected = read_localization_txt(out / "bounding_box.txt")
    assert set(detected) == {"p1.png", "p2.png"}
    (tmp_path / "test_list.txt").write_text("p2.png " + " ".join(["0"] * 14) + "\n")
    only = tool.run(tool.get_args_parser().parse_args(base + ["--image-list", str(tmp_path / "test_list.txt")]))
    assert list(only.rows) == ["Mass", "Mean"] and only.rows["Mass"]["n"] == 1
    assert {b.finding for b in detected["p1.png"]} == {"Infiltration"}  # the boxed finding only
    assert {b.finding for b in detected["p2.png"]} == {"Mass"}


def test_known_findings_map_only_the_boxed_classes(tiny_weights, tmp_path, monkeypatch):
    """Only the boxed findings' maps are computed, and their boxes are those of the all-class maps."""
    import paddle_chexnet.localization.predict as localization

    requested = []
    original = localization.compute_heatmaps
    monkeypatch.setattr(localization, "compute_heatmaps",
                        lambda *a, **k: requested.append(k.get("class_ids")) or original(*a, **k))
    rng = np.random.default_rng(8)
    paths = {}
    for name in ("a.png", "b.png", "c.png"):
        paths[name] = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8), "L").save(paths[name])
    truths = {"a.png": [Box(10, 10, 30, 30, finding="Mass")], "b.png": [Box(5, 5, 20, 20, finding="Nodule")],
              "c.png": [Box(40, 40, 20, 20, finding="Mass"), Box(0, 0, 50, 50, finding="Atelectasis")]}
    net = load_network(tiny_weights)
    kwargs = {"method": "gradcam", "resize": 64, "batch_size": 2, "max_boxes": 2}
    detected = localize_known_findings(net, truths, paths, **kwargs)
    boxed = sorted(CLASS_NAMES.index(f) for f in ("Mass", "Nodule", "Atelectasis"))
    assert requested == [boxed, boxed]  # two batches, three of the 14 classes each
    full = dict(zip(paths, iter_heatmaps(net, list(paths.values()), "gradcam", 64, None, 2)))
    for name, boxes in truths.items():
        expected = []
        for finding in dict.fromkeys(b.finding for b in boxes):
            expected += full[name].boxes(CLASS_NAMES.index(finding), finding, 0.5, 0.0, 2)
        assert [(b.finding, b.x, b.y, b.w, b.h) for b in detected[name]] == \
            [(b.finding, b.x, b.y, b.w, b.h) for b in expected]
    subset = next(iter_heatmaps(net, [paths["a.png"]], "gradcam", 64, None, 2, class_ids=[5, 0]))
    assert subset.maps.shape[0] == 2
    np.testing.assert_allclose(subset.heatmap(5), full["a.png"].heatmap(5), rtol=1e-4, atol=1e-6)
    with pytest.raises(KeyError, match="no heatmap of class 3"):
        subset.heatmap(3)


@pytest.mark.shared_data
def test_predict_on_real_sample_images(sample_dir, tiny_weights, tmp_path):
    """Three real NIH images (one is RGBA) with random weights: every output is written at 1024x1024."""
    names = ["00000100_000.png", "00000129_000.png", "00000211_000.png"]
    folder = tmp_path / "real"
    folder.mkdir()
    for name in names:  # links, never copies into the repository
        (folder / name).symlink_to(sample_dir / "images" / name)
    predict = load_tool("predict")
    out = tmp_path / "out"
    (tmp_path / "thr.json").write_text(json.dumps({"default": 1.0, "Effusion": 0.0, "Nodule": 0.0}))
    result = predict.run(predict.get_args_parser().parse_args([
        str(folder), "--weights", str(tiny_weights), "--output-dir", str(out), "--threshold",
        str(tmp_path / "thr.json"), "--max-boxes", "2", "--quiet",
    ]))
    assert [name for name, _ in result.predictions] == names
    assert len(result.overlays) == 3 * 2
    with Image.open(result.overlays[0]) as picture:
        assert picture.size == (1024, 1024)
    for image_boxes in result.boxes.values():
        assert all(0 <= b.x and b.x2 <= 1024 and 0 <= b.y and b.y2 <= 1024 for b in image_boxes)
        for finding in ("Effusion", "Nodule"):
            assert 1 <= sum(b.finding == finding for b in image_boxes) <= 2


def test_overlay_colours_boxes_label_and_scale(tmp_path):
    from paddle_chexnet.localization.boxes import Box
    from paddle_chexnet.localization.overlays import colorize, overlay_heatmap, save_png

    image = Image.fromarray(np.full((40, 60), 100, dtype=np.uint8), "L")
    heatmap = np.zeros((40, 60), dtype=np.float32)
    heatmap[30:40, 50:60] = 1.0
    jet = colorize(heatmap)
    assert tuple(jet[35, 55]) == (128, 0, 0) and tuple(jet[0, 0]) == (0, 0, 128)  # jet's ends: dark red, dark blue
    out = overlay_heatmap(image, heatmap, [Box(10, 5, 20, 10)], label=None, alpha=0.5)
    pixels = np.asarray(out).astype(int)
    assert out.size == (60, 40)
    assert tuple(pixels[35, 55]) == (114, 50, 50)          # (100 + 128) / 2, (100 + 0) / 2
    assert tuple(pixels[5, 15]) == (255, 255, 255)           # the box's top edge
    assert tuple(pixels[20, 20]) == (50, 50, 114)            # untouched inside: gray + blue
    big = overlay_heatmap(image, heatmap, [Box(10, 5, 20, 10)], label="Mass p=0.90", scale=4)
    big_pixels = np.asarray(big).astype(int)
    assert big.size == (240, 160)
    assert tuple(big_pixels[20, 60]) == (255, 255, 255)      # box edge at 4x its coordinates
    assert tuple(big_pixels[2, 2]) == (0, 0, 0)              # the label's background
    with pytest.raises(ValueError, match="upsample"):
        overlay_heatmap(image, np.zeros((10, 10)))
    path = save_png(big, tmp_path / "x" / "o.png")
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(big))


def test_unreadable_file_stops_the_run_or_is_skipped(tiny_weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8), "L").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    predict = load_tool("predict")
    base = [str(folder), "--weights", str(tiny_weights), "--threshold", "1", "--quiet"]
    from paddle_chexnet.data.images import ImageReadError

    with pytest.raises(ImageReadError, match="broken.png"):
        predict.run(predict.get_args_parser().parse_args(base + ["--output-dir", str(tmp_path / "a")]))
    result = predict.run(predict.get_args_parser().parse_args(
        base + ["--output-dir", str(tmp_path / "b"), "--skip-unreadable"]))
    assert [name for name, _ in result.predictions] == ["good.png"]
    assert result.skipped == [folder / "broken.png"]

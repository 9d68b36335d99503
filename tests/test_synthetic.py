"""The synthetic ChestX-ray14-style data set: determinism, layout, formats, boxes on the lesions, split."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env
from PIL import Image

from paddle_chexnet.data.label_lists import read_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.nih import nih_label_lists, read_name_list, read_nih_data_entry
from paddle_chexnet.data.synthetic import (
    BBOX_HEADER,
    PATTERNS,
    SPLITS,
    draw_lesion,
    make_dataset,
    render_example,
)
from paddle_chexnet.localization.boxes import read_bbox_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES, IMAGE_SIZE, SEED = 120, 96, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), num_images=NUM_IMAGES, image_size=IMAGE_SIZE,
                        seed=SEED, workers=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path, dataset):
    again = make_dataset(tmp_path / "again", num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=SEED, workers=1)
    first, second = _files(dataset.root), _files(again.root)
    assert sorted(first) == sorted(second)
    assert len(first) == NUM_IMAGES + 3 + 5  # images, 3 label lists, 2 CSVs + 2 name lists + info
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_another_seed_gives_other_images(tmp_path, dataset):
    other = make_dataset(tmp_path / "other", num_images=20, image_size=IMAGE_SIZE, seed=SEED + 1, workers=1)
    mine = _files(dataset.root)
    theirs = _files(other.root)
    same = [n for n in theirs if n.startswith("images/") and theirs[n] == mine.get(n)]
    assert same == []


def test_images_are_8bit_gray_pngs_with_nih_names(dataset):
    paths = sorted(dataset.image_dir.glob("*.png"))
    assert len(paths) == NUM_IMAGES
    patients = set()
    for path in paths[:30]:
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.format == "PNG"
    for path in paths:
        patient, follow_up = path.stem.split("_")
        assert len(patient) == 8 and len(follow_up) == 3 and patient.isdigit() and follow_up.isdigit()
        patients.add(patient)
    assert len(patients) < NUM_IMAGES * 0.6  # several images per patient


def test_label_lists_parse_and_match_the_records(dataset):
    seen = []
    for split in SPLITS:
        labels = read_label_list(dataset.label_list(split))
        assert labels.class_names == CLASS_NAMES
        records = dataset.split_records(split)
        assert labels.names == [r.name for r in records]
        np.testing.assert_array_equal(labels.labels, np.array([r.labels for r in records], dtype=np.float32))
        assert all((dataset.image_dir / name).is_file() for name in labels.names)
        seen += labels.names
    assert sorted(seen) == sorted(r.name for r in dataset.records)
    sizes = {split: len(dataset.split_records(split)) for split in SPLITS}
    assert 0.08 * NUM_IMAGES <= sizes["val"] <= 0.25 * NUM_IMAGES, sizes
    assert 0.08 * NUM_IMAGES <= sizes["test"] <= 0.25 * NUM_IMAGES, sizes


def test_no_patient_in_two_splits(dataset):
    split_of_patient: dict[str, set[str]] = {}
    for split in SPLITS:
        for name in read_label_list(dataset.label_list(split)).names:
            split_of_patient.setdefault(name.split("_")[0], set()).add(split)
    mixed = {p: s for p, s in split_of_patient.items() if len(s) > 1}
    assert mixed == {}
    assert len(split_of_patient) > 10


def test_classes_are_imbalanced_but_all_present(tmp_path):
    ds = make_dataset(tmp_path, num_images=600, image_size=48, seed=0)
    counts = np.array([r.labels for r in ds.records]).sum(axis=0)
    assert counts.min() >= 0.03 * 600, dict(zip(CLASS_NAMES, counts))
    assert counts[CLASS_NAMES.index("Infiltration")] >= 2.5 * counts[CLASS_NAMES.index("Hernia")]
    per_image = np.array([sum(r.labels) for r in ds.records])
    assert per_image.max() <= 3 and 0.04 < (per_image == 0).mean() < 0.2


def test_nih_files_agree_with_the_label_lists(dataset):
    entry = read_nih_data_entry(dataset.root / "Data_Entry_2017.csv")
    header = (dataset.root / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert header.startswith("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender")
    lists = nih_label_lists(entry, dataset.root / "train_val_list.txt", dataset.root / "test_list.txt")
    test = read_label_list(dataset.label_list("test"))
    assert lists["test"].names == test.names
    np.testing.assert_array_equal(lists["test"].labels, test.labels)
    train_val = read_name_list(dataset.root / "train_val_list.txt")
    assert set(train_val) == {r.name for r in dataset.records if r.split != "test"}
    no_finding = [line for line in (dataset.root / "Data_Entry_2017.csv").read_text().splitlines()[1:]
                  if ",No Finding," in line]
    assert len(no_finding) == sum(1 for r in dataset.records if sum(r.labels) == 0)


def test_bbox_csv_is_nih_format_with_one_box_per_positive(dataset):
    text = dataset.bbox_csv.read_text()
    assert text.splitlines()[0] == BBOX_HEADER
    assert ",Infiltrate," in text and ",Infiltration," not in text  # NIH's spelling
    boxes = read_bbox_csv(dataset.bbox_csv)
    for record in dataset.records:
        found = sorted(b.finding for b in boxes.get(record.name, []))
        assert found == sorted(record.findings), record.name
        for box in boxes.get(record.name, []):
            assert 0 <= box.x and 0 <= box.y and box.x2 <= IMAGE_SIZE and box.y2 <= IMAGE_SIZE
            assert 0.18 * IMAGE_SIZE <= max(box.w, box.h) <= 0.34 * IMAGE_SIZE, box


def test_saved_pixels_are_render_example(dataset):
    for index in (0, 5, NUM_IMAGES - 1):
        pixels, boxes, findings = render_example(SEED, index, IMAGE_SIZE)
        record = dataset.records[index]
        saved = np.asarray(Image.open(dataset.image_dir / record.name))
        np.testing.assert_array_equal(saved, pixels)
        assert findings == record.findings and boxes == record.boxes


def test_boxes_cover_the_lesions_and_nothing_else_changes(dataset):
    """Drawing the lesions changes pixels only in (or right beside) their boxes, and most of each box."""
    checked = 0
    for index, record in enumerate(dataset.records):
        if not record.boxes:
            continue
        with_lesions, boxes, _ = render_example(SEED, index, IMAGE_SIZE)
        without, no_boxes, _ = render_example(SEED, index, IMAGE_SIZE, draw_lesions=False)
        assert no_boxes == []
        changed = np.abs(with_lesions.astype(int) - without.astype(int)) > 25
        inside = np.zeros_like(changed)
        for box in boxes:
            # the blur spreads a lesion by a pixel or two past its box
            inside[max(box.y - 2, 0):box.y + box.h + 2, max(box.x - 2, 0):box.x + box.w + 2] = True
            own = changed[box.y:box.y + box.h, box.x:box.x + box.w]
            assert own.mean() > 0.2, (record.name, box)
            # the lesion touches all four sides of its box (the box is tight)
            assert own[:3].any() and own[-3:].any() and own[:, :3].any() and own[:, -3:].any(), (record.name, box)
        assert not (changed & ~inside).any(), record.name
        checked += 1
    assert checked > NUM_IMAGES // 2


@pytest.mark.parametrize("finding", CLASS_NAMES)
def test_each_pattern_fills_its_box_and_differs_from_the_others(finding):
    image = np.zeros((64, 64), dtype=np.float32)
    box = draw_lesion(image, finding, (32.0, 32.0), 40, 100.0, np.random.default_rng(0))
    ys, xs = np.nonzero(image)
    assert (box.x, box.y, box.x + box.w - 1, box.y + box.h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert box.w >= 24 and box.h >= 24  # the pattern spans its box (speckle: most of it)
    crop = image[box.y:box.y + box.h, box.x:box.x + box.w] > 0
    for other in CLASS_NAMES:
        if other == finding:
            continue
        other_image = np.zeros((64, 64), dtype=np.float32)
        draw_lesion(other_image, other, (32.0, 32.0), 40, 100.0, np.random.default_rng(0))
        other_crop = other_image[box.y:box.y + box.h, box.x:box.x + box.w] > 0
        assert (crop != other_crop).mean() > 0.1, (finding, other)


def test_bad_arguments_raise_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        make_dataset(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="image_size"):
        make_dataset(tmp_path, image_size=16)
    with pytest.raises(ValueError, match="val_fraction"):
        make_dataset(tmp_path, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(KeyError, match="Infiltrate"):
        draw_lesion(np.zeros((32, 32), np.float32), "Infiltrate", (16, 16), 10, 1.0, np.random.default_rng(0))
    assert len(PATTERNS) == len(CLASS_NAMES)


def test_command_line_writes_the_set(tmp_path):
    out = tmp_path / "cli"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "make_synthetic.py"), "--output-dir", str(out),
         "--num-images", "12", "--image_size", "64", "--seed", "3"],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )
    assert completed.returncode == 0, completed.stderr
    assert len(list((out / "images").glob("*.png"))) == 12
    assert (out / "labels" / "train_list.txt").is_file() and (out / "BBox_List_2017.csv").is_file()
    assert "wrote 12 images" in completed.stdout + completed.stderr
    bad = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "make_synthetic.py"), "--output-dir", str(out),
         "--val-fraction", "0.7", "--test-fraction", "0.5"],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )
    assert bad.returncode == 1
    assert "val_fraction (0.7)" in bad.stderr and "Traceback" not in bad.stderr

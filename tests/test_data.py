"""Label lists, image folders, the dataset and NIH's files: parsing, validation and the patient split."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_chexnet.data.datasets import (
    ChestXray14Dataset,
    MissingImagesError,
    index_images,
)
from paddle_chexnet.data.images import ImageReadError
from paddle_chexnet.data.label_lists import (
    LabelList,
    LabelListError,
    read_label_list,
    write_label_list,
)
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.nih import (
    nih_label_lists,
    read_nih_data_entry,
    split_by_patient,
)
from paddle_chexnet.data.transforms import EvalTransform

C = len(CLASS_NAMES)


def _write_list(path: Path, rows: dict[str, list[int]]) -> Path:
    path.write_text("".join(f"{n} {' '.join(map(str, r))}\n" for n, r in rows.items()))
    return path


def _rows(n: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    return {f"{i:08d}_000.png": rng.integers(0, 2, C).tolist() for i in range(n)}


def _make_images(folder: Path, names, size=(40, 36)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L").save(folder / name)


# ------------------------------------------------------------------ label lists


def test_read_label_list_roundtrip(tmp_path):
    rows = _rows(7)
    ll = read_label_list(_write_list(tmp_path / "l.txt", rows))
    assert ll.names == list(rows)
    assert ll.labels.dtype == np.float32 and ll.labels.shape == (7, C)
    np.testing.assert_array_equal(ll.labels, np.array(list(rows.values()), np.float32))
    assert ll.class_names == CLASS_NAMES and ll.source.endswith("l.txt")
    write_label_list(tmp_path / "out" / "w.txt", ll)
    again = read_label_list(tmp_path / "out" / "w.txt")
    assert again.names == ll.names
    np.testing.assert_array_equal(again.labels, ll.labels)
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "w.txt"]  # no temp file left


def test_blank_and_comment_lines_ignored_and_float_values(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("# comment\n\na.png " + " ".join(["1.0"] + ["0.0"] * (C - 1)) + "\n\n")
    ll = read_label_list(p)
    assert ll.names == ["a.png"] and ll.labels[0, 0] == 1 and ll.labels.sum() == 1


def test_wrong_number_of_values_names_file_and_line(tmp_path):
    rows = _rows(20)
    text = _write_list(tmp_path / "labels.txt", rows).read_text().splitlines()
    text[16] = text[16].rsplit(" ", 1)[0]  # line 17 loses a value
    (tmp_path / "labels.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(LabelListError, match=r"labels.txt line 17: expected 14 values after the image name, got 13"):
        read_label_list(tmp_path / "labels.txt")


@pytest.mark.parametrize("bad", ["2", "-1", "x", "0.5"])
def test_non_binary_value(tmp_path, bad):
    p = tmp_path / "l.txt"
    p.write_text("a.png " + " ".join(["0"] * (C - 1) + [bad]) + "\n")
    with pytest.raises(LabelListError, match=rf"l.txt line 1: label values must be 0 or 1, got '{bad}'"):
        read_label_list(p)


def test_duplicate_image(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("a.png " + "0 " * C + "\nb.png " + "0 " * C + "\na.png " + "1 " * C + "\n")
    with pytest.raises(LabelListError, match=r"line 3: image a.png is listed twice \(first on line 1\)"):
        read_label_list(p)


def test_empty_and_missing_file(tmp_path):
    (tmp_path / "e.txt").write_text("\n# nothing\n")
    with pytest.raises(LabelListError, match="no labelled images"):
        read_label_list(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_label_list(tmp_path / "nope.txt")


def test_header_reorders_columns_and_accepts_nih_spelling(tmp_path):
    order = list(CLASS_NAMES[::-1])
    header_names = ["Infiltrate" if n == "Infiltration" else n for n in order]
    values = list(range(C))  # not 0/1: build a one-hot per row instead
    p = tmp_path / "h.txt"
    lines = ["Image_Index " + " ".join(header_names)]
    for i in values:
        row = ["0"] * C
        row[i] = "1"  # file column i is class order[i]
        lines.append(f"img{i}.png " + " ".join(row))
    p.write_text("\n".join(lines) + "\n")
    ll = read_label_list(p)
    for i in values:
        assert ll.labels[i, CLASS_NAMES.index(order[i])] == 1 and ll.labels[i].sum() == 1


def test_header_unknown_class_is_named(tmp_path):
    p = tmp_path / "h.txt"
    p.write_text("Image " + " ".join(CLASS_NAMES[:-1]) + " Covid\n" + "a.png " + "0 " * C + "\n")
    with pytest.raises(LabelListError, match=r"h.txt line 1: unknown class 'Covid'"):
        read_label_list(p)


def test_header_missing_class(tmp_path):
    p = tmp_path / "h.txt"
    p.write_text("Image " + " ".join(CLASS_NAMES[:-1]) + " Mass\n")
    with pytest.raises(LabelListError, match=r"repeated: Mass; missing: Hernia"):
        read_label_list(p)


def test_label_list_shape_checked():
    with pytest.raises(ValueError, match=r"shape \[2, 3\], expected \[2, 14\]"):
        LabelList(["a", "b"], np.zeros((2, 3)))


def test_real_chexnet_lists(meta_dir, sample_dir):
    test = read_label_list(meta_dir / "chexnet_test_list.txt")
    assert len(test) == 22433 and test.labels.shape == (22433, C)  # README says 22,432: the last line has no newline
    sample = read_label_list(sample_dir / "labels" / "sample_list.txt")
    assert len(sample) == 200 and set(sample.names) <= set(test.names)
    np.testing.assert_array_equal(sample.labels, test.subset(sample.names).labels)
    assert (sample.labels.sum(0) >= 5).all()


# ------------------------------------------------------------------ folders and dataset


def test_index_images_flat_and_nested(tmp_path):
    _make_images(tmp_path / "flat", ["a.png", "b.png"])
    assert sorted(index_images(tmp_path / "flat")) == ["a.png", "b.png"]
    _make_images(tmp_path / "nih" / "images_001" / "images", ["a.png"])
    _make_images(tmp_path / "nih" / "images_002" / "images", ["b.png", "c.png"])
    (tmp_path / "nih" / "images_002" / "images" / "notes.txt").write_text("x")
    (tmp_path / "nih" / "images_002" / "images" / "._a.png").write_text("mac junk")
    index = index_images(tmp_path / "nih")
    assert sorted(index) == ["a.png", "b.png", "c.png"]
    assert index["c.png"] == tmp_path / "nih" / "images_002" / "images" / "c.png"


def test_index_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        index_images(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        index_images(tmp_path / "empty")
    _make_images(tmp_path / "dup" / "images_001" / "images", ["a.png"])
    _make_images(tmp_path / "dup" / "images_002" / "images", ["a.png"])
    with pytest.raises(ValueError, match="two images share the name a.png"):
        index_images(tmp_path / "dup")


def test_dataset_items(tmp_path):
    rows = _rows(3)
    _make_images(tmp_path / "images" / "images_001" / "images", list(rows))
    ll = read_label_list(_write_list(tmp_path / "l.txt", rows))
    ds = ChestXray14Dataset(tmp_path / "images", ll, EvalTransform("ten", resize=32, crop=24))
    assert len(ds) == 3 and ds.names == list(rows) and ds.skipped == []
    image, labels = ds[1]
    assert image.shape == (10, 3, 24, 24) and image.dtype == np.float32
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, rows[ds.names[1]])
    raw, _ = ChestXray14Dataset(tmp_path / "images", tmp_path / "l.txt")[0]
    assert raw.shape == (36, 40) and raw.dtype == np.uint8
    ds.verify_images()


def test_dataset_missing_images(tmp_path):
    rows = _rows(9)
    present = list(rows)[:2]
    _make_images(tmp_path / "images", present)
    ll = read_label_list(_write_list(tmp_path / "l.txt", rows))
    with pytest.raises(MissingImagesError, match=r"7 of 9 images .* first: 00000002_000.png.*--skip-missing"):
        ChestXray14Dataset(tmp_path / "images", ll)
    ds = ChestXray14Dataset(tmp_path / "images", ll, skip_missing=True)
    assert ds.names == present and len(ds.skipped) == 7 and ds.skipped[0] == "00000002_000.png"
    np.testing.assert_array_equal(ds.labels, ll.labels[:2])
    _make_images(tmp_path / "other", ["z.png"])
    with pytest.raises(MissingImagesError, match="none of the 9 images"):
        ChestXray14Dataset(tmp_path / "other", ll, skip_missing=True)


def test_dataset_unreadable_png_named(tmp_path):
    rows = _rows(2)
    _make_images(tmp_path / "images", list(rows)[:1])
    bad = tmp_path / "images" / list(rows)[1]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = ChestXray14Dataset(tmp_path / "images", read_label_list(_write_list(tmp_path / "l.txt", rows)))
    with pytest.raises(ImageReadError, match=list(rows)[1]):
        ds.verify_images()
    with pytest.raises(ImageReadError, match=list(rows)[1]):
        ds[1]


def test_dataset_truncated_png_named(tmp_path):
    rows = _rows(1)
    _make_images(tmp_path / "images", list(rows), size=(200, 200))
    path = tmp_path / "images" / list(rows)[0]
    path.write_bytes(path.read_bytes()[:-2000])
    ds = ChestXray14Dataset(tmp_path / "images", read_label_list(_write_list(tmp_path / "l.txt", rows)))
    with pytest.raises(ImageReadError, match=r"cannot read image .*00000000_000.png"):
        ds[0]


def test_dataset_on_real_sample(sample_dir):
    ds = ChestXray14Dataset(sample_dir / "images", sample_dir / "labels" / "sample_list.txt",
                            EvalTransform("center"))
    assert len(ds) == 200
    ds.verify_images()
    image, labels = ds[0]
    assert image.shape == (3, 224, 224) and labels.shape == (C,)


# ------------------------------------------------------------------ NIH files and the patient split

_NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def _nih_csv(tmp_path: Path, n_patients: int = 40, gz: bool = False) -> tuple[Path, list[str], dict[str, int]]:
    rng = np.random.default_rng(3)
    lines, names, patient = [], [], {}
    findings = ["No Finding", "Cardiomegaly", "Effusion|Infiltration", "Hernia|Mass|Nodule", "Pleural_Thickening"]
    for p in range(1, n_patients + 1):
        for k in range(int(rng.integers(1, 6))):
            name = f"{p:08d}_{k:03d}.png"
            lines.append(f"{name},{findings[(p + k) % len(findings)]},{k},{p},50,M,PA\n")
            names.append(name)
            patient[name] = p
    path = tmp_path / ("d.csv.gz" if gz else "d.csv")
    data = (_NIH_HEADER + "".join(lines)).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path, names, patient


@pytest.mark.parametrize("gz", [False, True])
def test_read_nih_data_entry(tmp_path, gz):
    path, names, patient = _nih_csv(tmp_path, gz=gz)
    entry = read_nih_data_entry(path)
    assert entry.names == names
    assert entry.patient_ids.tolist() == [patient[n] for n in names]
    row = entry.label_list(["00000002_000.png"]).labels[0]  # (2 + 0) % 5 = 2: Effusion|Infiltration
    assert row.sum() == 2 and row[CLASS_NAMES.index("Effusion")] == 1 and row[CLASS_NAMES.index("Infiltration")] == 1
    assert entry.label_list(["00000005_000.png"]).labels.sum() == 0  # No Finding


def test_nih_unknown_finding_and_missing_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(_NIH_HEADER + "a.png,Mass,0,1,50,M,PA\nb.png,Mass|Covid,0,2,50,M,PA\n")
    with pytest.raises(LabelListError, match=r"d.csv line 3: unknown finding 'Covid'"):
        read_nih_data_entry(p)
    p.write_text("Image Index,Labels\na.png,Mass\n")
    with pytest.raises(LabelListError, match="missing column.*Finding Labels, Patient ID"):
        read_nih_data_entry(p)


@pytest.mark.parametrize("seed", [0, 1])
def test_nih_label_lists_patient_split(tmp_path, seed):
    path, names, patient = _nih_csv(tmp_path, n_patients=60)
    test = [n for n in names if patient[n] > 50]
    train_val = [n for n in names if patient[n] <= 50]
    (tmp_path / "tv.txt").write_text("\n".join(train_val) + "\n")
    (tmp_path / "t.txt").write_text("\n".join(test) + "\n")
    lists = nih_label_lists(path, tmp_path / "tv.txt", tmp_path / "t.txt", val_fraction=0.2, seed=seed)
    assert set(lists) == {"train", "val", "test"}
    assert lists["test"].names == test
    assert sorted(lists["train"].names + lists["val"].names) == sorted(train_val)
    groups = {k: {patient[n] for n in v.names} for k, v in lists.items()}
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert not groups["train"] & groups["test"]
    assert abs(len(lists["val"]) - 0.2 * len(train_val)) <= 5  # at most one patient (<= 5 images) over
    again = nih_label_lists(path, train_val, test, val_fraction=0.2, seed=seed)
    assert again["val"].names == lists["val"].names  # seeded: reproducible
    other = nih_label_lists(path, train_val, test, val_fraction=0.2, seed=seed + 10)
    assert other["val"].names != lists["val"].names
    entry = read_nih_data_entry(path)
    np.testing.assert_array_equal(lists["val"].labels, entry.label_list(lists["val"].names).labels)


def test_nih_label_lists_errors(tmp_path):
    path, names, patient = _nih_csv(tmp_path)
    with pytest.raises(LabelListError, match="1 images in train_val are not in"):
        nih_label_lists(path, names[:3] + ["zzz.png"], names[5:6])
    with pytest.raises(LabelListError, match="patients have images in both"):
        nih_label_lists(path, [names[0]], [n for n in names[1:] if patient[n] == patient[names[0]]])


def test_split_by_patient_fraction_zero_and_invalid():
    train, val = split_by_patient(["a", "b"], [1, 2], 0.0)
    assert train == ["a", "b"] and val == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(["a"], [1], 1.0)


def test_real_nih_split(meta_dir):
    lists = nih_label_lists(meta_dir / "Data_Entry_2017_v2020.csv.gz", meta_dir / "train_val_list.txt",
                            meta_dir / "test_list.txt", val_fraction=0.125, seed=0)
    sizes = {k: len(v) for k, v in lists.items()}
    assert sizes["test"] == 25596 and sizes["train"] + sizes["val"] == 86524
    assert abs(sizes["val"] - 0.125 * 86524) < 50
    pid = {k: {int(n[:8]) for n in v.names} for k, v in lists.items()}
    assert not pid["train"] & pid["val"] and not pid["train"] & pid["test"] and not pid["val"] & pid["test"]

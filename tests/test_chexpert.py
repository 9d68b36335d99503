"""CheXpert CSVs: parsing under each uncertainty policy (against counts made by hand), errors, views, split, images."""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from paddle_chexnet.data.chexpert import (
    CheXpertCSVError,
    CheXpertDataset,
    chexpert_csv,
    chexpert_image_paths,
    find_chexpert_root,
    is_chexpert_csv,
    parse_uncertainty,
    read_chexpert_csv,
    read_chexpert_labels,
    split_by_patient_chexpert,
)
from paddle_chexnet.data.datasets import MissingImagesError
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.synthetic_chexpert import make_chexpert_dataset
from paddle_chexnet.data.transforms import EvalTransform

STANFORD_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
OBSERVATIONS = STANFORD_HEADER.split(",")[5:]
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
# The 'paper' preset, written out (see the chexpert module's docstring for its sources).
PAPER = {"Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros", "Consolidation": "zeros",
         "Pleural Effusion": "zeros"}
POLICIES = {
    "ignore": lambda name: "ignore",
    "zeros": lambda name: "zeros",
    "ones": lambda name: "ones",
    "paper": lambda name: PAPER.get(name, "ignore"),
    "zeros,Edema=ones,pleural_effusion=U-Ignore": lambda name: {"Edema": "ones",
                                                                "Pleural Effusion": "ignore"}.get(name, "zeros"),
}


@pytest.fixture(scope="module")
def real_valid_csv() -> Path:
    path = SHARED_DATA / "chexpert-meta" / "valid.csv"
    if not path.is_file():
        pytest.skip(f"CheXpert's valid.csv not found at {path}")
    return path


@pytest.fixture(scope="module")
def uncertain_valid_csv(real_valid_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stanford's valid.csv with some cells made -1.0 (uncertain) or empty (it has none of either)."""
    with open(real_valid_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    for i, row in enumerate(rows[1:]):
        for j in range(5, len(row)):
            k = (i + 2 * j) % 7
            row[j] = "-1.0" if k == 0 else ("" if k == 1 else row[j])
    path = tmp_path_factory.mktemp("chexpert") / "valid_uncertain.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def hand_rows(path: Path, views: str) -> list[tuple[int, dict[str, str]]]:
    """(file line, row) of the CSV by the csv module, the header being line 1 (no blank lines here)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(enumerate(csv.DictReader(handle), start=2))
    return [(line, row) for line, row in rows if views == "all" or row["Frontal/Lateral"] == "Frontal"]


def hand_label(value: str, policy: str) -> float:
    if value == "-1.0":
        return {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return 1.0 if value == "1.0" else 0.0  # 0.0 and empty (not mentioned)


def test_the_real_valid_csv_is_what_the_reader_expects(real_valid_csv: Path) -> None:
    with open(real_valid_csv, newline="") as handle:
        assert handle.readline().strip() == STANFORD_HEADER
    table = read_chexpert_csv(real_valid_csv)
    rows = hand_rows(real_valid_csv, "all")
    assert len(table) == len(rows) == 234
    assert table.paths == [row["Path"] for _, row in rows]
    assert table.lines == [line for line, _ in rows]
    assert not (table.values == -1).any() and not np.isnan(table.values).any()  # Stanford's valid: 1.0 / 0.0 only


@pytest.mark.parametrize("views", ["frontal", "all"])
@pytest.mark.parametrize("spec", list(POLICIES))
@pytest.mark.parametrize("which", ["real", "with uncertain and empty cells"])
def test_policy_counts_equal_hand_counts(spec: str, views: str, which: str, real_valid_csv: Path,
                                         uncertain_valid_csv: Path) -> None:
    path = real_valid_csv if which == "real" else uncertain_valid_csv
    rows = hand_rows(path, views)
    labels = read_chexpert_labels(path, "chexpert14", spec, views)
    assert labels.class_names == tuple(OBSERVATIONS)
    assert labels.names == [row["Path"] for _, row in rows]
    assert labels.lines == [line for line, _ in rows]
    for c, name in enumerate(OBSERVATIONS):
        written = Counter(row[name] for _, row in rows)
        assert set(written) <= {"1.0", "0.0", "-1.0", ""}
        policy = POLICIES[spec](name)
        positives = written["1.0"] + (written["-1.0"] if policy == "ones" else 0)
        negatives = written["0.0"] + written[""] + (written["-1.0"] if policy == "zeros" else 0)
        unknown = written["-1.0"] if policy == "ignore" else 0
        column = labels.labels[:, c]
        assert (int((column == 1).sum()), int((column == 0).sum()), int(np.isnan(column).sum())) == (
            positives, negatives, unknown), name
    if which != "real":
        assert np.isnan(labels.labels).any() == (spec != "zeros" and spec != "ones")


@pytest.mark.parametrize("task", ["chexpert5", "chexpert14", "abnormal"])
def test_every_label_equals_the_hand_mapping(task: str, uncertain_valid_csv: Path) -> None:
    rows = hand_rows(uncertain_valid_csv, "frontal")
    labels = read_chexpert_labels(uncertain_valid_csv, task, "paper")
    columns = {"chexpert5": FIVE, "chexpert14": OBSERVATIONS, "abnormal": ["No Finding"]}[task]
    expected = np.array([[hand_label(row[name], PAPER.get(name, "ignore")) for name in columns] for _, row in rows])
    if task == "abnormal":
        expected = 1.0 - expected
    np.testing.assert_array_equal(labels.labels, expected.astype(np.float32))
    assert labels.labels.dtype == np.float32


def test_views(real_valid_csv: Path) -> None:
    frontal = read_chexpert_csv(real_valid_csv, views="frontal")
    every = read_chexpert_csv(real_valid_csv, views="all")
    assert len(frontal) == len(hand_rows(real_valid_csv, "frontal")) == 202
    assert len(every) == 234
    assert set(frontal.frame["Frontal/Lateral"]) == {"Frontal"}
    assert set(every.frame["Frontal/Lateral"]) == {"Frontal", "Lateral"}
    with pytest.raises(ValueError, match="views must be one of frontal, all"):
        read_chexpert_csv(real_valid_csv, views="lateral")


# --------------------------------------------------------------------------- #
# Uncertainty specs.
# --------------------------------------------------------------------------- #
def test_uncertainty_specs_parse_and_round_trip() -> None:
    paper = parse_uncertainty("paper")
    assert paper.default == "ignore"
    assert dict(paper.per_class) == PAPER
    assert parse_uncertainty(str(paper)) == paper
    custom = parse_uncertainty("Cardiomegaly=U-Ones, edema=zeros ,Pleural_Effusion=ignore")
    assert custom.default is None
    assert dict(custom.per_class) == {"Cardiomegaly": "ones", "Edema": "zeros", "Pleural Effusion": "ignore"}
    assert parse_uncertainty("paper,Edema=zeros").policy_for("Edema") == "zeros"
    assert parse_uncertainty("paper,Edema=zeros").policy_for("Atelectasis") == "ones"
    assert parse_uncertainty("ones").policy_for("Fracture") == "ones"


@pytest.mark.parametrize(("spec", "message"), [
    ("maybe", "unknown uncertainty policy 'maybe'; expected one of ignore, zeros, ones"),
    ("Effusion=ones", "unknown class 'Effusion'; the classes are No Finding, .*Pleural Effusion"),
    ("Edema=ones,edema=zeros", "Edema is given twice"),
    ("zeros,ones", "more than one default"),
    ("Edema=sometimes", "unknown uncertainty policy 'sometimes'"),
    ("", "empty"),
])
def test_bad_uncertainty_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_uncertainty(spec)


def test_a_spec_needs_a_policy_only_for_the_classes_the_task_reads(real_valid_csv: Path) -> None:
    five_only = ",".join(f"{name}={policy}" for name, policy in PAPER.items())
    labels = read_chexpert_labels(real_valid_csv, "chexpert5", five_only)
    assert labels.labels.shape == (202, 5)
    with pytest.raises(ValueError, match="says nothing about 'No Finding'"):
        read_chexpert_labels(real_valid_csv, "chexpert14", five_only)
    with pytest.raises(ValueError, match="task 'nih8' does not apply to data set 'chexpert'"):
        read_chexpert_labels(real_valid_csv, "nih8", "zeros")


# --------------------------------------------------------------------------- #
# Errors: the CSV, the line and the column.
# --------------------------------------------------------------------------- #
ROW = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP," + ",".join(
    ["1.0", "", "0.0", "-1.0"] + [""] * 10)


def row(patient: int, study: int = 1, view: str = "frontal", **cells: str) -> str:
    fields = ROW.split(",")
    fields[0] = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/view1_{view}.jpg"
    fields[3] = view.capitalize()
    for name, value in cells.items():
        fields[STANFORD_HEADER.split(",").index(name.replace("_", " "))] = value
    return ",".join(fields)


def write(tmp_path: Path, lines: list[str], name: str = "train.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("lines", "message"), [
    ([STANFORD_HEADER + ",Notes", row(1) + ",x"], r"line 1, column 20: unknown column 'Notes'"),
    ([STANFORD_HEADER.replace(",Edema", ""), ",".join(row(1).split(",")[:-1])], r"line 1: missing column\(s\) Edema"),
    ([STANFORD_HEADER + ",Edema", row(1) + ",0.0"], r"line 1, column 20: column 'Edema' appears twice"),
    ([STANFORD_HEADER, row(1), row(2, Edema="2.0")], r"line 3, column 'Edema': '2.0' is not a CheXpert label"),
    ([STANFORD_HEADER, row(1, Pneumonia="yes")], r"line 2, column 'Pneumonia': 'yes' is not a CheXpert label"),
    ([STANFORD_HEADER, row(1), row(2, Fracture="nan")], r"line 3, column 'Fracture': 'nan' is not"),
    ([STANFORD_HEADER, row(1), "", "", row(2, Support_Devices="0.5")], r"line 5, column 'Support Devices'"),
    ([STANFORD_HEADER, row(1), ",".join(row(2).split(",")[:-1])], r"line 3: 18 fields, the header \(line 1\) has 19"),
    ([STANFORD_HEADER, row(1) + ",1.0"], r"line 2: 20 fields"),
    ([STANFORD_HEADER, row(1, **{"Frontal/Lateral": "PA"})], r"line 2, column 'Frontal/Lateral': 'PA' is neither"),
    ([STANFORD_HEADER, row(1), row(2), row(1)], r"line 4, column 'Path': .*patient00001.* listed twice \(first on "
                                                r"line 2"),
    ([STANFORD_HEADER, row(1, Path="")], r"line 2, column 'Path': empty"),
    ([STANFORD_HEADER], r"a header and no rows"),
    (["", "   "], r"empty file"),
])
def test_errors_name_the_csv_line_and_column(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write(tmp_path, lines)
    with pytest.raises(CheXpertCSVError, match=f"^{path}.*{message}"):
        read_chexpert_csv(path)


def test_a_missing_csv_is_a_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CheXpert CSV not found"):
        read_chexpert_csv(tmp_path / "train.csv")


def test_columns_in_any_order_blank_lines_quotes_and_crlf_read_the_same(tmp_path: Path) -> None:
    lines = [STANFORD_HEADER, row(1), row(2, Edema="1", Atelectasis="-1"), row(3, study=2, view="lateral")]
    plain = read_chexpert_csv(write(tmp_path, lines, "plain.csv"))
    assert plain.lines == [2, 3, 4]
    with open(tmp_path / "plain.csv", newline="") as handle:
        records = list(csv.reader(handle))
    order = [0, 18, 3, 1, 2, 4] + list(range(5, 18))  # Support Devices moved, Frontal/Lateral before Sex
    variants = {"reordered.csv": ([[r[i] for i in order] for r in records], "\n", False),
                "quoted.csv": (records, "\r\n", True), "crlf.csv": (records, "\r\n", False)}
    for name, (rows, terminator, quote_all) in variants.items():
        with open(tmp_path / name, "w", newline="") as handle:
            quoting = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
            csv.writer(handle, lineterminator=terminator, quoting=quoting).writerows(rows)
        table = read_chexpert_csv(tmp_path / name)
        np.testing.assert_array_equal(table.values, plain.values)
        assert table.paths == plain.paths and table.lines == plain.lines, name
    gappy = read_chexpert_csv(write(tmp_path, [STANFORD_HEADER, "", row(1), "  ", row(2)], "gappy.csv"))
    assert gappy.lines == [3, 5]
    with open(tmp_path / "quoted_error.csv", "w", newline="") as handle:
        bad = records[:2] + [records[2][:10] + ["maybe"] + records[2][11:]]
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(bad)
    with pytest.raises(CheXpertCSVError, match="line 3, column 'Edema': 'maybe'"):
        read_chexpert_csv(tmp_path / "quoted_error.csv")


def test_is_chexpert_csv(tmp_path: Path) -> None:
    assert is_chexpert_csv(write(tmp_path, [STANFORD_HEADER, row(1)]))
    nih = tmp_path / "test_list.txt"
    nih.write_text("00000001_000.png " + " ".join(["0"] * 14) + "\n")
    assert not is_chexpert_csv(nih)
    assert not is_chexpert_csv(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- #
# The patient split.
# --------------------------------------------------------------------------- #
def test_patient_split_has_no_leakage_and_is_seeded(real_valid_csv: Path) -> None:
    labels = read_chexpert_labels(real_valid_csv, "chexpert5", "zeros", views="all")
    train, val = split_by_patient_chexpert(labels, val_fraction=0.25, seed=3)
    patient = {name: name.split("/")[2] for name in labels.names}
    assert not {patient[n] for n in train.names} & {patient[n] for n in val.names}
    assert sorted(train.names + val.names) == sorted(labels.names)
    assert len(val) >= round(0.25 * len(labels)) and len(val) < round(0.25 * len(labels)) + 5
    assert train.names == [n for n in labels.names if n in set(train.names)]  # input order kept
    row_of = {name: i for i, name in enumerate(labels.names)}
    np.testing.assert_array_equal(val.labels, labels.labels[[row_of[n] for n in val.names]])
    assert val.lines == [labels.lines[row_of[n]] for n in val.names]
    again, _ = split_by_patient_chexpert(labels, val_fraction=0.25, seed=3)
    other, _ = split_by_patient_chexpert(labels, val_fraction=0.25, seed=4)
    assert again.names == train.names and other.names != train.names


def test_patient_split_needs_patient_folders(tmp_path: Path) -> None:
    lines = [STANFORD_HEADER, row(1), row(2, Path="images/x.jpg")]
    labels = read_chexpert_labels(write(tmp_path, lines), "chexpert5", "zeros")
    with pytest.raises(CheXpertCSVError, match=r"train.csv line 3, column 'Path': images/x.jpg has no patientNNNNN"):
        split_by_patient_chexpert(labels)


# --------------------------------------------------------------------------- #
# The folder and the images.
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return make_chexpert_dataset(tmp_path_factory.mktemp("cx") / "root", train_patients=8, valid_patients=3,
                                 image_size=40, seed=1, workers=1)


def test_find_root_from_root_or_the_chexpert_folder(synthetic, tmp_path: Path) -> None:
    root, folder = synthetic.root, synthetic.root / "CheXpert-v1.0-small"
    assert find_chexpert_root(root) == (root, folder)
    assert find_chexpert_root(folder) == (root, folder)
    assert chexpert_csv(root, "valid") == folder / "valid.csv"
    with pytest.raises(FileNotFoundError, match=r"no CheXpert folder in .*CheXpert-v1.0-small/ or CheXpert-v1.0/"):
        find_chexpert_root(tmp_path)
    (tmp_path / "CheXpert-v1.0-small").mkdir()
    (tmp_path / "CheXpert-v1.0").mkdir()
    with pytest.raises(FileNotFoundError, match="holds both .*to choose"):
        find_chexpert_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="train.csv not found"):
        chexpert_csv(tmp_path / "CheXpert-v1.0", "train")


@pytest.mark.parametrize("views", ["frontal", "all"])
def test_the_dataset_reads_each_row_s_image_with_the_nih_transforms(synthetic, views: str) -> None:
    labels = read_chexpert_labels(synthetic.train_csv, "chexpert5", "ignore", views)
    dataset = CheXpertDataset(synthetic.root, labels, EvalTransform("center", resize=40, crop=32))
    assert len(dataset) == len(labels) and dataset.names == labels.names
    assert dataset.class_names == labels.class_names
    assert dataset.paths == [synthetic.root / name for name in labels.names]
    assert chexpert_image_paths(synthetic.root, labels) == dataset.paths
    table = read_chexpert_csv(synthetic.train_csv, views)
    assert chexpert_image_paths(synthetic.root, table) == dataset.paths
    assert dataset.name_column == "Path"
    assert ("Lateral" in {r.view for r in synthetic.split_records("train")})
    assert any("lateral" in name for name in dataset.names) == (views == "all")
    for i in (0, len(dataset) - 1):
        image, target = dataset[i]
        assert image.shape == (3, 32, 32) and image.dtype == np.float32
        np.testing.assert_array_equal(target, labels.labels[i])
        expected = EvalTransform("center", resize=40, crop=32)(read_xray(synthetic.root / labels.names[i]))
        np.testing.assert_array_equal(image, expected)


def test_missing_images_name_the_csv_line_and_skip_missing_lists_them(synthetic, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic.root, root)
    labels = read_chexpert_labels(root / "CheXpert-v1.0-small" / "train.csv", "chexpert5", "zeros")
    gone = labels.names[2]
    (root / gone).unlink()
    with pytest.raises(MissingImagesError, match=rf"train.csv line {labels.lines[2]}, column 'Path': image not "
                                                 rf"found: .*{gone} \(1 of {len(labels)} .*--skip-missing"):
        CheXpertDataset(root, labels)
    dataset = CheXpertDataset(root, labels, skip_missing=True)
    assert dataset.skipped == [gone]
    assert len(dataset) == len(labels) - 1 and gone not in dataset.names
    with pytest.raises(FileNotFoundError, match="CheXpert root not found"):
        CheXpertDataset(tmp_path / "nowhere", labels)

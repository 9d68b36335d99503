"""The synthetic CheXpert-layout set: Stanford's files and columns, its labels, determinism, learnability."""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_chexnet.data.chexpert import CheXpertDataset, find_chexpert_root, read_chexpert_labels
from paddle_chexnet.data.synthetic import render_image
from paddle_chexnet.data.synthetic_chexpert import PATTERN_OF, make_chexpert_dataset, render_record

STANFORD_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
OBSERVATIONS = STANFORD_HEADER.split(",")[5:]
SIZE = 48


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return make_chexpert_dataset(tmp_path_factory.mktemp("cx") / "root", train_patients=30, valid_patients=10,
                                 image_size=SIZE, seed=0)


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_stanford_layout_and_columns(synthetic) -> None:
    assert find_chexpert_root(synthetic.root) == (synthetic.root, synthetic.root / "CheXpert-v1.0-small")
    for csv_path, split in ((synthetic.train_csv, "train"), (synthetic.valid_csv, "valid")):
        assert csv_path.read_text().splitlines()[0] == STANFORD_HEADER
        rows = rows_of(csv_path)
        assert [r["Path"] for r in rows] == [r.path for r in synthetic.split_records(split)]
        for r in rows:
            parts = r["Path"].split("/")
            assert parts[:2] == ["CheXpert-v1.0-small", split] and parts[2].startswith("patient")
            assert parts[3].startswith("study") and parts[4] in ("view1_frontal.jpg", "view2_lateral.jpg")
            assert r["Frontal/Lateral"] == ("Frontal" if "frontal" in parts[4] else "Lateral")
            assert r["AP/PA"] in (("AP", "PA") if r["Frontal/Lateral"] == "Frontal" else ("",))
            assert r["Sex"] in ("Male", "Female") and r["Age"].isdigit()
            with Image.open(synthetic.root / r["Path"]) as image:
                assert image.format == "JPEG" and image.mode == "L"
                lateral = r["Frontal/Lateral"] == "Lateral"
                assert image.size == ((SIZE + 2 * (SIZE // 10), SIZE) if lateral else (SIZE, SIZE))
    patients = Counter(r.patient for r in synthetic.records if r.view == "Frontal")
    assert max(patients.values()) > 1  # several studies per patient
    assert min(r.patient for r in synthetic.split_records("valid")) == 64541


def test_labels_are_per_study_with_uncertain_and_empty_cells_in_train_only(synthetic) -> None:
    train, valid = rows_of(synthetic.train_csv), rows_of(synthetic.valid_csv)
    train_values = Counter(r[name] for r in train for name in OBSERVATIONS)
    assert train_values["-1.0"] > 0 and train_values[""] > 0 and train_values["0.0"] > 0
    assert set(Counter(r[name] for r in valid for name in OBSERVATIONS)) == {"1.0", "0.0"}
    assert any(r["Frontal/Lateral"] == "Lateral" for r in train)
    by_study: dict[str, set] = {}
    for r in train + valid:
        by_study.setdefault(r["Path"].rsplit("/", 1)[0], set()).add(tuple(r[n] for n in OBSERVATIONS))
    assert all(len(values) == 1 for values in by_study.values())
    for record in synthetic.records:
        values = dict(zip(OBSERVATIONS, record.values))
        findings = [name for name in OBSERVATIONS[1:] if values[name] in ("1.0", "-1.0")]
        assert (values["No Finding"] == "1.0") == (not findings)


def test_ignore_labels_of_the_findings_are_exactly_what_is_drawn(synthetic) -> None:
    truth = synthetic.truth("train")
    ignore = read_chexpert_labels(synthetic.train_csv, "chexpert14", "ignore", views="all").labels
    known = ~np.isnan(ignore)
    findings = np.arange(1, 14)  # all but "No Finding"
    np.testing.assert_array_equal(ignore[:, findings][known[:, findings]], truth[:, findings][known[:, findings]])
    uncertain = np.array([[v == "-1.0" for v in r.values] for r in synthetic.split_records("train")])
    np.testing.assert_array_equal(~known, uncertain)
    # "No Finding" follows CheXpert's rule: 0 (empty) when a finding is uncertain, even one not drawn
    only_uncertain = uncertain.any(axis=1) & ~(ignore[:, findings] == 1).any(axis=1)
    assert (ignore[only_uncertain, 0] == 0).all() and (truth[only_uncertain, 0] == 1).any()
    np.testing.assert_array_equal(ignore[~only_uncertain, 0], truth[~only_uncertain, 0])
    ones = read_chexpert_labels(synthetic.train_csv, "chexpert14", "ones", views="all").labels
    zeros = read_chexpert_labels(synthetic.train_csv, "chexpert14", "zeros", views="all").labels
    # an uncertain finding is drawn on about half the studies: each binary policy is wrong on some
    assert 0 < (ones[uncertain] != truth[uncertain]).sum() < uncertain.sum()
    assert 0 < (zeros[uncertain] != truth[uncertain]).sum() < uncertain.sum()


def test_valid_uncertain_puts_uncertain_labels_in_valid(tmp_path: Path) -> None:
    ds = make_chexpert_dataset(tmp_path, train_patients=3, valid_patients=15, image_size=32, valid_uncertain=True)
    assert "-1.0" in {v for r in ds.split_records("valid") for v in r.values}
    assert "" not in {v for r in ds.split_records("valid") for v in r.values}


def test_the_images_show_what_is_drawn(synthetic) -> None:
    records = synthetic.records
    for index in (0, 1, len(records) - 1):
        record = records[index]
        with Image.open(synthetic.root / record.path) as image:
            decoded = np.asarray(image, dtype=np.float64)
        rendered = render_record(synthetic.seed, index, record, SIZE)
        assert np.abs(decoded - rendered).mean() < 2.0  # JPEG at quality 95
    # the lesions are the only difference from the same chest drawn without them
    index = next(i for i, r in enumerate(records) if r.view == "Frontal" and sum(r.drawn[1:]) >= 2)
    findings = [PATTERN_OF[n] for n, d in zip(OBSERVATIONS, records[index].drawn) if d and n != "No Finding"]
    with_lesions = render_record(synthetic.seed, index, records[index], SIZE)
    lesion_rng = np.random.default_rng([synthetic.seed, index, 1])
    without, _ = render_image(SIZE, [], np.random.default_rng([synthetic.seed, index, 0]), lesion_rng)
    expected, boxes = render_image(SIZE, findings, np.random.default_rng([synthetic.seed, index, 0]),
                                   np.random.default_rng([synthetic.seed, index, 1]))
    np.testing.assert_array_equal(with_lesions, expected)
    changed = np.abs(with_lesions.astype(int) - without.astype(int)) > 30
    assert changed.any() and len(boxes) == len(findings)
    inside = np.zeros_like(changed)
    for box in boxes:
        inside[max(box.y - 2, 0):box.y + box.h + 2, max(box.x - 2, 0):box.x + box.w + 2] = True
    assert not (changed & ~inside).any()


def test_same_seed_same_bytes_whatever_the_threads(tmp_path: Path) -> None:
    kwargs = {"train_patients": 6, "valid_patients": 2, "image_size": 32}
    one = make_chexpert_dataset(tmp_path / "a", seed=5, workers=1, **kwargs)
    four = make_chexpert_dataset(tmp_path / "b", seed=5, workers=4, **kwargs)
    other = make_chexpert_dataset(tmp_path / "c", seed=6, workers=1, **kwargs)
    assert digest(one.root) == digest(four.root)
    assert digest(one.root) != digest(other.root)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_patients": 0}, "at least one patient"),
    ({"image_size": 16}, "at least 32 pixels"),
    ({"uncertain_fraction": 1.5}, "uncertain_fraction must be in"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_chexpert_dataset(tmp_path, **kwargs)


@pytest.mark.slow
def test_a_small_network_learns_the_competition_findings(tmp_path: Path) -> None:
    import paddle

    from paddle_chexnet.data.transforms import EvalTransform
    from paddle_chexnet.engine.losses import WeightedBCEWithLogits
    from paddle_chexnet.evaluation.metrics import compute_auroc

    ds = make_chexpert_dataset(tmp_path, train_patients=150, valid_patients=40, image_size=64, seed=0)
    transform = EvalTransform("center", resize=64, crop=64)

    def arrays(csv_path: Path, views: str) -> tuple[np.ndarray, np.ndarray]:
        data = CheXpertDataset(ds.root, read_chexpert_labels(csv_path, "chexpert5", "ignore", views), transform)
        return np.stack([data[i][0][:1] for i in range(len(data))]), data.labels

    x_train, y_train = arrays(ds.train_csv, "all")
    x_valid, y_valid = arrays(ds.valid_csv, "frontal")
    paddle.seed(0)
    net = paddle.nn.Sequential(
        paddle.nn.Conv2D(1, 16, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(32, 32, 3, padding=1), paddle.nn.ReLU(), paddle.nn.AdaptiveMaxPool2D(1),
        paddle.nn.Flatten(), paddle.nn.Linear(32, 5),
    )
    optimizer = paddle.optimizer.Adam(3e-3, parameters=net.parameters())
    loss_fn = WeightedBCEWithLogits()
    rng = np.random.default_rng(0)
    for _ in range(25):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            loss = loss_fn(net(paddle.to_tensor(x_train[batch])), paddle.to_tensor(y_train[batch]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
    net.eval()
    auroc = compute_auroc(y_valid, net(paddle.to_tensor(x_valid)).numpy())
    assert np.nanmean(auroc) >= 0.8, auroc

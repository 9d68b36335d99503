"""tools/compare_models.py on generated predictions: the CSV's numbers against independent computations."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.cli.compare_models import COLUMNS, entry
from paddle_chexnet.data.label_lists import LabelList, write_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.bootstrap import Resampler, paired_bootstrap_auroc
from paddle_chexnet.evaluation.delong import delong_test

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def two_models(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"{p:08d}_{f:03d}.png" for p in range(1, 121) for f in range(int(rng.integers(1, 4)))]
    labels = (rng.random((len(names), len(CLASS_NAMES))) < 0.2).astype(np.float32)
    labels[:2] = [[1] * 14, [0] * 14]
    a = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.6 * labels - 1)))
    b = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 0.8 * labels - 1)))
    write_label_list(tmp_path / "list.txt", LabelList(names, labels))
    with open(tmp_path / "a.csv", "w", newline="") as handle:  # this project's form
        writer = csv.writer(handle)
        writer.writerow(["Image Index", *CLASS_NAMES])
        writer.writerows([n, *(f"{v:.17g}" for v in row)] for n, row in zip(names, a))
    order = rng.permutation(len(names))
    with open(tmp_path / "b.csv", "w", newline="") as handle:  # reproduce-chexnet's, other row order
        writer = csv.writer(handle)
        writer.writerow(["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)])
        writer.writerows([names[i], *(f"{v:.17g}" for v in b[i])] for i in order)
    return tmp_path, names, labels.astype(np.float64), a, b


def read_rows(path):
    with open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, {row[0]: dict(zip(header, row)) for row in reader}


def test_comparison_csv_numbers(two_models, capsys):
    folder, names, labels, a, b = two_models
    out = folder / "out"
    code = entry([str(folder / "a.csv"), str(folder / "b.csv"), "--label-list", str(folder / "list.txt"),
                  "--output-dir", str(out), "--bootstrap", "200", "--seed", "3"])
    assert code == 0
    header, rows = read_rows(out / "comparison.csv")
    assert tuple(header) == COLUMNS
    assert list(rows) == [*CLASS_NAMES, "Mean"]
    paired = paired_bootstrap_auroc(labels, a, b, Resampler.from_names(names, "patient", 200, seed=3),
                                    warn=False)
    for c, name in enumerate(CLASS_NAMES):
        row = rows[name]
        assert float(row["auc_a"]) == pytest.approx(roc_auc_score(labels[:, c], a[:, c]), abs=1e-6)
        assert float(row["auc_b"]) == pytest.approx(roc_auc_score(labels[:, c], b[:, c]), abs=1e-6)
        assert float(row["diff"]) == pytest.approx(float(row["auc_a"]) - float(row["auc_b"]), abs=2e-6)
        assert float(row["ci_low"]) == pytest.approx(paired.diff.ci_low[c], abs=1e-6)
        assert float(row["ci_high"]) == pytest.approx(paired.diff.ci_high[c], abs=1e-6)
        assert float(row["p_delong"]) == pytest.approx(delong_test(labels[:, c], a[:, c], b[:, c]).p_value,
                                                       rel=1e-5)
    mean = rows["Mean"]
    assert float(mean["auc_a"]) == pytest.approx(np.mean([roc_auc_score(labels[:, c], a[:, c])
                                                          for c in range(14)]), abs=1e-6)
    assert float(mean["ci_low"]) < float(mean["diff"]) < float(mean["ci_high"])
    assert mean["p_delong"] == ""
    printed = capsys.readouterr().out
    assert "Pleural_Thickening" in printed and "p (DeLong)" in printed and "95% CI of diff" in printed
    data = json.loads((out / "comparison.json").read_text())
    assert data["settings"]["bootstrap_unit"] == "patient" and len(data["rows"]) == 15


def test_no_bootstrap_leaves_the_intervals_empty(two_models):
    folder, *_ = two_models
    out = folder / "out0"
    assert entry([str(folder / "a.csv"), str(folder / "b.csv"), "--label-list", str(folder / "list.txt"),
                  "--output-dir", str(out), "--bootstrap", "0", "--bootstrap-unit", "image"]) == 0
    _, rows = read_rows(out / "comparison.csv")
    assert rows["Atelectasis"]["ci_low"] == "" and rows["Mean"]["ci_high"] == ""
    assert rows["Atelectasis"]["p_delong"] != ""


def test_user_errors_exit_1(two_models, caplog):
    folder, names, *_ = two_models
    args = [str(folder / "a.csv"), str(folder / "b.csv"), "--label-list", str(folder / "list.txt"),
            "--output-dir", str(folder / "o"), "--bootstrap", "10"]
    lines = (folder / "b.csv").read_text().splitlines()
    (folder / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    missing = lines[-1].split(",")[0]
    assert entry([args[0], str(folder / "short.csv")] + args[2:]) == 1
    assert f"1 only in {folder / 'a.csv'} (first: {missing})" in caplog.text
    caplog.clear()
    assert entry(args + ["--ci-level", "95"]) == 1
    assert "confidence level" in caplog.text
    caplog.clear()
    assert entry(args + ["--bootstrap", "-1"]) == 1
    assert entry(args) == 0
    assert entry(args) == 1
    assert "--overwrite" in caplog.text
    assert entry(args + ["--overwrite"]) == 0
    caplog.clear()
    assert entry([args[0], str(folder / "missing.csv"), *args[2:5], str(folder / "o2")]) == 1
    assert "predictions file not found" in caplog.text


def test_command_line_script(two_models):
    folder, *_ = two_models
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(REPO / "tools" / "compare_models.py"), str(folder / "a.csv"),
                          str(folder / "b.csv"), "--label-list", str(folder / "list.txt"), "--output-dir",
                          str(folder / "cli"), "--bootstrap", "50"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Mean" in run.stdout and (folder / "cli" / "comparison.csv").is_file()

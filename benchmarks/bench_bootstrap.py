"""Bootstrap speed: 1,000 resamples of an NIH-sized test split (22,433 images x 14 classes) on this machine.

A synthetic set shaped like CheXNet's test split: 22,433 images of about 6,300 (the real split: 6,187)
patients with NIH's spread of films per patient (most have one, a few have
over a hundred), NIH's prevalence per finding, probabilities written with 8
significant digits as ``preds.csv`` has them. It times:

* ``bootstrap_auroc`` with 1,000 resamples of patients (eval.py's default) and of images;
* ``paired_bootstrap_auroc`` (``tools/compare_models.py``), the ROC band of the report and the
  operating-point intervals, 1,000 resamples each;
* the plain reference loop (each resample spelled out image by image, scikit-learn's
  ``roc_auc_score`` per class) on the first ``--reference-resamples`` of the same resamples,
  whose per-resample time gives the speed-up; the two must agree to 1e-12.

It prints a Markdown table (one row per timing) with the machine and date. Run from the
repository root:

    PYTHONPATH=. python benchmarks/bench_bootstrap.py [--resamples 1000] [--reference-resamples 30]
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import numpy as np
from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script)

N_IMAGES = 22433
# NIH ChestX-ray14 prevalence (%) per finding, CheXNet order
PREVALENCE = np.array([10.3, 2.5, 11.9, 17.7, 5.2, 5.6, 1.3, 4.7, 4.2, 2.1, 2.2, 1.5, 3.0, 0.2]) / 100


def synthetic_split(seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """NIH-style names, labels [N, 14], two models' probabilities [N, 14]."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(2.1, size=N_IMAGES), 184)  # films per patient: heavy-tailed, median 1
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), N_IMAGES)) + 1]
    sizes[-1] -= int(sizes.sum()) - N_IMAGES
    names = [f"{p + 1:08d}_{f:03d}.png" for p, size in enumerate(sizes) for f in range(size)]
    patient = np.repeat(np.arange(len(sizes)), sizes)
    frailty = rng.normal(size=len(sizes))[patient]  # films of a patient share findings
    threshold = np.quantile(rng.normal(size=200000), 1 - PREVALENCE)
    labels = ((frailty[:, None] * 0.7 + rng.normal(size=(N_IMAGES, 14)) * 0.7) > threshold).astype(np.float64)
    logit_a = rng.normal(size=labels.shape) + 1.8 * labels - 2
    logit_b = 0.7 * logit_a + 0.7 * rng.normal(size=labels.shape)
    probs = [np.array([float(f"{v:.8g}") for v in (1 / (1 + np.exp(-z))).ravel()]).reshape(z.shape)
             for z in (logit_a, logit_b)]
    return names, labels, probs[0], probs[1]


def members_of(resampler) -> list[np.ndarray]:
    """The images of each unit (outside the timed loop)."""
    order = np.argsort(resampler.groups, kind="stable")
    return np.split(order, np.cumsum(np.bincount(resampler.groups, minlength=resampler.n_groups))[:-1])


def reference_loop(labels, scores, resampler, members, limit: int) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    out = []
    for block in resampler.picks():
        for picks in block:
            if len(out) == limit:
                return np.array(out)
            rows = np.concatenate([members[g] for g in picks])
            row = []
            for c in range(labels.shape[1]):
                y = labels[rows, c]
                row.append(roc_auc_score(y, scores[rows, c]) if 0 < y.sum() < len(y) else np.nan)
            out.append(row)
    return np.array(out)


def timed(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--reference-resamples", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs for the fast timings")
    args = parser.parse_args()

    from paddle_chexnet.evaluation.bootstrap import (
        Resampler,
        bootstrap_auroc,
        bootstrap_roc_band,
        paired_bootstrap_auroc,
    )
    from paddle_chexnet.evaluation.operating_points import choose_thresholds, operating_points

    names, labels, probs_a, probs_b = synthetic_split()
    by_patient = Resampler.from_names(names, "patient", args.resamples, seed=0)
    by_image = Resampler.from_names(names, "image", args.resamples, seed=0)
    sizes = np.bincount(by_patient.groups)
    thresholds = choose_thresholds(labels, probs_a, "youden").thresholds

    rows = []
    t_patient, result = timed(lambda: bootstrap_auroc(labels, probs_a, by_patient, unit="patient"), args.repeats)
    members = members_of(by_patient)
    reference_loop(labels, probs_a, by_patient, members, 1)  # warm-up: imports, first calls
    start = time.perf_counter()
    reference = reference_loop(labels, probs_a, by_patient, members, args.reference_resamples)
    t_reference = (time.perf_counter() - start) / len(reference)
    agreement = float(np.nanmax(np.abs(result.replicates[: len(reference)] - reference)))
    per_resample = t_patient / args.resamples
    rows.append(("AUROC CI, resampling patients (`eval.py --bootstrap`)", t_patient,
                 f"{t_reference * args.resamples:.1f} s (from {len(reference)} resamples)",
                 f"{t_reference / per_resample:.0f}x", f"{agreement:.1e}"))
    t_image, _ = timed(lambda: bootstrap_auroc(labels, probs_a, by_image, unit="image"), args.repeats)
    rows.append(("AUROC CI, resampling images", t_image, "", "", ""))
    t_paired, _ = timed(lambda: paired_bootstrap_auroc(labels, probs_a, probs_b, by_patient, warn=False),
                        args.repeats)
    rows.append(("paired A vs B (`tools/compare_models.py`)", t_paired, "", "", ""))
    t_band, _ = timed(lambda: bootstrap_roc_band(labels, probs_a, by_patient), args.repeats)
    rows.append(("ROC band, 101 points (report)", t_band, "", "", ""))
    t_ops, _ = timed(lambda: operating_points(labels, probs_a, thresholds, by_patient), args.repeats)
    rows.append(("operating points, 5 rates (`--thresholds`)", t_ops, "", "", ""))

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{now}; {cpu_model()}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"{len(names)} images x {labels.shape[1]} classes, {len(sizes)} patients "
          f"(films per patient: median {int(np.median(sizes))}, max {sizes.max()}); {args.resamples} resamples, "
          f"best of {args.repeats}\n")
    print("| timing | fast (s) | reference loop, extrapolated | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for name, seconds, ref, ratio, diff in rows:
        print(f"| {name} | {seconds:.2f} | {ref} | {ratio} | {diff} |")


if __name__ == "__main__":
    main()

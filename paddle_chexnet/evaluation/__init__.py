"""Evaluation: from predictions to the numbers a reviewer trusts.

* ``metrics``: per-class AUROC equal to scikit-learn's (``compute_auroc``, the ``AUROC`` Paddle metric).
* ``evaluate``: the ten-crop / center-crop evaluation loop (``evaluate``).
* ``reports``: the printed table, ``aucs.csv``, ``preds.csv``, ``metrics.json``, ROC plots.
* ``predictions``: reading this project's and other projects' prediction CSVs.
* ``grouping``, ``bootstrap``: patients of images; bootstrap confidence intervals, paired differences.
* ``delong``: DeLong's test for two correlated ROC curves.
* ``operating_points``: thresholds (Youden, F1, a sensitivity, a specificity) and their rates.
* ``calibration``: expected calibration error, reliability diagrams, temperature scaling.
* ``html_report``: the self-contained ``report.html``.
"""

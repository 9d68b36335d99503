"""``report.html``: one self-contained page with the per-class table, ROC and PR curves and reliability diagrams.

The page needs no network and no script: the style sheet is inline, every
figure is inline SVG drawn here from the numbers (no plotting library), and no
element refers to another file. It holds, when given:

* the per-class table: positives, negatives, AUROC with its bootstrap interval,
  average precision, expected calibration error, and the mean row;
* per class: the ROC curve with its pointwise bootstrap band and the operating
  point, the precision-recall curve with the prevalence line, and the
  reliability diagram (bins, counts and the diagonal);
* the operating points table: threshold, sensitivity, specificity, PPV, NPV
  and F1 with their intervals.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_chexnet.evaluation.bootstrap import BootstrapResult
from paddle_chexnet.evaluation.calibration import Reliability
from paddle_chexnet.evaluation.operating_points import METRICS, OperatingPoints
from paddle_chexnet.utils.io import atomic_write_text

_METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV",
                  "f1": "F1"}
_MAX_POINTS = 600  # per drawn curve; more is invisible at this size and only makes the page heavy

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
h3 { font-size: 15px; margin: 6px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; border-top: 2px solid #888; }
dl.details { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 13px; }
dl.details dt { color: #666; } dl.details dd { margin: 0; }
.findings { display: flex; flex-wrap: wrap; gap: 18px; }
.finding { border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px 10px; }
.plots { display: flex; gap: 6px; }
svg { background: #fff; }
svg text { font-size: 10px; fill: #333; }
.note { color: #555; font-size: 12px; max-width: 900px; }
"""

_W, _H = 230, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 38, 8, 20, 32


@dataclass
class ReportData:
    """What the report shows; everything but labels and scores is optional.

    Attributes:
        class_names (Sequence[str]): the classes.
        labels (numpy.ndarray): ``[N, C]`` of 0/1/NaN.
        scores (numpy.ndarray): ``[N, C]`` probabilities.
        auroc (BootstrapResult, optional): AUROC with intervals; None computes the AUROC without them.
        roc_band (tuple, optional): ``(fpr_grid [F], low [C, F], high [C, F])`` from
            :func:`~paddle_chexnet.evaluation.bootstrap.bootstrap_roc_band`.
        operating_points (OperatingPoints, optional): rates at thresholds.
        reliability (Sequence[Reliability], optional): one per class.
        title (str): the page's title.
        details (Mapping[str, str]): key/value lines under the title (source, images, settings).
    """

    class_names: Sequence[str]
    labels: np.ndarray
    scores: np.ndarray
    auroc: BootstrapResult | None = None
    roc_band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    operating_points: OperatingPoints | None = None
    reliability: Sequence[Reliability] | None = None
    title: str = "paddle-chexnet evaluation"
    details: Mapping[str, str] = field(default_factory=dict)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ci(low: float, high: float, digits: int = 3) -> str:
    if math.isnan(low) or math.isnan(high):
        return ""
    return f"{low:.{digits}f}&ndash;{high:.{digits}f}"


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= _MAX_POINTS:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, len(x) - 1, _MAX_POINTS).round().astype(int), len(x) - 1])
    return x[keep], y[keep]


class _Plot:
    """A unit-square plot as SVG: axes, grid, polylines, polygons, markers."""

    def __init__(self, title: str, xlabel: str, ylabel: str) -> None:
        self.parts: list[str] = []
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.pw, self.ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def _xy(self, x: np.ndarray, y: np.ndarray) -> str:
        px = _LEFT + np.clip(x, 0, 1) * self.pw
        py = _TOP + (1.0 - np.clip(y, 0, 1)) * self.ph
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))

    def line(self, x, y, color: str, width: float = 1.5, dash: str = "", cls: str = "") -> None:
        x, y = _thin(np.asarray(x, float), np.asarray(y, float))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        extra += f' class="{cls}"' if cls else ""
        self.parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{extra} '
                          f'points="{self._xy(x, y)}"/>')

    def band(self, x, low, high, color: str, cls: str = "band") -> None:
        x, low, high = (np.asarray(v, float) for v in (x, low, high))
        xs = np.r_[x, x[::-1]]
        ys = np.r_[high, low[::-1]]
        self.parts.append(f'<polygon class="{cls}" fill="{color}" fill-opacity="0.25" stroke="none" '
                          f'points="{self._xy(xs, ys)}"/>')

    def marker(self, x: float, y: float, color: str, label: str = "", cls: str = "marker") -> None:
        if math.isnan(x) or math.isnan(y):
            return
        px, py = _LEFT + x * self.pw, _TOP + (1 - y) * self.ph
        tip = f"<title>{html.escape(label)}</title>" if label else ""
        self.parts.append(f'<circle class="{cls}" cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}" '
                          f'stroke="#fff" stroke-width="1">{tip}</circle>')

    def bars(self, left: np.ndarray, right: np.ndarray, height: np.ndarray, color: str) -> None:
        for a, b, h in zip(left, right, height):
            if h <= 0:
                continue
            x0, x1 = _LEFT + a * self.pw, _LEFT + b * self.pw
            self.parts.append(f'<rect x="{x0 + 0.5:.1f}" y="{_TOP + (1 - h) * self.ph:.1f}" '
                              f'width="{max(x1 - x0 - 1, 0.5):.1f}" height="{h * self.ph:.1f}" fill="{color}"/>')

    def svg(self, cls: str) -> str:
        grid = []
        for t in np.linspace(0, 1, 6):
            gx, gy = _LEFT + t * self.pw, _TOP + (1 - t) * self.ph
            grid.append(f'<line x1="{gx:.1f}" y1="{_TOP}" x2="{gx:.1f}" y2="{_TOP + self.ph}" stroke="#eee"/>')
            grid.append(f'<line x1="{_LEFT}" y1="{gy:.1f}" x2="{_LEFT + self.pw}" y2="{gy:.1f}" stroke="#eee"/>')
            grid.append(f'<text x="{gx:.1f}" y="{_TOP + self.ph + 12}" text-anchor="middle">{t:.1f}</text>')
            grid.append(f'<text x="{_LEFT - 4}" y="{gy + 3:.1f}" text-anchor="end">{t:.1f}</text>')
        frame = (f'<rect x="{_LEFT}" y="{_TOP}" width="{self.pw}" height="{self.ph}" fill="none" stroke="#999"/>')
        labels = (
            f'<text x="{_LEFT + self.pw / 2:.1f}" y="{_H - 4}" text-anchor="middle">{html.escape(self.xlabel)}</text>'
            f'<text transform="translate(10,{_TOP + self.ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
            f'{html.escape(self.ylabel)}</text>'
            f'<text x="{_LEFT + self.pw / 2:.1f}" y="13" text-anchor="middle" font-weight="bold">'
            f'{html.escape(self.title)}</text>'
        )
        body = "".join(grid) + frame + "".join(self.parts) + labels
        return (f'<svg class="{cls}" width="{_W}" height="{_H}" '
                f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(self.title)}">{body}</svg>')


def _known(labels: np.ndarray, scores: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(labels[:, c])
    return labels[keep, c], scores[keep, c]


def _roc_svg(data: ReportData, c: int, auc: float) -> str:
    from sklearn.metrics import roc_curve

    y, s = _known(data.labels, data.scores, c)
    plot = _Plot(f"ROC, AUROC {_fmt(auc)}", "false positive rate", "true positive rate")
    plot.line([0, 1], [0, 1], "#bbb", 1.0, "4 3")
    if data.roc_band is not None and not np.isnan(data.roc_band[1][c]).all():
        grid, low, high = data.roc_band
        plot.band(grid, low[c], high[c], "#1f77b4")
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, s)
        plot.line(fpr, tpr, "#1f77b4", 1.6, cls="roc")
    if data.operating_points is not None:
        rates = data.operating_points.rates
        sens, spec = rates["sensitivity"].estimate[c], rates["specificity"].estimate[c]
        plot.marker(1 - spec, sens, "#d62728",
                    f"threshold {data.operating_points.thresholds[c]:.4g}: sensitivity {_fmt(sens)}, "
                    f"specificity {_fmt(spec)}")
    return plot.svg("roc-plot")


def _pr_svg(data: ReportData, c: int) -> tuple[str, float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _known(data.labels, data.scores, c)
    ap = float("nan")
    plot_parts: list = []
    if len(np.unique(y)) == 2:
        precision, recall, _ = precision_recall_curve(y, s)
        ap = float(average_precision_score(y, s))
        plot_parts = [recall, precision, float(y.mean())]
    plot = _Plot(f"Precision-recall, AP {_fmt(ap)}", "recall (sensitivity)", "precision (PPV)")
    if plot_parts:
        recall, precision, prevalence = plot_parts
        plot.line([0, 1], [prevalence, prevalence], "#bbb", 1.0, "4 3")
        plot.line(recall, precision, "#2ca02c", 1.6, cls="pr")
    if data.operating_points is not None:
        rates = data.operating_points.rates
        plot.marker(rates["sensitivity"].estimate[c], rates["ppv"].estimate[c], "#d62728",
                    f"threshold {data.operating_points.thresholds[c]:.4g}")
    return plot.svg("pr-plot"), ap


def _reliability_svg(rel: Reliability) -> str:
    plot = _Plot(f"Reliability, ECE {_fmt(rel.ece)}", "mean predicted probability", "fraction positive")
    total = rel.counts.sum()
    if total:
        plot.bars(rel.edges[:-1], rel.edges[1:], rel.counts / total, "#dde6f0")
    plot.line([0, 1], [0, 1], "#bbb", 1.0, "4 3")
    filled = rel.counts > 0
    if filled.any():
        plot.line(rel.mean_predicted[filled], rel.observed[filled], "#ff7f0e", 1.4, cls="reliability")
        for x, y, n in zip(rel.mean_predicted[filled], rel.observed[filled], rel.counts[filled]):
            plot.marker(float(x), float(y), "#ff7f0e", f"{int(n)} images", cls="bin")
    return plot.svg("reliability-plot")


def render_report(data: ReportData) -> str:
    """The page as a string (see the module docstring for what it holds)."""
    from paddle_chexnet.evaluation.metrics import compute_auroc, mean_auroc

    names = list(data.class_names)
    labels = np.asarray(data.labels, dtype=np.float64)
    scores = np.asarray(data.scores, dtype=np.float64)
    data = ReportData(names, labels, scores, data.auroc, data.roc_band, data.operating_points, data.reliability,
                      data.title, data.details)
    if data.auroc is not None:
        auc, mean = data.auroc.estimate, data.auroc.mean
        ci_low, ci_high = data.auroc.ci_low, data.auroc.ci_high
        mean_ci = (data.auroc.mean_ci_low, data.auroc.mean_ci_high)
        n_used = data.auroc.n_used
    else:
        auc = compute_auroc(labels, scores, names, warn=False)
        mean, n_used = mean_auroc(auc)
        ci_low = ci_high = np.full(len(names), np.nan)
        mean_ci = (float("nan"), float("nan"))
    panels, aps = [], []
    for c, name in enumerate(names):
        pr, ap = _pr_svg(data, c)
        aps.append(ap)
        plots = _roc_svg(data, c, auc[c]) + pr
        if data.reliability is not None:
            plots += _reliability_svg(data.reliability[c])
        panels.append(f'<section class="finding" data-label="{html.escape(name)}"><h3>{html.escape(name)}</h3>'
                      f'<div class="plots">{plots}</div></section>')
    has_ci = not np.isnan(ci_low).all()
    head = ["Finding", "Positives", "Negatives", "AUROC"] + (
        [f"{_level_text(data.auroc)} CI"] if has_ci else []) + ["AP"] + (
        ["ECE"] if data.reliability is not None else [])
    rows = []
    for c, name in enumerate(names):
        y = labels[:, c]
        cells = [html.escape(name), str(int((y == 1).sum())), str(int((y == 0).sum())), _fmt(auc[c])]
        cells += [_ci(ci_low[c], ci_high[c])] if has_ci else []
        cells += [_fmt(aps[c])]
        cells += [_fmt(data.reliability[c].ece)] if data.reliability is not None else []
        rows.append(f'<tr class="class-row" data-label="{html.escape(name)}">'
                    + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    mean_cells = [f"Mean ({n_used} of {len(names)} classes)", "", "", _fmt(mean)]
    mean_cells += [_ci(*mean_ci)] if has_ci else []
    mean_cells += [_fmt(float(np.nanmean(aps))) if not np.isnan(aps).all() else "n/a"]
    if data.reliability is not None:
        eces = np.array([r.ece for r in data.reliability])
        mean_cells += [_fmt(float(np.nanmean(eces))) if not np.isnan(eces).all() else "n/a"]
    rows.append('<tr class="mean">' + "".join(f"<td>{v}</td>" for v in mean_cells) + "</tr>")
    table = ("<table id=\"auroc-table\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    details = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in data.details.items())
    sections = [
        f"<h1>{html.escape(data.title)}</h1>",
        f'<dl class="details">{details}</dl>' if details else "",
        "<h2>AUROC per finding</h2>", table, _notes(data, has_ci),
    ]
    if data.operating_points is not None:
        sections += ["<h2>Operating points</h2>", _operating_table(data.operating_points)]
    sections += ["<h2>Curves per finding</h2>", f'<div class="findings">{"".join(panels)}</div>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>"
            + "".join(sections) + "</body></html>\n")


def _level_text(result: BootstrapResult | None) -> str:
    return f"{result.level * 100:g} %" if result is not None else ""


def _notes(data: ReportData, has_ci: bool) -> str:
    parts = []
    if has_ci and data.auroc is not None:
        a = data.auroc
        skipped = int(a.skipped.max()) if len(a.skipped) else 0
        parts.append(f"Intervals: percentile bootstrap, {a.n_resamples} resamples of {a.unit}s (seed {a.seed}); "
                     f"the mean's interval uses the {a.n_resamples - a.mean_skipped} resamples where every class "
                     f"of the mean is defined. At most {skipped} resamples were skipped for a class "
                     f"(one label value).")
    if data.roc_band is not None:
        parts.append("The shaded ROC band is the pointwise bootstrap interval of the true positive rate.")
    if data.reliability is not None:
        bins = len(data.reliability[0].counts) if data.reliability else 0
        parts.append(f"ECE: expected calibration error over {bins} equal-width probability bins; the bars of "
                     f"the reliability diagrams are the share of images per bin.")
    parts.append("AP: average precision (area under the precision-recall curve, scikit-learn's definition).")
    return '<p class="note">' + " ".join(html.escape(p) for p in parts) + "</p>"


def _operating_table(points: OperatingPoints) -> str:
    head = ["Finding", "Threshold", "TP", "FP", "FN", "TN"] + [_METRIC_TITLES[m] for m in METRICS]
    rows = []
    for c, name in enumerate(points.class_names):
        cells = [html.escape(name), f"{points.thresholds[c]:.4g}", *(str(int(v)) for v in points.counts[c])]
        for m in METRICS:
            r = points.rates[m]
            ci = _ci(r.ci_low[c], r.ci_high[c])
            cells.append(_fmt(r.estimate[c]) + (f" <small>({ci})</small>" if ci else ""))
        rows.append(f'<tr class="op-row" data-label="{html.escape(name)}">'
                    + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    note = (f'<p class="note">Thresholds from rule {html.escape(points.rule)}; a finding is positive at or above '
            f"its threshold."
            + (f" Intervals: {points.level * 100:g} % percentile bootstrap over {points.n_resamples} resamples."
               if points.n_resamples else "") + "</p>")
    return ("<table id=\"operating-table\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + note)


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render :func:`render_report` and write it to ``path`` (e.g. ``OUT/report.html``) atomically."""
    atomic_write_text(path, render_report(data))
    return Path(path)

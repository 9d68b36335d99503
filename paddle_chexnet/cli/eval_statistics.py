"""``eval.py``'s statistics: its flags, what it does once the probabilities exist, and ``--preds``.

* :func:`add_statistics_arguments`: the "statistics" argument group (``--bootstrap``,
  ``--ci-level``, ``--bootstrap-unit``, ``--seed``, ``--ece-bins``, ``--choose-thresholds``,
  ``--thresholds``, ``--calibrate``, ``--save-to-weights``, ``--no-report``, ``--preds``).
* :func:`prepare_statistics`: every check of those flags that needs no probabilities, made
  before the network runs (a typo fails in a second, not after the ten-crop pass).
* :func:`finish_evaluation`: after inference, the weights' temperatures applied, the
  statistics computed and written (:func:`~paddle_chexnet.evaluation.statistics.run_statistics`),
  thresholds and temperatures stored in the weights' sidecar on request.
* :func:`score_predictions`: the same from a ``preds.csv`` (this project's or
  jrzech/reproduce-chexnet's ``prob_<finding>`` form) without a network.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from paddle_chexnet.errors import UserError

if TYPE_CHECKING:
    from paddle_chexnet.evaluation.reports import EvalResult
    from paddle_chexnet.evaluation.statistics import Statistics, StatisticsOptions
    from paddle_chexnet.models.spec import ModelSpec

logger = logging.getLogger("paddle_chexnet.eval")


class RecordGiven(argparse.Action):
    """Store the value and note that the flag was given (``args.<dest>_given``): a default is not a choice."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


# The library's defaults, spelled out so that building the parser (``eval.py -h``) imports no
# Paddle, SciPy or scikit-learn; tests/test_eval_statistics.py checks that they stay equal.
DEFAULT_RESAMPLES = 1000  # paddle_chexnet.evaluation.bootstrap.DEFAULT_RESAMPLES
DEFAULT_LEVEL = 0.95  # paddle_chexnet.evaluation.bootstrap.DEFAULT_LEVEL
DEFAULT_BINS = 10  # paddle_chexnet.evaluation.calibration.DEFAULT_BINS
RULE_HELP = "youden, f1, sensitivity=X or specificity=X with X in (0, 1], e.g. sensitivity=0.95"


def add_statistics_arguments(parser: argparse.ArgumentParser) -> None:
    """The "statistics" group of ``eval.py`` (see docs/evaluation.md)."""
    from paddle_chexnet.evaluation.grouping import UNITS

    group = parser.add_argument_group(
        "statistics", "confidence intervals, calibration and operating points, computed once the probabilities "
        "exist (also from a predictions file with --preds, without a network)")
    group.add_argument("--preds", type=Path, default=None, metavar="FILE",
                       help="score this predictions CSV instead of running a network (eval.py's preds.csv or "
                            "reproduce-chexnet's 'prob_<finding>' form), against --label-list")
    group.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                       help="bootstrap resamples for the confidence intervals; 0 turns them off")
    group.add_argument("--ci-level", "--ci_level", type=float, default=DEFAULT_LEVEL,
                       help="coverage of the percentile intervals")
    group.add_argument("--bootstrap-unit", "--bootstrap_unit", choices=UNITS, default="patient",
                       help="resample patients (read from NIH 'PPPPPPPP_FFF.png' names or CheXpert "
                            "'patientNNNNN/' paths) or single images")
    group.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    group.add_argument("--ece-bins", "--ece_bins", type=int, default=DEFAULT_BINS,
                       help="equal-width probability bins of the expected calibration error")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--choose-thresholds", "--choose_thresholds", metavar="RULE", default=None,
                        help=f"choose a threshold per finding on these images (a validation list) by {RULE_HELP}; "
                             "writes thresholds.json")
    choice.add_argument("--thresholds", type=Path, metavar="FILE", default=None,
                        help="thresholds.json of --choose-thresholds: sensitivity, specificity, PPV, NPV and F1 "
                             "at them, with intervals, in operating_points.csv (default: the thresholds stored "
                             "in the weights, if any)")
    group.add_argument("--calibrate", action="store_true",
                       help="fit a temperature per finding on these images (a validation list); writes "
                            "calibration.json")
    group.add_argument("--save-to-weights", "--save_to_weights", action="store_true",
                       help="store the thresholds of --choose-thresholds and the temperatures of --calibrate "
                            "in the weights' JSON sidecar, for tools/predict.py, the app and later evaluations")
    group.add_argument("--no-report", "--no_report", action="store_true", help="do not write report.html")


@dataclass
class StatisticsPlan:
    """What the statistics of one run use, settled before any probability exists.

    Attributes:
        options (StatisticsOptions): what to compute.
        weights (Path | None): the weights (None: ``--preds`` without ``--weights``).
        spec (ModelSpec | None): their spec.
        class_names (tuple[str, ...]): the classes.
        temperatures (numpy.ndarray | None): the sidecar's temperatures, applied to the network's
            probabilities (never to a ``--preds`` file's).
        report (bool): write ``report.html``.
        save (bool): store thresholds / temperatures in the sidecar.
    """

    options: StatisticsOptions
    weights: Path | None
    spec: ModelSpec | None
    class_names: tuple[str, ...]
    temperatures: np.ndarray | None
    report: bool
    save: bool


def prepare_statistics(args: argparse.Namespace, from_file: bool | None = None, early: bool = False
                       ) -> StatisticsPlan:
    """Check the statistics flags and read what they name (thresholds file, the weights' sidecar).

    Args:
        args (argparse.Namespace): ``eval.py``'s arguments.
        from_file (bool, optional): scoring ``--preds`` (no network). Default: None (``args.preds`` is set).
        early (bool, optional): the check before the network runs: only the sidecar is read, never the
            weights themselves (their own checks, and the label list's, come first), and a thresholds
            file is checked against the classes only when the sidecar names them. Default: False.

    Raises:
        UserError: a bad value or combination of flags; FileNotFoundError / ValueError: a file named by
            a flag is missing or malformed (the message names it).
    """
    from paddle_chexnet.data.labels import CLASS_NAMES
    from paddle_chexnet.evaluation.operating_points import read_thresholds_file
    from paddle_chexnet.evaluation.statistics import StatisticsOptions
    from paddle_chexnet.models.spec import sidecar_path

    from_file = args.preds is not None if from_file is None else from_file
    weights = None
    if not from_file or getattr(args, "weights_given", False):
        weights = Path(args.weights)
    spec = None
    if weights is not None and early:
        from paddle_chexnet.models.spec import read_spec

        spec = read_spec(weights)
    elif weights is not None and weights.is_file():
        from paddle_chexnet.models.loading import network_spec

        spec = network_spec(weights)
    elif weights is not None and from_file:
        from paddle_chexnet.models.state_dict import require_weights_file

        require_weights_file(weights)
    class_names = tuple(spec.class_names) if spec is not None else CLASS_NAMES
    sidecar = sidecar_path(weights) if weights is not None else None
    thresholds, rule, where = None, "unknown", ""
    if args.thresholds is not None and early and spec is None:
        from paddle_chexnet.utils.io import read_json_file

        read_json_file(args.thresholds, "write one with --choose-thresholds")  # its classes are checked later
    elif args.thresholds is not None:
        thresholds, rule = read_thresholds_file(args.thresholds, class_names)
        where = f"from {args.thresholds}"
    elif args.choose_thresholds is None and spec is not None and spec.thresholds is not None:
        thresholds = spec.threshold_values(f"{sidecar}: thresholds")
        rule, where = spec.threshold_rule or "unknown", f"stored in the weights' {sidecar}"
    temperatures = None
    if spec is not None and not from_file:
        stored = spec.temperature_values(f"{sidecar}: temperatures")
        temperatures = None if stored is None else np.asarray(stored)
    try:
        options = StatisticsOptions(
            bootstrap=args.bootstrap, ci_level=args.ci_level, unit=args.bootstrap_unit, seed=args.seed,
            ece_bins=args.ece_bins, choose_rule=args.choose_thresholds, thresholds=thresholds,
            threshold_rule=rule, threshold_source=where, calibrate=args.calibrate, roc_band=not args.no_report,
        ).check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.save_to_weights:
        _check_save(args, weights, spec, from_file)
    return StatisticsPlan(options, weights, spec, class_names, temperatures, not args.no_report,
                          args.save_to_weights)


def check_resampling_units(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse, before the network runs, image names from which ``--bootstrap-unit patient`` reads no patient.

    For the dataset's construction in ``run()``: called with the names about to be evaluated,
    it turns the error that would otherwise come after inference into one that comes first.

    Raises:
        UserError: a name follows neither NIH's nor CheXpert's scheme (the message names it and
            ``--bootstrap-unit image``).
    """
    from paddle_chexnet.evaluation.grouping import PatientGroupingError, group_codes

    if args.bootstrap and args.bootstrap_unit == "patient" and args.preds is None:
        try:
            group_codes(names, "patient")
        except PatientGroupingError as exc:
            raise UserError(str(exc)) from None


def _check_save(args: argparse.Namespace, weights: Path | None, spec: ModelSpec | None, from_file: bool
                ) -> None:
    from paddle_chexnet.models.spec import sidecar_path

    if not (args.calibrate or args.choose_thresholds):
        raise UserError("--save-to-weights stores what --calibrate and --choose-thresholds find; give one or both")
    if weights is None:
        raise UserError("--save-to-weights with --preds needs --weights: the weights whose sidecar stores them")
    if spec is None:
        return  # no weights file yet: the run stops at it with its own message
    if args.calibrate and not args.choose_thresholds and spec.thresholds is not None:
        raise UserError(
            f"{sidecar_path(weights)} holds thresholds ({spec.threshold_rule or 'unnamed'} rule) chosen on the "
            "probabilities before this calibration; add --choose-thresholds RULE to choose them again on the "
            "calibrated ones"
        )
    if from_file and args.calibrate and spec.temperatures is not None:
        raise UserError(
            f"{sidecar_path(weights)} already holds temperatures, and the probabilities of --preds may have been "
            "calibrated by them: fit new ones on the network's own probabilities (eval.py without --preds)"
        )
    folder = sidecar_path(weights).parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--save-to-weights: {folder} is not writable, so {sidecar_path(weights).name} cannot be "
                        "updated")


def _details(result: EvalResult, plan: StatisticsPlan, label_list: str | Path) -> dict[str, str]:
    """The lines under the report's title."""
    options = plan.options
    details = {"label list": str(label_list), "images": str(len(result.names))}
    for key in ("predictions", "weights"):
        if key in result.details:
            details[key] = str(result.details[key])
    if result.crops:
        details["crops"] = f"{result.crops}-crop"
    details["probabilities"] = str(result.details.get("probabilities", ""))
    details["bootstrap"] = (f"{options.bootstrap} resamples of {options.unit}s, seed {options.seed}, "
                            f"{options.ci_level * 100:g} % intervals") if options.bootstrap else "off"
    return details


def _statistics(result: EvalResult, plan: StatisticsPlan, output_dir: Path, label_list: str | Path,
                raw_probs: np.ndarray | None = None, plot: bool = False, preds: bool = True,
                warn: bool = False) -> Statistics:
    from paddle_chexnet.evaluation.statistics import run_statistics

    return run_statistics(
        result, output_dir, plan.options, raw_probs, plot=plot, preds=preds, report=plan.report, warn=warn,
        source=str(label_list), title=f"paddle-chexnet evaluation: {Path(label_list).name}",
        details=_details(result, plan, label_list),
    )


def finish_evaluation(result: EvalResult, args: argparse.Namespace, output_dir: str | Path,
                      label_list: str | Path) -> Statistics:
    """After ``evaluate(...)``: calibrate by the weights' temperatures, compute and write the statistics.

    ``preds.csv`` is written first (calibrated when the weights hold temperatures), so that a
    statistic that cannot be computed (names without a patient, a class without positives for
    ``--choose-thresholds``) leaves the probabilities for ``--preds``.

    Returns:
        Statistics: also ``result.statistics``.
    """
    from paddle_chexnet.evaluation.reports import write_outputs
    from paddle_chexnet.evaluation.statistics import calibrated
    from paddle_chexnet.models.spec import sidecar_path

    plan = prepare_statistics(args, from_file=False)
    out = Path(output_dir)
    raw = None
    result.details.update(weights=str(args.weights), label_list=str(label_list))
    if plan.temperatures is not None:
        raw = result.probs
        result.probs = calibrated(raw, plan.temperatures)
        result.details["probabilities"] = f"calibrated by the temperatures in {sidecar_path(args.weights)}"
        logger.info("probabilities calibrated by the per-finding temperatures in %s", sidecar_path(args.weights))
        write_outputs(result, out, plot=False)
    else:
        result.details["probabilities"] = "as the network gives them"
    try:
        stats = _statistics(result, plan, out, label_list, raw, preds=False)
    except ValueError as exc:
        raise UserError(
            f"{exc} (the probabilities are in {out / 'preds.csv'}: score them again without the network with "
            f"`python eval.py --preds {out / 'preds.csv'} --label-list {label_list} --output-dir DIR ...`)"
        ) from None
    if plan.save:
        save_to_weights(plan, stats)
    return stats


def score_predictions(args: argparse.Namespace) -> EvalResult:
    """``eval.py --preds FILE``: every statistic of a predictions file, without a network.

    Returns:
        EvalResult: with ``statistics``; ``preds.csv`` is written to ``--output-dir`` (in this
        project's form, the label list's order) unless it is the file scored.
    """
    from paddle_chexnet.data.label_lists import LabelListError, read_label_list
    from paddle_chexnet.evaluation.predictions import PredictionsError, align_predictions, read_predictions
    from paddle_chexnet.evaluation.reports import EvalResult
    from paddle_chexnet.utils.io import ensure_output_dir

    plan = prepare_statistics(args, from_file=True)
    label_list = Path(args.label_list) if args.label_list else Path(args.data_dir) / "labels" / "test_list.txt"
    output_dir = ensure_output_dir(args.output_dir)
    try:
        labels = read_label_list(label_list, plan.class_names)
        predictions = read_predictions(args.preds, plan.class_names)
        scored = align_predictions(predictions, labels, missing="ignore" if args.skip_missing else "error")
    except (LabelListError, PredictionsError) as exc:
        if plan.weights is None:
            raise
        raise type(exc)(f"{exc} (the classes are those of --weights {plan.weights}: "
                        f"{', '.join(plan.class_names)})") from None
    if scored.not_predicted:
        logger.warning("%d images of %s have no prediction in %s and are left out (listed in skipped.txt)",
                       len(scored.not_predicted), label_list, args.preds)
    same_file = (output_dir / "preds.csv").resolve() == Path(args.preds).resolve()
    result = EvalResult(
        names=scored.names, class_names=tuple(scored.class_names), probs=scored.scores, labels=scored.labels,
        per_class={}, mean=math.nan, n_used=0,
        skipped=[f"{name}\tno prediction in {args.preds}" for name in scored.not_predicted], crops="", backend="",
        name_column="Path" if scored.names and "/" in scored.names[0] else "Image Index",
        details={"predictions": str(args.preds), "predictions_form": predictions.form,
                 "label_list": str(label_list), "probabilities": f"as in {args.preds}"},
    )
    if plan.weights is not None:
        result.details["weights"] = str(plan.weights)
    _statistics(result, plan, output_dir, label_list, plot=not args.no_plot, preds=not same_file, warn=True)
    if plan.save:
        save_to_weights(plan, result.statistics)
    print(result.table())
    print(f"{len(result.names)} images scored from {args.preds} ({predictions.form} form); results in {output_dir}")
    return result


def save_to_weights(plan: StatisticsPlan, stats: Statistics) -> None:
    """Store the chosen thresholds (with their rule) and the fitted temperatures in the weights' sidecar."""
    from paddle_chexnet.models.loading import network_spec
    from paddle_chexnet.models.spec import sidecar_path, update_sidecar_spec

    changes = {}
    if stats.calibration is not None:
        changes["temperatures"] = {n: float(t) for n, t in zip(stats.class_names, stats.calibration.temperatures)}
    if stats.chosen is not None:
        changes["thresholds"] = {n: float(t) for n, t in zip(stats.class_names, stats.chosen.thresholds)}
        changes["threshold_rule"] = str(stats.chosen.rule)
    update_sidecar_spec(plan.weights, base=plan.spec or network_spec(plan.weights), **changes)
    stored = " and ".join(k for k in ("thresholds", "temperatures") if k in changes)
    logger.info("stored the %s in %s", stored, sidecar_path(plan.weights))
    print(f"Stored the {stored} in {sidecar_path(plan.weights)}")

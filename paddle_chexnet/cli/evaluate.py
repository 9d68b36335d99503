"""``eval.py``: per-finding AUROC of a trained network with the paper's ten-crop protocol.

The network, its output names and its task come from the weights file (its JSON
sidecar): any checkpoint ``train.py`` writes or ``tools/convert_torch.py``
converts evaluates without architecture flags.

Example:
    python eval.py --weights pretrained_models/chexnet.pdparams --data-dir ChestX-ray14 \\
        --label-list ChestX-ray14/labels/test_list.txt --output-dir outputs/eval

Once the probabilities exist, the statistics of :mod:`paddle_chexnet.cli.eval_statistics`
follow: bootstrap intervals, calibration error, operating points, ``report.html``; with
``--preds FILE`` they are computed from a predictions file, without a network.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.cli.eval_statistics import (
    RecordGiven,
    add_statistics_arguments,
    check_resampling_units,
    finish_evaluation,
    prepare_statistics,
    score_predictions,
)

logger = logging.getLogger("paddle_chexnet.eval")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Per-finding AUROC of a CheXNet on ChestX-ray14 (ten-crop by default).",
        formatter_class=HelpFormatter,
    )
    add_statistics_arguments(parser)
    parser.add_argument("--weights", default="pretrained_models/chexnet.pdparams", action=RecordGiven,
                        help="a .pdparams from train.py or tools/convert_torch.py (architecture read from its .json); "
                             "with --preds optional: it then gives the classes and receives --save-to-weights")
    parser.add_argument("--dataset", choices=("nih", "chexpert"), default="nih",
                        help="nih (ChestX-ray14) or chexpert (Stanford's CSVs; valid.csv by default)")
    parser.add_argument("--data-dir", "--data_dir", default="ChestX-ray14",
                        help="dataset folder; NIH: images under DIR/images (flat or NIH's images_0NN/images/); "
                             "CheXpert: the folder holding CheXpert-v1.0-small/")
    parser.add_argument("--image-dir", "--image_dir", default=None, help="image folder (default: DATA_DIR/images)")
    parser.add_argument("--label-list", "--label_list", default=None,
                        help="label list '<image> <14 values>' or CheXpert CSV (default: "
                             "DATA_DIR/labels/test_list.txt; CheXpert: valid.csv)")
    parser.add_argument("--uncertainty", default="paper",
                        help="CheXpert's uncertain (-1) labels: ignore (left out of the AUROC), zeros, ones, per "
                             "class (Atelectasis=ones,...) or paper")
    parser.add_argument("--views", choices=("frontal", "all"), default="frontal", help="CheXpert views")
    parser.add_argument("--cache", default=None,
                        help="an image cache made by tools/build_cache.py for this --resize (same pixels)")
    parser.add_argument("--output-dir", "--output_dir", default="outputs/eval", help="where results are written")
    parser.add_argument("--crops", choices=("ten", "center"), default="ten",
                        help="ten-crop (the paper's protocol) or a single center crop (10x faster)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8,
                        help="images per batch (ten-crop runs 10x as many crops at once)")
    parser.add_argument("--num-workers", "--num_workers", type=int, default=None,
                        help="image-loading processes, 0 = in the main process (default: half the cores)")
    parser.add_argument("--processes", type=int, default=1,
                        help="Paddle Inference: copies of the model in parallel processes, each on its own images "
                        "with cores/N threads (loading included)")
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    parser.add_argument("--backend", choices=("auto", "inference", "dygraph"), default="auto",
                        help="auto: Paddle Inference + oneDNN on the CPU, dynamic graph on a GPU")
    parser.add_argument("--micro-batch", "--micro_batch", type=int, default=None,
                        help="crops per network call, 0 = the whole batch (default: 10 on a CPU, where "
                        "cache-sized calls are faster; whole batches on a GPU)")
    parser.add_argument("--num-threads", "--num_threads", type=int, default=None,
                        help="CPU math threads, Paddle Inference and dygraph alike (default: all cores)")
    parser.add_argument("--cache-dir", "--cache_dir", default=None,
                        help="cache of exported models (default: $PADDLE_CHEXNET_CACHE/exports or "
                             "~/.cache/paddle_chexnet/exports)")
    parser.add_argument("--skip-missing", "--skip_missing", action="store_true",
                        help="evaluate on the listed images that exist; list the others in OUTPUT_DIR/skipped.txt")
    parser.add_argument("--skip-unreadable", "--skip_unreadable", action="store_true",
                        help="leave out images that cannot be read (truncated or not images) instead of stopping; "
                             "they are listed with the reason in OUTPUT_DIR/skipped.txt")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 autocast on a GPU (dygraph backend): faster, probabilities within ~1e-3")
    parser.add_argument("--resize", type=int, default=256, help="shorter side after resizing")
    parser.add_argument("--crop", type=int, default=224, help="crop size")
    parser.add_argument("--no-plot", "--no_plot", action="store_true", help="do not draw the ROC curves")
    parser.add_argument("--no-progress", "--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help="debug logging (and tracebacks of errors)")
    return parser


def check_weights_fit_labels(weights: str | Path, class_names: Sequence[str], label_list: str | Path) -> None:
    """Refuse, before anything is loaded, weights whose outputs are not the label list's classes.

    Raises:
        UnusableFileError: another number of outputs (an ImageNet DenseNet has 1000) or other names.
    """
    from paddle_chexnet.errors import UnusableFileError
    from paddle_chexnet.models.loading import network_spec

    spec = network_spec(weights)
    if spec.num_classes != len(class_names):
        hint = (" (an ImageNet classifier: convert with `python tools/convert_torch.py SRC --head resize "
                f"--num-classes {len(class_names)}` for a {len(class_names)}-class file, whose new classifier "
                "then needs training with train.py)") if spec.num_classes == 1000 else ""
        raise UnusableFileError(
            f"--weights {weights} has {spec.num_classes} outputs and the label list {label_list} has "
            f"{len(class_names)} classes{hint}; evaluate weights trained for these classes"
        )
    if tuple(spec.class_names) != tuple(class_names):
        raise UnusableFileError(
            f"--weights {weights} predicts {list(spec.class_names)}, the label list {label_list} has "
            f"{list(class_names)}; evaluate weights trained for these classes"
        )


def data_source(args: argparse.Namespace):
    """The evaluated data: the data set, and the task of the weights (their sidecar), NIH's by default."""
    from paddle_chexnet.data.sources import DataSource
    from paddle_chexnet.models.spec import read_spec

    spec = read_spec(args.weights)  # the sidecar only: the weights themselves are read after the labels
    task = spec.task if spec is not None else None
    if task is None:  # weights without a recorded task: the data set's own classes
        task = "chexnet14" if args.dataset == "nih" else "chexpert14"
    return DataSource(args.dataset, args.data_dir, task, args.image_dir, args.uncertainty, args.views, args.cache,
                      args.skip_missing)


def check_fp16(args: argparse.Namespace) -> None:
    from paddle_chexnet.errors import UserError

    if args.fp16 and (args.device.lower() == "cpu" or args.backend == "inference"):
        raise UserError("--fp16 runs the network in float16 on a GPU with the dygraph backend; drop it on the CPU")


def run(args: argparse.Namespace):
    from paddle_chexnet.errors import UserError
    from paddle_chexnet.evaluation.evaluate import evaluate
    from paddle_chexnet.inference.predictors import load_predictor
    from paddle_chexnet.models.state_dict import require_weights_file
    from paddle_chexnet.utils.device import prepare_device
    from paddle_chexnet.utils.io import ensure_output_dir

    # cheap checks first: a typo fails before the model is built or an image decoded
    for flag in ("batch_size", "processes", "resize", "crop"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    check_fp16(args)
    require_weights_file(args.weights)
    output_dir = ensure_output_dir(args.output_dir)
    source = data_source(args)
    source.check_layout(lists_given=bool(args.label_list))
    label_list = Path(args.label_list) if args.label_list else source.default_list("test")
    labels = source.labels(label_list)
    check_weights_fit_labels(args.weights, labels.class_names, label_list)
    dataset = source.dataset_of(labels, resize=args.resize)
    check_resampling_units(args, dataset.names)  # the bootstrap needs the images' patients: know it now
    if dataset.skipped:
        logger.warning("skipped %d missing images (listed in %s)", len(dataset.skipped), output_dir / "skipped.txt")
    device = prepare_device(args.device, args.num_threads)
    if args.fp16 and not device.startswith("gpu"):
        raise UserError("--fp16 needs a GPU; this run is on the CPU")
    predictor = load_predictor(args.weights, args.backend, device, args.crop, args.cache_dir, args.num_threads,
                               args.micro_batch)
    logger.info("%d images, %s-crop, backend %s on %s", len(dataset), args.crops, predictor.backend, device)
    result = evaluate(
        predictor, dataset, output_dir, crops=args.crops, resize=args.resize, crop=args.crop,
        batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress,
        plot=not args.no_plot, processes=args.processes, skip_unreadable=args.skip_unreadable, fp16=args.fp16,
    )
    finish_evaluation(result, args, output_dir, label_list)
    print(result.table())
    print(f"{len(result.names)} images in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s); "
          f"results in {output_dir}")
    return result


def main(args: argparse.Namespace) -> int:
    if args.preds is not None:
        score_predictions(args)
        return 0
    prepare_statistics(args, early=True)  # the statistics flags are checked before the network runs
    run(args)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)

"""Evaluate a CheXNet on ChestX-ray14: per-finding AUROC with the paper's ten-crop protocol.

Example:
    python eval.py --weights pretrained_models/chexnet.pdparams --data-dir ChestX-ray14 \
        --label-list ChestX-ray14/labels/test_list.txt --output-dir outputs/eval

On a CPU the network runs through Paddle Inference with oneDNN (exported once
and cached); on a GPU, in the dynamic graph. Writes ``aucs.csv``, ``preds.csv``,
``roc_curves.png`` and ``metrics.json`` to the output folder.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from paddle_chexnet.data.datasets import ChestXray14Dataset
from paddle_chexnet.data.label_lists import read_label_list
from paddle_chexnet.evaluation.evaluate import default_num_workers, evaluate
from paddle_chexnet.inference.predictors import load_predictor
from paddle_chexnet.models.loading import MISSING_WEIGHTS_HELP
from paddle_chexnet.utils.device import select_device

logger = logging.getLogger("eval")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except ``None`` ones whose help already says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Per-finding AUROC of a CheXNet on ChestX-ray14 (ten-crop by default).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--weights", default="pretrained_models/chexnet.pdparams",
                        help="CheXNet .pdparams (from tools/convert_torch.py or train.py)")
    parser.add_argument("--data-dir", "--data_dir", default="ChestX-ray14",
                        help="dataset folder; images under DIR/images (flat or NIH's images_0NN/images/)")
    parser.add_argument("--image-dir", "--image_dir", default=None,
                        help="image folder (default: DATA_DIR/images)")
    parser.add_argument("--label-list", "--label_list", default=None,
                        help="label list '<image> <14 values>' (default: DATA_DIR/labels/test_list.txt)")
    parser.add_argument("--output-dir", "--output_dir", default="outputs/eval", help="where results are written")
    parser.add_argument("--crops", choices=("ten", "center"), default="ten",
                        help="ten-crop (the paper's protocol) or a single center crop (10x faster)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8,
                        help="images per batch (ten-crop runs 10x as many crops at once)")
    parser.add_argument("--num-workers", "--num_workers", type=int, default=None,
                        help=f"image-loading processes, 0 = in the main process (default: {default_num_workers()})")
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
                        help="cache of exported models (default: $PADDLE_CHEXNET_CACHE or ~/.cache/paddle_chexnet)")
    parser.add_argument("--skip-missing", "--skip_missing", action="store_true",
                        help="evaluate on the listed images that exist; list the others in OUTPUT_DIR/skipped.txt")
    parser.add_argument("--resize", type=int, default=256, help="shorter side after resizing")
    parser.add_argument("--crop", type=int, default=224, help="crop size")
    parser.add_argument("--no-plot", "--no_plot", action="store_true", help="do not draw the ROC curves")
    parser.add_argument("--no-progress", "--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(args: argparse.Namespace):
    """Run the evaluation; returns the :class:`~paddle_chexnet.evaluate.EvalResult`."""
    data_dir = Path(args.data_dir)
    image_dir = Path(args.image_dir) if args.image_dir else data_dir / "images"
    label_list = Path(args.label_list) if args.label_list else data_dir / "labels" / "test_list.txt"
    # Cheap checks first, so a typo fails before the model is built.
    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"weights not found: {args.weights}. {MISSING_WEIGHTS_HELP}")
    labels = read_label_list(label_list)
    dataset = ChestXray14Dataset(image_dir, labels, skip_missing=args.skip_missing)
    if dataset.skipped:
        logger.warning("skipped %d missing images (listed in %s)", len(dataset.skipped),
                       Path(args.output_dir) / "skipped.txt")
    device = select_device(args.device, args.num_threads)
    predictor = load_predictor(
        args.weights, args.backend, device, args.crop, args.cache_dir, args.num_threads, args.micro_batch
    )
    logger.info("%d images, %s-crop, backend %s on %s", len(dataset), args.crops, predictor.backend, device)
    result = evaluate(
        predictor, dataset, args.output_dir, crops=args.crops, resize=args.resize, crop=args.crop,
        batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress,
        plot=not args.no_plot, processes=args.processes,
    )
    print(result.table())
    print(f"{len(result.names)} images in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s); "
          f"results in {args.output_dir}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError, OSError) as exc:
        logger.error("%s", exc)
        sys.exit(1)

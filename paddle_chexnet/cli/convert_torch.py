"""Convert a CheXNet, DenseNet, ResNet or EfficientNet checkpoint to this package's ``.pdparams``, and verify it.

Reads arnoweng/CheXNet's ``model.pth.tar``, jrzech/reproduce-chexnet's ``checkpoint``
(with --trust-pickle), torchvision state dicts of DenseNet-121/169/201,
ResNet-18/50/101 and EfficientNet-B0..B3 (e.g. the ImageNet weights), and
``paddle.vision`` DenseNet and ResNet ``.pdparams`` (Paddle's ImageNet weights,
jm12138/Paddle-CheXNet). The layout and the architecture are detected from the
keys and shapes; the JSON written beside the output names the architecture.

Examples:
    python tools/convert_torch.py model.pth.tar                       # -> pretrained_models/model.pdparams
    python tools/convert_torch.py model.pth.tar --verify \\
        --images ChestX-ray14/images --labels ChestX-ray14/labels/test_list.txt --limit 200
    python tools/convert_torch.py checkpoint --trust-pickle -o pretrained_models/jrzech.pdparams
    python tools/convert_torch.py densenet121-a639ec97.pth --head drop  # ImageNet backbone for training
    python tools/convert_torch.py resnet50-11ad3fa6.pth --verify        # torchvision's ImageNet ResNet-50
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command
from paddle_chexnet.conversion.layouts import (
    FORMAT_DESCRIPTIONS,
    HEADS,
    convert_state_dict,
)
from paddle_chexnet.conversion.readers import CheckpointReadError, read_checkpoint
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.errors import UserError
from paddle_chexnet.models.base import default_class_names
from paddle_chexnet.models.spec import ModelSpec, spec_record
from paddle_chexnet.models.state_dict import StateDictMismatchError
from paddle_chexnet.utils.hashing import file_sha256
from paddle_chexnet.utils.io import atomic_paddle_save, atomic_write_text

LOG = logging.getLogger("convert_torch")
DEFAULT_DIR = Path("pretrained_models")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch (or paddle.vision) DenseNet, ResNet or EfficientNet checkpoint to "
        "paddle-chexnet .pdparams.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("src", type=Path, help="checkpoint to convert (.pth, .pth.tar, .pt, .pdparams, ...)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None,
        help="output .pdparams (default: pretrained_models/<name without extensions>.pdparams)",
    )
    parser.add_argument(
        "--num-classes", "--num_classes", dest="num_classes", type=int, default=None,
        help="outputs of the classifier: with --head keep it must equal the file's; with --head resize "
        "the new size (default there: 14)",
    )
    parser.add_argument(
        "--head", choices=HEADS, default="keep",
        help="keep the file's classifier, drop it (backbone only, to initialise training), or resize it "
        "(fresh classifier of --num-classes outputs)",
    )
    parser.add_argument(
        "--trust-pickle", "--trust_pickle", dest="trust_pickle", action="store_true",
        help="allow files that pickle whole Python objects (jrzech's checkpoint): unpickling runs code "
        "named in the file, so only use it for files from a source you trust",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help="compare the converted model with torchvision's (or paddle.vision's) network of the same "
        "architecture holding the same file: random inputs, and real images with --images/--labels; exit 1 "
        "when a bound is broken",
    )
    parser.add_argument("--images", type=Path, default=None, help="image folder for --verify (flat or NIH's nested)")
    parser.add_argument("--labels", type=Path, default=None, help="label list (CheXNet format) for --verify")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4,
                        help="images per forward pass in --verify (x10 crops)")
    parser.add_argument("--limit", type=int, default=None, help="verify on the first N images of the label list only")
    parser.add_argument("--num-random", "--num_random", dest="num_random", type=int, default=8,
                        help="random inputs in --verify")
    return parser


def default_output(src: Path) -> Path:
    """``pretrained_models/<stem>.pdparams``.

    ``model.pth.tar`` -> ``model.pdparams``; ``checkpoint`` -> ``checkpoint.pdparams``.
    """
    name = src.name
    for suffix in (".tar", ".pth", ".pt", ".pdparams", ".pkl", ".bin"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return DEFAULT_DIR / f"{name}.pdparams"


def _check_args(args: argparse.Namespace) -> None:
    if (args.images is None) != (args.labels is None):
        raise UserError("--images and --labels go together (the AUROC check needs both)")
    if args.images is not None and not args.verify:
        raise UserError("--images/--labels are used by --verify; add --verify")
    if args.verify and args.head != "keep":
        raise UserError("--verify compares classifier outputs; use it with --head keep")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")


def run_verify(args: argparse.Namespace, fmt: str, source_state: dict, converted: dict,
               arch: str | None = None) -> bool:
    """Run --verify, print the table, return whether every bound holds."""
    from paddle_chexnet.conversion.verify import verify_conversion

    paths = labels = None
    if args.images is not None:
        from paddle_chexnet.data.datasets import index_images
        from paddle_chexnet.data.label_lists import read_label_list

        label_list = read_label_list(args.labels)
        if args.limit is not None:
            label_list = label_list.subset(label_list.names[: args.limit])
        index = index_images(args.images)
        missing = [n for n in label_list.names if n not in index]
        if missing:
            raise UserError(
                f"{len(missing)} images of {args.labels} are not under {args.images}, first: {missing[:3]}"
            )
        paths, labels = [index[n] for n in label_list.names], label_list.labels
    result = verify_conversion(
        fmt, source_state, converted, paths, labels, num_random=args.num_random, batch_size=args.batch_size,
        progress=lambda done, total: LOG.info("verify: %d/%d images", done, total), arch=arch,
    )
    print(result.table())
    return result.passed


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    output = args.output if args.output is not None else default_output(args.src)
    start = time.perf_counter()
    try:
        checkpoint = read_checkpoint(args.src, trust_pickle=args.trust_pickle)
        conversion = convert_state_dict(
            checkpoint.state, head=args.head, num_classes=args.num_classes, source=str(args.src)
        )
    except (FileNotFoundError, ImportError, CheckpointReadError, StateDictMismatchError, ValueError) as exc:
        LOG.error("error: %s", exc)
        return 2
    atomic_paddle_save(conversion.state, output)
    classes = list(CLASS_NAMES) if conversion.num_classes == len(CLASS_NAMES) else None
    sidecar: dict = {}
    if conversion.num_classes is not None:  # a whole network: record what it is, for load_network
        spec = ModelSpec(arch=conversion.arch, num_classes=conversion.num_classes,
                         class_names=tuple(classes or default_class_names(conversion.num_classes)),
                         task="chexnet14" if classes else None)
        sidecar.update(spec_record(spec))
    sidecar.update({
        "arch": conversion.arch,
        "source": str(args.src.resolve()),
        "source_sha256": file_sha256(args.src),
        "format": conversion.format,
        "framework": checkpoint.framework,
        "entry": checkpoint.entry,
        "head": conversion.head,
        "num_classes": conversion.num_classes,
        "class_names": classes,
        "num_tensors": len(conversion.state),
    })
    atomic_write_text(output.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    LOG.info(
        "converted %s (%s, %s layout: %s; weights at %s) -> %s: %d tensors, classifier %s, %.1f s",
        args.src, conversion.arch, conversion.format, FORMAT_DESCRIPTIONS[conversion.format], checkpoint.entry, output,
        len(conversion.state),
        "dropped" if conversion.num_classes is None else f"{conversion.num_classes} outputs ({conversion.head})",
        time.perf_counter() - start,
    )
    if args.verify:
        try:
            passed = run_verify(args, conversion.format, checkpoint.state, conversion.state, conversion.arch)
        except (ValueError, ImportError, FileNotFoundError) as exc:  # VerifyError, label lists, no torchvision
            LOG.error("error: %s", exc)
            return 2
        return 0 if passed else 1
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)

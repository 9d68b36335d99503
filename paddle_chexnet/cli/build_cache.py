"""``tools/build_cache.py``: decode and resize every image once into a memory-mapped cache (docs/data-cache.md)."""
from __future__ import annotations

import argparse
import logging

from paddle_chexnet.cli.common import HelpFormatter, run_command

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_cache.py",
        description="Decode and resize every image of a folder once into a cache that train.py and eval.py "
        "read with --cache: uint8 pixels in a few memory-mapped files, keyed by relative path. Resumable "
        "(re-run the same command after an interruption), incremental (changed and new images are "
        "re-encoded, the rest is kept), and safe to kill at any moment.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--image-dir", required=True, help="folder of the images (any depth, e.g. NIH's "
                        "images_0NN/images/ or CheXpert's train/patient*/study*/)")
    parser.add_argument("--output", required=True, help="the cache folder (new, or a cache to update or finish)")
    parser.add_argument("--size", type=int, default=256,
                        help="shorter side after resizing: the --resize of the runs that will read the cache")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: the cores this process may use; 0: in this process)")
    parser.add_argument("--label-list", nargs="+", action="extend", default=None, metavar="LIST",
                        help="only the images these files name: CheXNet label lists, NIH name lists, or CSVs "
                        "with a Path (CheXpert) or Image Index column; may be repeated")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="exit 0 even if some images could not be decoded (they are listed in "
                        "OUTPUT/unreadable.txt either way)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="cache the listed images that exist instead of stopping because others are missing")
    parser.add_argument("--verify", action="store_true",
                        help="afterwards, read every cached image back and check its checksum")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="debug logging (tracebacks of errors)")
    return parser


def main(args: argparse.Namespace) -> int:
    from paddle_chexnet.data.cache import UNREADABLE_NAME, ImageCache
    from paddle_chexnet.data.cache_build import build_cache

    result = build_cache(args.image_dir, args.output, size=args.size, workers=args.workers,
                         label_lists=args.label_list or (), skip_missing=args.skip_missing,
                         progress=not args.no_progress)
    gib = result.stored_bytes / 2**30
    logger.info("%s: %d images (%.2f GiB at %d px); this run encoded %d, kept %d%s in %.1f s%s",
                result.root, result.total, gib, args.size, result.encoded, result.reused,
                f", resumed {result.resumed}" if result.resumed else "", result.seconds,
                "" if result.manifest_written else " (nothing changed)")
    if result.orphaned:
        logger.info("%d cached images have no source under %s any more; they are kept", result.orphaned,
                    args.image_dir)
    if args.verify:
        logger.info("verified %d images", ImageCache(result.root).verify())
    if result.unreadable:
        log = logger.warning if args.skip_unreadable else logger.error
        for key, reason in result.unreadable:
            log("unreadable: %s: %s", key, reason)
        log("%d image(s) could not be decoded and are not in the cache (listed in %s)%s", len(result.unreadable),
            result.root / UNREADABLE_NAME, "" if args.skip_unreadable else "; fix or remove them and re-run, "
            "or pass --skip-unreadable to accept the cache without them")
        return 0 if args.skip_unreadable else 1
    return 0


def entry(argv=None) -> int:
    return run_command(get_args_parser, main, argv)

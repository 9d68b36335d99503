"""Decode and resize every image once into a memory-mapped cache for ``--cache`` (docs/data-cache.md).

Examples:
    python tools/build_cache.py --image-dir ChestX-ray14/images --output ChestX-ray14/cache-256
    python tools/build_cache.py --image-dir ChestX-ray14/images --output cache-224 --size 224 --workers 8 \
        --label-list ChestX-ray14/labels/train_list.txt ChestX-ray14/labels/val_list.txt
    python tools/build_cache.py --image-dir CheXpert-v1.0-small --output chexpert-256 \
        --label-list CheXpert-v1.0-small/train.csv --skip-unreadable

Re-run the same command after an interruption to finish the cache, or after adding or changing images to update it.
"""
import sys

from paddle_chexnet.cli.build_cache import entry

if __name__ == "__main__":
    sys.exit(entry())

"""Benchmark: decoding X-ray PNGs with OpenCV against PIL, pixels compared on every image.

For every PNG under ``--images`` (NIH's 200-image sample: 199 gray, one RGBA):

1. reads it with PIL exactly as ``read_xray`` did before OpenCV (``Image.open`` + ``load`` +
   ``to_model_mode``) and with today's ``read_xray`` (OpenCV for 8-bit gray/RGB/RGBA PNGs),
   and checks that both give the same mode and the same bytes; then the same for the
   evaluation preprocessing (``EvalTransform``, PIL's resize) of each;
2. times both decodes per image, alternating PIL / OpenCV image by image over ``--repeats``
   rounds so that both see the same machine load, from a warm page cache (files read once first);
3. times the whole evaluation preprocessing (decode + resize + crop + normalise) both ways,
   to show the decode's share of what a data-loader worker does per image.

Prints a Markdown section for BENCHMARKS.md; exits 1 if any pixel differs.

Example:
    python benchmarks/bench_decode.py --images ../shared/data/chestxray14-sample/images
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script from any folder)
from PIL import Image

from paddle_chexnet.data.images import opencv, read_xray, to_model_mode
from paddle_chexnet.data.transforms import EvalTransform


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of PNG images")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds over all images")
    parser.add_argument("--resize", type=int, default=256, help="EvalTransform's resize")
    parser.add_argument("--crop", type=int, default=224, help="EvalTransform's crop")
    return parser


def read_with_pil(path: Path) -> Image.Image:
    """``read_xray``'s decode without OpenCV: what every PNG went through before."""
    with Image.open(path) as opened:
        opened.load()
        return to_model_mode(opened)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def time_alternating(paths: list[Path], first: Callable, second: Callable, repeats: int) -> tuple[list, list]:
    """Per-image seconds of ``first`` and ``second``, alternating on each image."""
    times_a, times_b = [], []
    for _ in range(repeats):
        for path in paths:
            start = time.perf_counter()
            first(path)
            middle = time.perf_counter()
            second(path)
            times_a.append(middle - start)
            times_b.append(time.perf_counter() - middle)
    return times_a, times_b


def main(args: argparse.Namespace) -> int:
    cv2 = opencv()
    if cv2 is None:
        print("OpenCV is not installed (pip install opencv-python-headless): nothing to compare", file=sys.stderr)
        return 1
    paths = sorted(args.images.glob("*.png"))
    if not paths:
        print(f"no PNG files in {args.images}", file=sys.stderr)
        return 1
    for path in paths:  # warm the page cache: both decoders then read from memory
        path.read_bytes()
    transform = EvalTransform("center", args.resize, args.crop)

    modes: dict[str, int] = {}
    differing = []
    for path in paths:
        with Image.open(path) as opened:
            modes[opened.mode] = modes.get(opened.mode, 0) + 1
        reference, candidate = read_with_pil(path), read_xray(path)
        if not same_pixels(reference, candidate) or not np.array_equal(transform(reference), transform(candidate)):
            differing.append(path.name)

    pil_decode, cv_decode = time_alternating(paths, read_with_pil, read_xray, args.repeats)
    pil_full, cv_full = time_alternating(paths, lambda p: transform(read_with_pil(p)),
                                         lambda p: transform(read_xray(p)), args.repeats)

    def ms(values: list[float]) -> float:
        return 1000 * statistics.median(values)

    ratio = statistics.median(a / b for a, b in zip(pil_decode, cv_decode))
    full_ratio = statistics.median(a / b for a, b in zip(pil_full, cv_full))
    import PIL

    today = datetime.date.today().isoformat()
    print("## PNG decoding: OpenCV against PIL (`benchmarks/bench_decode.py`)\n")
    print(f"{len(paths)} PNGs of {args.images.name} ({', '.join(f'{n} {m}' for m, n in sorted(modes.items()))}), "
          f"{args.repeats} rounds, PIL and OpenCV alternating image by image, warm page cache; {today}, "
          f"{cpu_model()}, OpenCV {cv2.__version__}, Pillow {PIL.__version__}, NumPy {np.__version__}.\n")
    print("| per image (median) | PIL | OpenCV | PIL / OpenCV (median of per-image ratios) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| decode (`read_xray`) | {ms(pil_decode):.2f} ms | {ms(cv_decode):.2f} ms | {ratio:.2f}x |")
    print(f"| decode + EvalTransform {args.resize}/{args.crop} | {ms(pil_full):.2f} ms | {ms(cv_full):.2f} ms "
          f"| {full_ratio:.2f}x |")
    print(f"\nSame mode and bytes after decoding and after EvalTransform: "
          f"{len(paths) - len(differing)} of {len(paths)} images"
          + (f"; DIFFERENT: {', '.join(differing)}" if differing else "") + ".")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

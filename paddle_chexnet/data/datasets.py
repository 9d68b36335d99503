"""Image folders (flat or NIH's nested layout) and the Paddle dataset of labelled X-rays."""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import paddle
from PIL import Image, UnidentifiedImageError

from paddle_chexnet.data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, ImageReadError, read_xray, scan_images
from paddle_chexnet.data.label_lists import LabelList, read_label_list

logger = logging.getLogger(__name__)


class MissingImagesError(FileNotFoundError):
    """Images named in a label list that are not in the image folder."""


def index_images(image_dir: str | Path) -> dict[str, Path]:
    """Map each image file name to its path, in a flat folder or NIH's nested layout.

    NIH's archives unpack to ``images_001/images/00000001_000.png`` ...
    ``images_012/images/...``; a flat ``images/00000001_000.png`` works too, as
    does any mix (subfolders are searched at any depth).

    Raises:
        FileNotFoundError: the folder does not exist or holds no images.
        ValueError: two files share a name (both paths are given).
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {image_dir}. Put the ChestX-ray14 PNGs there (flat, or the "
            "images_0NN/images/ folders NIH's archives unpack to) or pass --data-dir"
        )
    index: dict[str, Path] = {}
    for image_path in scan_images(image_dir):
        previous = index.setdefault(image_path.name, image_path)
        if previous != image_path:
            raise ValueError(
                f"two images share the name {image_path.name}: {previous} and {image_path}; "
                "remove the duplicate so labels map to one file"
            )
    if not index:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {image_dir}"
        )
    return index


def check_data_dir(data_dir: str | Path, flag: str = "--data-dir") -> None:
    """Refuse a ``--data-dir`` that is the image folder itself (what the reference repos call ``DATA_DIR``).

    A data set folder holds ``images/`` and ``labels/``; a folder with image files
    directly in it and no ``labels/`` is the image folder.

    Raises:
        UserError: ``data_dir`` holds images itself; the message says to pass its parent or ``--image-dir``.
    """
    from paddle_chexnet.errors import UserError

    data_dir = Path(data_dir)
    if not data_dir.is_dir() or (data_dir / "labels").is_dir():
        return
    with os.scandir(data_dir) as entries:
        holds_images = any(entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
                           for entry in itertools.islice(entries, 1000))
    if holds_images:
        parent = data_dir.resolve().parent
        raise UserError(
            f"{flag} {data_dir} holds the images themselves; pass the folder that holds images/ and labels/ "
            f"(its parent {parent}?) as {flag}, or keep this folder with --image-dir {data_dir} and give the "
            "label lists (--label-list, or --train-list and --val-list)"
        )


def check_image_header(path: Path) -> tuple[int, int] | None:
    """Open ``path``'s header (cheap: no pixel decoding) and return ``(width, height)`` (``None`` for DICOM).

    Raises:
        ImageReadError: it is not an image.
    """
    if path.suffix.lower() in DICOM_SUFFIXES:
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}. Is the file complete (re-extract it)?") from exc


class ChestXray14Dataset(paddle.io.Dataset):
    """ChestX-ray14 images with their labels: ``(image float32 array, labels float32 [C])`` per item.

    Construction checks that every listed image exists (one directory scan), so
    a wrong folder fails at once, not after hours.

    Args:
        image_dir (str | Path): folder of images, flat or NIH's nested ``images_0NN/images/``.
        label_list (LabelList | str | Path): the labels, or a label-list file to read.
        transform (Callable, optional): PIL image -> array, e.g.
            :class:`~paddle_chexnet.data.transforms.EvalTransform`. ``None`` returns the
            ``uint8`` pixels ``[H, W]`` or ``[H, W, 3]``. Default: None.
        skip_missing (bool, optional): drop listed images that are not on disk
            (their names are in :attr:`skipped`) instead of raising. Default: False.
        image_index (Mapping[str, Path], optional): a precomputed :func:`index_images`
            result (saves rescanning a large folder). Default: None.
        reader (Callable, optional): path -> PIL image. Default: :func:`~paddle_chexnet.data.images.read_xray`.

    Attributes:
        names (list[str]): image names in dataset order.
        labels (numpy.ndarray): float32 ``[N, C]`` in dataset order.
        paths (list[Path]): image files in dataset order.
        skipped (list[str]): listed names that were skipped as missing.

    Raises:
        MissingImagesError: images are missing and ``skip_missing`` is False; the
            message gives the count and the first names, and mentions ``--skip-missing``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        label_list: LabelList | str | Path,
        transform: Callable | None = None,
        skip_missing: bool = False,
        image_index: Mapping[str, Path] | None = None,
        reader: Callable[[Path], Image.Image] = read_xray,
    ) -> None:
        super().__init__()
        if not isinstance(label_list, LabelList):
            label_list = read_label_list(label_list)
        index = image_index if image_index is not None else index_images(image_dir)
        missing = [name for name in label_list.names if name not in index]
        if missing and not skip_missing:
            raise MissingImagesError(
                f"{len(missing)} of {len(label_list)} images listed in {label_list.source or 'the label list'} "
                f"are not under {image_dir}; first: {', '.join(missing[:5])}. Check --data-dir, or pass "
                "--skip-missing to evaluate on the images that are present"
            )
        if missing:
            logger.warning(
                "skipping %d of %d listed images missing under %s; first: %s",
                len(missing), len(label_list), image_dir, ", ".join(missing[:5]),
            )
        missing_set = set(missing)
        present = [name for name in label_list.names if name not in missing_set]
        if not present:
            raise MissingImagesError(
                f"none of the {len(label_list)} images listed in {label_list.source or 'the label list'} "
                f"is under {image_dir}; check --data-dir"
            )
        kept = label_list.subset(present) if missing else label_list
        self.image_dir = Path(image_dir)
        self.class_names = kept.class_names
        self.names: list[str] = kept.names
        self.labels: np.ndarray = kept.labels
        self.paths: list[Path] = [Path(index[name]) for name in self.names]
        self.skipped: list[str] = missing
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.names)

    def verify_images(self, skip_unreadable: bool = False) -> tuple[dict[int, str], dict[int, tuple[int, int]]]:
        """Open every image's header up front; raise :class:`ImageReadError` naming the first bad file.

        Catches empty and non-image files in seconds; a truncated PNG is only
        found when decoded (the error then names it too).

        Args:
            skip_unreadable (bool, optional): collect the bad files instead of raising. Default: False.

        Returns:
            tuple[dict, dict]: ``{index: reason}`` of unreadable files, ``{index: (width, height)}`` of the others
            (DICOM files are not opened here).
        """
        unreadable: dict[int, str] = {}
        sizes: dict[int, tuple[int, int]] = {}
        for i, path in enumerate(self.paths):
            try:
                size = check_image_header(path)
            except ImageReadError as exc:
                if not skip_unreadable:
                    raise ImageReadError(f"{exc} (--skip-unreadable leaves such images out and lists them in "
                                         "skipped.txt)") from exc
                unreadable[i] = str(exc)
                continue
            if size is not None:
                sizes[i] = size
        return unreadable, sizes

    def load(self, idx: int) -> Image.Image:
        """The image at ``idx`` as a PIL image (mode ``'L'`` or ``'RGB'``)."""
        return self.reader(self.paths[idx])

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.load(idx)
        array = self.transform(image) if self.transform is not None else np.asarray(image)
        return array, self.labels[idx]

"""ChestX-ray14 as users have it: label lists, image folders and a Paddle dataset.

Two label sources are supported:

* the CheXNet label-list format, one image per line:
  ``<image name> <14 values of 0/1>`` in :data:`~paddle_chexnet.labels.CLASS_NAMES`
  order (the paper's ``train/val/test`` lists), optionally preceded by a header
  line that names the classes (``Image_Index Atelectasis Cardiomegaly ...``);
* NIH's own files: ``Data_Entry_2017*.csv`` (``.gz`` is fine) with
  ``train_val_list.txt`` and ``test_list.txt``, from which
  :func:`nih_label_lists` builds train/val/test label lists, splitting
  train_val into train and val by patient so no patient is in two splits.

Everything is validated up front, before any image is decoded: a bad line, an
unknown class or a missing image is reported with its file and line (or the
list of missing names) instead of failing hours into a run.
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
from PIL import Image, UnidentifiedImageError

from .images import DICOM_SUFFIXES, ImageReadError, read_xray
from .io_utils import atomic_write_text
from .labels import CLASS_NAMES, canonical_label

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} | DICOM_SUFFIXES
NO_FINDING = "No Finding"


class LabelListError(ValueError):
    """A label list (or NIH metadata file) with a malformed line; the message names file and line."""


class MissingImagesError(FileNotFoundError):
    """Images named in a label list that are not in the image folder."""


@dataclass
class LabelList:
    """Image names and their 0/1 labels, one row per image.

    Args:
        names (list[str]): image file names (no folder), e.g. ``00000001_000.png``.
        labels (numpy.ndarray): float32 ``[N, C]`` of 0/1.
        class_names (tuple[str, ...], optional): the ``C`` column names. Default: CLASS_NAMES.
        source (str, optional): where the list came from (a path), for messages. Default: ''.
    """

    names: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.class_names = tuple(self.class_names)
        if self.labels.ndim != 2 or self.labels.shape != (len(self.names), len(self.class_names)):
            raise ValueError(
                f"labels of {self.source or 'label list'} have shape {list(self.labels.shape)}, expected "
                f"[{len(self.names)}, {len(self.class_names)}] (one row per name, one column per class)"
            )

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, names: Iterable[str]) -> LabelList:
        """The rows for ``names``, in that order (``KeyError`` names the first unknown one)."""
        row = {name: i for i, name in enumerate(self.names)}
        names = list(names)
        missing = [n for n in names if n not in row]
        if missing:
            raise KeyError(f"{len(missing)} names not in {self.source or 'label list'}, first: {missing[:5]}")
        return LabelList(names, self.labels[[row[n] for n in names]], self.class_names, self.source)


def _parse_value(token: str) -> float | None:
    """0 or 1 from a token (``'1'``, ``'0.0'``), else ``None``."""
    try:
        value = float(token)
    except ValueError:
        return None
    return value if value in (0.0, 1.0) else None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _header_order(tokens: Sequence[str], class_names: Sequence[str], where: str) -> list[int]:
    """Column index (into the file's values) of each class in ``class_names``, from a header line."""
    known = {name: i for i, name in enumerate(class_names)}
    file_classes = []
    for token in tokens:
        try:
            name = canonical_label(token) if token not in known else token
        except KeyError:
            name = token
        if name not in known:
            raise LabelListError(
                f"{where}: unknown class {token!r} in the header; expected the classes {', '.join(class_names)}"
            )
        file_classes.append(name)
    duplicated = sorted({n for n in file_classes if file_classes.count(n) > 1})
    missing = [n for n in class_names if n not in file_classes]
    if duplicated or missing:
        raise LabelListError(
            f"{where}: the header must name each class once; "
            + (f"repeated: {', '.join(duplicated)}; " if duplicated else "")
            + (f"missing: {', '.join(missing)}" if missing else "")
        )
    return [file_classes.index(name) for name in class_names]


def read_label_list(path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> LabelList:
    """Read and validate a CheXNet label list: ``<image name> <C values of 0/1>`` per line.

    Every line is checked before anything is returned: the number of values, that
    each is 0 or 1, and that no image is listed twice. Blank lines and lines
    starting with ``#`` are ignored. The first line may be a header naming the
    classes (first token, e.g. ``Image_Index``, then class names, any order,
    NIH spellings such as ``Infiltrate`` accepted); columns are then reordered
    to ``class_names``.

    Args:
        path (str | Path): the label list.
        class_names (Sequence[str], optional): the expected classes. Default: CLASS_NAMES.

    Returns:
        LabelList: names in file order, labels float32 ``[N, C]``.

    Raises:
        FileNotFoundError: the file does not exist.
        LabelListError: a malformed line, e.g.
            ``labels.txt line 17: expected 14 values after the image name, got 13``.

    Examples:
        >>> ll = read_label_list("ChestX-ray14/labels/test_list.txt")  # doctest: +SKIP
        >>> ll.labels.shape  # doctest: +SKIP
        (22432, 14)
    """
    path = Path(path)
    class_names = tuple(class_names)
    num_classes = len(class_names)
    if not path.is_file():
        raise FileNotFoundError(f"label list not found: {path}")
    names: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}
    order: list[int] | None = None
    seen_content = False
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            where = f"{path} line {line_no}"
            values = tokens[1:]
            if not seen_content:
                seen_content = True
                if values and not any(_is_number(v) for v in values):
                    order = _header_order(values, class_names, where)
                    continue
            if len(values) != num_classes:
                raise LabelListError(
                    f"{where}: expected {num_classes} values after the image name, got {len(values)} "
                    f"(format: '<image name> <{num_classes} values of 0/1>' in the order {', '.join(class_names)})"
                )
            parsed = [_parse_value(v) for v in values]
            if any(p is None for p in parsed):
                bad = next(v for v, p in zip(values, parsed) if p is None)
                raise LabelListError(f"{where}: label values must be 0 or 1, got {bad!r} for {tokens[0]}")
            name = tokens[0]
            if name in first_line:
                raise LabelListError(f"{where}: image {name} is listed twice (first on line {first_line[name]})")
            first_line[name] = line_no
            names.append(name)
            rows.append(parsed if order is None else [parsed[i] for i in order])
    if not names:
        raise LabelListError(f"{path}: no labelled images found (empty file?)")
    labels = np.asarray(rows, dtype=np.float32)
    return LabelList(names, labels, class_names, str(path))


def write_label_list(path: str | Path, label_list: LabelList) -> None:
    """Write ``label_list`` in the CheXNet format (no header), atomically."""
    lines = [
        name + " " + " ".join(str(int(v)) for v in row)
        for name, row in zip(label_list.names, label_list.labels)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _scan_images(folder: Path) -> Iterable[Path]:
    """Image files under ``folder`` at any depth (hidden files and folders skipped)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


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
    for image_path in _scan_images(image_dir):
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


def check_image_header(path: Path) -> None:
    """Open ``path``'s header (cheap: no pixel decoding); raise :class:`ImageReadError` if it is not an image."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - header parsed by open()
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
            :class:`~paddle_chexnet.transforms.EvalTransform`. ``None`` returns the
            ``uint8`` pixels ``[H, W]`` or ``[H, W, 3]``. Default: None.
        skip_missing (bool, optional): drop listed images that are not on disk
            (their names are in :attr:`skipped`) instead of raising. Default: False.
        image_index (Mapping[str, Path], optional): a precomputed :func:`index_images`
            result (saves rescanning a large folder). Default: None.
        reader (Callable, optional): path -> PIL image. Default: :func:`~paddle_chexnet.images.read_xray`.

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

    def verify_images(self) -> None:
        """Open every image's header up front; raise :class:`ImageReadError` naming the first bad file.

        Catches empty and non-image files in seconds; a truncated PNG is only
        found when decoded (the error then names it too).
        """
        for path in self.paths:
            check_image_header(path)

    def load(self, idx: int) -> Image.Image:
        """The image at ``idx`` as a PIL image (mode ``'L'`` or ``'RGB'``)."""
        return self.reader(self.paths[idx])

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.load(idx)
        array = self.transform(image) if self.transform is not None else np.asarray(image)
        return array, self.labels[idx]


# --------------------------------------------------------------------------- NIH files


@dataclass
class NihDataEntry:
    """The rows of NIH's ``Data_Entry_2017*.csv`` that matter here.

    Attributes:
        names (list[str]): ``Image Index``.
        patient_ids (numpy.ndarray): int64 ``Patient ID`` per image.
        labels (numpy.ndarray): float32 ``[N, C]`` from ``Finding Labels``.
        class_names (tuple[str, ...]): the label columns.
        source (str): the CSV path.
    """

    names: list[str]
    patient_ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def label_list(self, names: Sequence[str], source: str = "") -> LabelList:
        """A :class:`LabelList` for ``names`` in that order."""
        rows = [self._row[n] for n in names]
        return LabelList(list(names), self.labels[rows], self.class_names, source or self.source)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_nih_data_entry(csv_path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> NihDataEntry:
    """Read NIH's ``Data_Entry_2017.csv`` (or ``_v2020``, plain or ``.gz``).

    ``Finding Labels`` is ``|``-separated, or ``No Finding`` (all zeros). A finding
    that is not a known class, a bad ``Patient ID`` or a repeated image raises
    :class:`LabelListError` naming the line.
    """
    csv_path = Path(csv_path)
    class_names = tuple(class_names)
    column = {name: i for i, name in enumerate(class_names)}
    if not csv_path.is_file():
        raise FileNotFoundError(f"NIH data entry file not found: {csv_path}")
    names: list[str] = []
    patients: list[int] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    with _open_text(csv_path) as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        needed = ("Image Index", "Finding Labels", "Patient ID")
        absent = [h for h in needed if h not in header]
        if absent:
            raise LabelListError(
                f"{csv_path} line 1: missing column(s) {', '.join(absent)}; is this NIH's Data_Entry_2017.csv?"
            )
        i_name, i_find, i_pat = (header.index(h) for h in needed)
        for line_no, record in enumerate(reader, start=2):
            if not record or not any(cell.strip() for cell in record):
                continue
            where = f"{csv_path} line {line_no}"
            if len(record) <= max(i_name, i_find, i_pat):
                raise LabelListError(f"{where}: expected at least {max(i_name, i_find, i_pat) + 1} columns")
            name = record[i_name].strip()
            if name in seen:
                raise LabelListError(f"{where}: image {name} is listed twice")
            seen.add(name)
            try:
                patient = int(record[i_pat])
            except ValueError:
                raise LabelListError(f"{where}: Patient ID {record[i_pat]!r} is not an integer") from None
            row = np.zeros(len(class_names), dtype=np.float32)
            findings = record[i_find].strip()
            if findings != NO_FINDING:
                for finding in findings.split("|"):
                    try:
                        row[column[canonical_label(finding) if finding not in column else finding]] = 1.0
                    except KeyError:
                        raise LabelListError(
                            f"{where}: unknown finding {finding!r} for {name}; expected '{NO_FINDING}' or "
                            f"'|'-separated names from {', '.join(class_names)}"
                        ) from None
            names.append(name)
            patients.append(patient)
            rows.append(row)
    if not names:
        raise LabelListError(f"{csv_path}: no rows")
    labels = np.stack(rows) if rows else np.zeros((0, len(class_names)), np.float32)
    return NihDataEntry(names, np.asarray(patients, dtype=np.int64), labels, class_names, str(csv_path))


def read_name_list(path: str | Path) -> list[str]:
    """Image names, one per line (NIH's ``train_val_list.txt``, ``test_list.txt``); repeats are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    names: list[str] = []
    first: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 1:
                raise LabelListError(f"{path} line {line_no}: expected one image name, got {len(tokens)} fields")
            if tokens[0] in first:
                raise LabelListError(f"{path} line {line_no}: {tokens[0]} is listed twice (line {first[tokens[0]]})")
            first[tokens[0]] = line_no
            names.append(tokens[0])
    return names


def split_by_patient(
    names: Sequence[str], patient_ids: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``names`` into (train, val) so that every patient is in exactly one part.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` and assigned to val
    until it holds ``round(val_fraction * len(names))`` images or more; both parts keep
    the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patient_ids = np.asarray(patient_ids)
    unique, counts = np.unique(patient_ids, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    target = int(round(val_fraction * len(names)))
    cumulative = np.cumsum(counts[order])
    n_val_patients = int(np.searchsorted(cumulative, target)) + 1 if target > 0 else 0
    val_patients = set(unique[order[:n_val_patients]].tolist())
    is_val = np.isin(patient_ids, list(val_patients))
    train = [n for n, v in zip(names, is_val) if not v]
    val = [n for n, v in zip(names, is_val) if v]
    return train, val


def nih_label_lists(
    data_entry: NihDataEntry | str | Path,
    train_val_list: Sequence[str] | str | Path,
    test_list: Sequence[str] | str | Path,
    val_fraction: float = 0.125,
    seed: int = 0,
) -> dict[str, LabelList]:
    """Train/val/test label lists from NIH's files, with train_val split into train and val by patient.

    Args:
        data_entry (NihDataEntry | str | Path): :func:`read_nih_data_entry`'s result or the CSV.
        train_val_list (Sequence[str] | str | Path): NIH's ``train_val_list.txt`` or its names.
        test_list (Sequence[str] | str | Path): NIH's ``test_list.txt`` or its names.
        val_fraction (float, optional): share of train_val images (whole patients) for val.
            Default: 0.125 (about CheXNet's 70/10/20 of all images).
        seed (int, optional): shuffles the patients. Default: 0.

    Returns:
        dict[str, LabelList]: ``{'train': ..., 'val': ..., 'test': ...}``.

    Raises:
        LabelListError: a listed image is not in the CSV, an image is in both lists, or
            a patient has images in both train_val and test.
    """
    if not isinstance(data_entry, NihDataEntry):
        data_entry = read_nih_data_entry(data_entry)
    lists = {}
    for key, given in (("train_val", train_val_list), ("test", test_list)):
        if isinstance(given, (str, Path)):
            lists[key] = (read_name_list(given), str(given))
        else:
            lists[key] = (list(given), key)
    for key, (names, source) in lists.items():
        unknown = [n for n in names if n not in data_entry._row]
        if unknown:
            raise LabelListError(
                f"{len(unknown)} images in {source} are not in {data_entry.source}; first: {', '.join(unknown[:5])}"
            )
    train_val, test = lists["train_val"][0], lists["test"][0]
    both = set(train_val) & set(test)
    if both:
        raise LabelListError(f"{len(both)} images are in both train_val and test; first: {sorted(both)[:5]}")
    patient_of = {name: int(data_entry.patient_ids[data_entry._row[name]]) for name in train_val + test}
    shared = {patient_of[n] for n in train_val} & {patient_of[n] for n in test}
    if shared:
        raise LabelListError(
            f"{len(shared)} patients have images in both train_val and test (first: {sorted(shared)[:5]}); "
            "the split would leak patients"
        )
    train, val = split_by_patient(train_val, [patient_of[n] for n in train_val], val_fraction, seed)
    return {
        "train": data_entry.label_list(train, "train (NIH train_val minus val patients)"),
        "val": data_entry.label_list(
            val, f"val (about {val_fraction:.3g} of NIH train_val images, whole patients, seed {seed})"
        ),
        "test": data_entry.label_list(test, "test (NIH test_list)"),
    }

"""CheXNet label lists (``<image name> <14 values of 0/1>``): reading, checking, writing.

Everything is validated before any image is decoded: a bad line or an unknown
class is reported with its file and line instead of failing hours into a run.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label
from paddle_chexnet.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


class LabelListError(ValueError):
    """A label list (or NIH metadata file) with a malformed line; the message names file and line."""


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

"""CheXpert-v1.0 and -v1.0-small as Stanford ships them: the CSVs, uncertainty policies, a patient split, the dataset.

The layout::

    ROOT/CheXpert-v1.0-small/train.csv        (or ROOT/CheXpert-v1.0/...)
    ROOT/CheXpert-v1.0-small/valid.csv
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...

Each CSV row is one image: ``Path`` (relative to ROOT), ``Sex``, ``Age``,
``Frontal/Lateral``, ``AP/PA`` and the 14 observations of
:data:`~paddle_chexnet.data.tasks.CHEXPERT_CLASSES`, each ``1.0`` (positive),
``0.0`` (negative), ``-1.0`` (uncertain) or empty (not mentioned in the
report, read as 0). An uncertainty policy turns ``-1.0`` into 0, 1 or NaN
(``ignore``: unknown, masked in the loss, the class weights and every metric).

Reading checks every row before anything is returned and names the CSV, the
file line (the header is line 1) and the column of the first problem. Images
are identified by their CSV ``Path`` (file names repeat: every study has a
``view1_frontal.jpg``), which is also what ``preds.csv`` should key rows by.

Examples:
    >>> root, folder = find_chexpert_root("data")  # doctest: +SKIP
    >>> labels = read_chexpert_labels(folder / "valid.csv", task="chexpert5", uncertainty="paper")  # doctest: +SKIP
    >>> dataset = CheXpertDataset(root, labels, EvalTransform("center"))  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from paddle_chexnet.data.datasets import ChestXray14Dataset, MissingImagesError
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.label_lists import LabelList, LabelListError
from paddle_chexnet.data.nih import split_by_patient
from paddle_chexnet.data.tasks import CHEXPERT_CLASSES, Task, check_task, task_labels

CHEXPERT_FOLDERS: tuple[str, ...] = ("CheXpert-v1.0-small", "CheXpert-v1.0")


CSV_SPLITS: tuple[str, ...] = ("train", "valid")


META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


# Stanford's header, in its order.
CSV_COLUMNS: tuple[str, ...] = META_COLUMNS + CHEXPERT_CLASSES


VIEWS: tuple[str, ...] = ("frontal", "all")


UNCERTAINTY_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones")


# The 'paper' preset: see parse_uncertainty's docstring for where it comes from.
UNCERTAINTY_PRESETS: Mapping[str, str] = {
    "paper": "ignore,Atelectasis=ones,Edema=ones,Cardiomegaly=zeros,Consolidation=zeros,Pleural Effusion=zeros",
}


DEFAULT_UNCERTAINTY = "paper"


UNCERTAINTY_HELP = (
    "what an uncertain (-1.0) CheXpert label becomes: 'ignore' (unknown: masked in the loss and metrics), "
    "'zeros' or 'ones' for every class; per class, e.g. 'Atelectasis=ones,Edema=ones,Cardiomegaly=zeros' "
    "(a bare policy in the list is the default for the classes not named); or the preset 'paper' "
    f"({UNCERTAINTY_PRESETS['paper']}). Empty cells (not mentioned) are always 0"
)


_VALUES = {1.0: 1.0, 0.0: 0.0, -1.0: -1.0}


_PATIENT = re.compile(r"(?:^|/)patient(\d+)(?:/|$)")


class CheXpertCSVError(LabelListError):
    """A CheXpert CSV that Stanford's format does not allow; the message names the file, line and column."""


# --------------------------------------------------------------------------- #
# Uncertainty policies.
# --------------------------------------------------------------------------- #
def _class_key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def _policy_name(token: str, where: str) -> str:
    key = token.strip().lower()
    key = key[2:] if key.startswith("u-") else key
    if key not in UNCERTAINTY_POLICIES:
        raise ValueError(f"{where}: unknown uncertainty policy {token.strip()!r}; expected one of "
                         f"{', '.join(UNCERTAINTY_POLICIES)}")
    return key


@dataclass(frozen=True)
class UncertaintyPolicy:
    """What each class's uncertain (``-1.0``) labels become: ``'ignore'`` (NaN), ``'zeros'`` or ``'ones'``.

    Build it with :func:`parse_uncertainty`. ``str(policy)`` is its canonical
    spelling (parsing it gives the same policy), for checkpoint sidecars and logs.

    Args:
        per_class (tuple[tuple[str, str], ...]): ``(class, policy)`` pairs, in
            :data:`~paddle_chexnet.data.tasks.CHEXPERT_CLASSES` order.
        default (str, optional): the policy of the classes not named. Default: None (none:
            labelling such a class raises).
    """

    per_class: tuple[tuple[str, str], ...] = ()
    default: str | None = None

    def policy_for(self, name: str) -> str:
        """The policy of class ``name``; ``ValueError`` when the spec names none for it."""
        for cls, policy in self.per_class:
            if cls == name:
                return policy
        if self.default is None:
            raise ValueError(
                f"the uncertainty policy {str(self)!r} says nothing about {name!r}; add '{name}=zeros' "
                f"(or ones / ignore), or a default for the classes not named, e.g. 'zeros,{self}'"
            )
        return self.default

    def __str__(self) -> str:
        parts = ([self.default] if self.default else []) + [f"{cls}={policy}" for cls, policy in self.per_class]
        return ",".join(parts)


def parse_uncertainty(spec: str | UncertaintyPolicy,
                      class_names: Sequence[str] = CHEXPERT_CLASSES) -> UncertaintyPolicy:
    """Parse ``--uncertainty``: ``ignore``, ``zeros``, ``ones``, a preset, or a per-class list.

    A list is comma-separated; each item is ``Class=policy`` or a bare policy (or
    preset) that applies to the classes not named. Class names match
    case-insensitively, with ``_`` for a space (``Pleural_Effusion``); ``U-Ones``
    is accepted for ``ones``. Items after a preset override its classes.

    The preset ``paper`` is the CheXpert paper's choice as the reproductions
    apply it: U-Ones for Atelectasis and Edema, the observations on which Irvin
    et al. (CheXpert, AAAI 2019) found mapping uncertain labels to positive
    helps, and U-Zeros for Cardiomegaly, Consolidation and Pleural Effusion, as
    jfhealthcare/Chexpert (``data/dataset.py``), alinstein/X_RAY (its copy,
    ``Chexpert/data/dataset.py``) and LibAUC's CheXpert loader do. The paper's
    other approaches (U-SelfTrained, U-MultiClass) change the training, not the
    labels, and are not offered. The paper makes no choice for the other nine
    observations, so the preset ignores (masks) their uncertain labels.

    Args:
        spec (str | UncertaintyPolicy): the text (a policy is returned unchanged).
        class_names (Sequence[str], optional): the classes that may be named. Default: CHEXPERT_CLASSES.

    Returns:
        UncertaintyPolicy: the parsed policy.

    Raises:
        ValueError: an unknown class or policy, a class named twice, or two defaults.

    Examples:
        >>> str(parse_uncertainty("zeros, edema=U-Ones"))
        'zeros,Edema=ones'
    """
    if isinstance(spec, UncertaintyPolicy):
        return spec
    where = f"--uncertainty {spec!r}"
    by_key = {_class_key(name): name for name in class_names}
    base: dict[str, str] = {}
    explicit: dict[str, str] = {}
    default: str | None = None
    bare_seen = False
    items = [item.strip() for item in str(spec).split(",")]
    if not any(items):
        raise ValueError(f"{where}: empty; give one of {', '.join(UNCERTAINTY_POLICIES)}, a preset "
                         f"({', '.join(UNCERTAINTY_PRESETS)}) or 'Class=policy,...'")
    for item in items:
        if not item:
            continue
        if "=" not in item:
            if bare_seen:
                raise ValueError(f"{where}: more than one default ({item!r}); give one bare policy or preset")
            bare_seen = True
            if item.lower() in UNCERTAINTY_PRESETS:
                preset = parse_uncertainty(UNCERTAINTY_PRESETS[item.lower()], class_names)
                base, default = dict(preset.per_class), preset.default
            else:
                default = _policy_name(item, where)
            continue
        name, _, policy = item.partition("=")
        cls = by_key.get(_class_key(name))
        if cls is None:
            raise ValueError(f"{where}: unknown class {name.strip()!r}; the classes are {', '.join(class_names)}")
        if cls in explicit:
            raise ValueError(f"{where}: {cls} is given twice")
        explicit[cls] = _policy_name(policy, where)
    merged = {**base, **explicit}
    per_class = tuple((cls, merged[cls]) for cls in class_names if cls in merged)
    return UncertaintyPolicy(per_class, default)


def apply_uncertainty(values: np.ndarray, class_names: Sequence[str],
                      policy: str | UncertaintyPolicy) -> np.ndarray:
    """CheXpert values (1, 0, -1, NaN = empty) -> labels: empty -> 0, -1 -> the class's policy.

    Args:
        values (numpy.ndarray): ``[N, C]`` as read by :func:`read_chexpert_csv`.
        class_names (Sequence[str]): the ``C`` columns' classes.
        policy (str | UncertaintyPolicy): see :func:`parse_uncertainty`.

    Returns:
        numpy.ndarray: float32 ``[N, C]`` of 0, 1 and NaN (``ignore``: unknown).
    """
    policy = parse_uncertainty(policy)
    labels = np.where(np.isnan(values), 0.0, values).astype(np.float32)
    replacement = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
    for c, name in enumerate(class_names):
        column = labels[:, c]
        column[column == -1.0] = replacement[policy.policy_for(name)]
    return labels


# --------------------------------------------------------------------------- #
# The CSV.
# --------------------------------------------------------------------------- #
@dataclass
class CheXpertTable:
    """A CheXpert CSV as read: one row per image, the observations as written.

    Attributes:
        frame (pandas.DataFrame): ``Path``, ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA`` (stripped
            strings) and ``line`` (the row's 1-based file line).
        values (numpy.ndarray): float32 ``[N, 14]`` in CHEXPERT_CLASSES order: 1, 0, -1 as written,
            NaN where the cell is empty (not mentioned).
        source (str): the CSV path.
    """

    frame: pd.DataFrame
    values: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def paths(self) -> list[str]:
        """The CSV ``Path`` of each row (relative to ROOT)."""
        return self.frame["Path"].tolist()

    @property
    def lines(self) -> list[int]:
        return self.frame["line"].tolist()

    def select(self, rows: Sequence[int] | np.ndarray) -> CheXpertTable:
        """The rows at positions ``rows`` (or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return CheXpertTable(self.frame.iloc[rows].reset_index(drop=True), self.values[rows], self.source)

    def with_views(self, views: str) -> CheXpertTable:
        """``'frontal'``: the frontal images only; ``'all'``: every row."""
        if views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(VIEWS)}, got {views!r}")
        if views == "all":
            return self
        return self.select((self.frame["Frontal/Lateral"] == "Frontal").to_numpy())

    def labels(self, uncertainty: str | UncertaintyPolicy = DEFAULT_UNCERTAINTY,
               classes: Sequence[str] = CHEXPERT_CLASSES) -> np.ndarray:
        """The 0/1/NaN labels of ``classes`` (columns in that order) under ``uncertainty``."""
        columns = [CHEXPERT_CLASSES.index(name) for name in classes]
        return apply_uncertainty(self.values[:, columns], classes, uncertainty)

    def label_list(self, task: str | Task = "chexpert5",
                   uncertainty: str | UncertaintyPolicy = DEFAULT_UNCERTAINTY) -> CheXpertLabelList:
        """The rows as a label list of ``task``'s classes (names = CSV ``Path``).

        ``uncertainty`` must give a policy for each observation the task reads
        (e.g. only "No Finding" for ``abnormal``).
        """
        task = check_task(task, "chexpert")
        policy = parse_uncertainty(uncertainty)
        native = np.full(self.values.shape, np.nan, dtype=np.float32)
        needed = task.source_classes("chexpert")
        columns = [CHEXPERT_CLASSES.index(name) for name in needed]
        native[:, columns] = apply_uncertainty(self.values[:, columns], needed, policy)
        return CheXpertLabelList(
            self.paths, task_labels(native, "chexpert", task), task.class_names, self.source, lines=self.lines
        )


@dataclass
class CheXpertLabelList(LabelList):
    """A :class:`~paddle_chexnet.data.label_lists.LabelList` whose names are CheXpert CSV paths.

    Attributes:
        lines (list[int]): each row's line in :attr:`source` (for error messages). Default: [] (unknown).
    """

    lines: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lines = [int(n) for n in self.lines]
        if self.lines and len(self.lines) != len(self.names):
            raise ValueError(f"{len(self.lines)} line numbers for {len(self.names)} rows")

    def line_of(self, row: int) -> int | None:
        return self.lines[row] if self.lines else None

    def subset(self, names: Iterable[str]) -> CheXpertLabelList:
        """The rows for ``names``, in that order, keeping their line numbers."""
        row = {name: i for i, name in enumerate(self.names)}
        names = list(names)
        missing = [n for n in names if n not in row]
        if missing:
            raise KeyError(f"{len(missing)} names not in {self.source or 'label list'}, first: {missing[:5]}")
        rows = [row[n] for n in names]
        lines = [self.lines[i] for i in rows] if self.lines else []
        return CheXpertLabelList(names, self.labels[rows], self.class_names, self.source, lines=lines)


def _blank(fields: Sequence[str]) -> bool:
    return not any(cell.strip() for cell in fields)


def _cells_by_csv_module(path: Path, text: str) -> tuple[list[int], list[list[str]]]:
    """``(line, fields)`` of every non-blank record (header included), by the csv module.

    Used for files with quotes, where a field may span lines: the csv module
    gives each record's exact first line.
    """
    lines, records = [], []
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    try:
        for fields in reader:
            if fields and not _blank(fields):
                lines.append(line)
                records.append(fields)
            line = reader.line_num + 1
    except csv.Error as exc:
        raise CheXpertCSVError(f"{path} line {reader.line_num}: {exc}") from None
    return lines, records


def _read_cells(path: Path) -> tuple[int, list[str], pd.DataFrame, np.ndarray]:
    """The header's line and fields, the rows' cells (object strings) and each row's 1-based file line.

    Stanford's CSVs have no quotes, so each line is a record: its fields are
    counted from its commas, every row is checked to have the header's width,
    and pandas' C reader (fast on 223,414 rows) tokenises. The count comes
    first because pandas fills the missing cells of a short row with empty
    strings, which here would silently mean "not mentioned". A file with quotes
    goes through the csv module instead.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CheXpertCSVError(f"{path}: not UTF-8 text ({exc}); is this a CheXpert CSV?") from None
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    # quotes (a field may span lines) or old Mac line ends: let the csv module find the records
    by_csv_module = '"' in text or "\r" in text.replace("\r\n", "\n")
    if by_csv_module:
        line_list, records = _cells_by_csv_module(path, text)
        widths = [len(fields) for fields in records]
    else:
        line_list = [i for i, line in enumerate(physical, start=1) if line.strip()]
        widths = [physical[i - 1].count(",") + 1 for i in line_list]
    if not line_list:
        raise CheXpertCSVError(f"{path}: empty file; expected Stanford's header {','.join(CSV_COLUMNS)}")
    width = widths[0]
    for line, count in zip(line_list[1:], widths[1:]):
        if count != width:
            raise CheXpertCSVError(
                f"{path} line {line}: {count} fields, the header (line {line_list[0]}) has {width}; a short row "
                "would leave observations empty (not mentioned), so every row must have every column"
            )
    if by_csv_module:
        header, cells = records[0], pd.DataFrame(records[1:], columns=range(width), dtype=object)
    else:
        # skip_blank_lines=False: pandas' row i is file line i + 1
        everything = pd.read_csv(io.StringIO(text), header=None, names=range(width), dtype=object, na_filter=False,
                                 skip_blank_lines=False, quoting=csv.QUOTE_NONE)
        rows = np.asarray(line_list) - 1
        header = everything.iloc[rows[0]].tolist()
        cells = everything.iloc[rows[1:]].reset_index(drop=True)
    return line_list[0], [name.strip() for name in header], cells, np.asarray(line_list[1:], dtype=np.int64)


def _check_header(path: Path, line: int, header: Sequence[str]) -> list[int]:
    """Position of each of CSV_COLUMNS in ``header`` (on file line ``line``); errors name the column."""
    known = set(CSV_COLUMNS)
    for i, name in enumerate(header):
        if name not in known:
            raise CheXpertCSVError(
                f"{path} line {line}, column {i + 1}: unknown column {name!r}; a CheXpert CSV has the columns "
                f"{', '.join(CSV_COLUMNS)}"
            )
    for i, name in enumerate(header):
        if name in header[:i]:
            raise CheXpertCSVError(f"{path} line {line}, column {i + 1}: column {name!r} appears twice")
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise CheXpertCSVError(
            f"{path} line {line}: missing column(s) {', '.join(missing)}; expected Stanford's train.csv / valid.csv "
            f"header ({','.join(CSV_COLUMNS)})"
        )
    return [list(header).index(name) for name in CSV_COLUMNS]


def _label_value(text: str) -> float | None:
    """1, 0, -1 or NaN (empty: not mentioned) for a stripped cell; ``None`` for anything else."""
    if not text:
        return float("nan")
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number in _VALUES else None


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def read_chexpert_csv(path: str | Path, views: str = "all") -> CheXpertTable:
    """Read and check a CheXpert CSV (Stanford's ``train.csv`` / ``valid.csv`` format).

    Every row is checked before anything is returned: the number of fields, the
    header's columns (any order; none unknown, missing or repeated), each
    observation being ``1.0``, ``0.0``, ``-1.0`` or empty (``1``, ``0``, ``-1``
    also accepted), ``Frontal/Lateral`` being ``Frontal`` or ``Lateral``, and no
    ``Path`` repeated or empty. Blank lines are skipped.

    Args:
        path (str | Path): the CSV.
        views (str, optional): ``'frontal'`` keeps the frontal images, ``'all'`` every row
            (rows of the other view are checked too). Default: 'all'.

    Returns:
        CheXpertTable: the rows in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        CheXpertCSVError: the first problem, e.g.
            ``valid.csv line 17, column 'Edema': '2.0' is not a CheXpert label (...)``.
    """
    path = Path(path)
    if views not in VIEWS:
        raise ValueError(f"views must be one of {', '.join(VIEWS)}, got {views!r}")
    if not path.is_file():
        raise FileNotFoundError(f"CheXpert CSV not found: {path}")
    header_line, header, cells, lines = _read_cells(path)
    order = _check_header(path, header_line, header)
    if not len(cells):
        raise CheXpertCSVError(f"{path}: a header and no rows")
    cells = cells.iloc[:, order]
    cells.columns = list(CSV_COLUMNS)

    def fail(row: int, column: str, message: str) -> CheXpertCSVError:
        return CheXpertCSVError(f"{path} line {lines[row]}, column {column!r}: {message}")

    def factorized(column: str) -> tuple[np.ndarray, list[str]]:
        # a column holds a handful of distinct strings: check those, not every cell
        codes, uniques = pd.factorize(cells[column].to_numpy())
        return codes, [str(u).strip() for u in uniques]

    values = np.empty((len(cells), len(CHEXPERT_CLASSES)), dtype=np.float32)
    for c, name in enumerate(CHEXPERT_CLASSES):
        codes, uniques = factorized(name)
        parsed = []
        for code, text in enumerate(uniques):
            number = _label_value(text)
            if number is None:
                raise fail(_first(codes == code), name, f"{text!r} is not a CheXpert label (1.0 positive, "
                                                          "0.0 negative, -1.0 uncertain, or empty: not mentioned)")
            parsed.append(number)
        values[:, c] = np.asarray(parsed, dtype=np.float32)[codes]
    codes, uniques = factorized("Frontal/Lateral")
    for code, text in enumerate(uniques):
        if text not in ("Frontal", "Lateral"):
            raise fail(_first(codes == code), "Frontal/Lateral", f"{text!r} is neither 'Frontal' nor 'Lateral'")
    frame = pd.DataFrame({"Path": [str(cell).strip() for cell in cells["Path"].to_numpy()]})
    for column in META_COLUMNS[1:]:
        codes, uniques = factorized(column)
        frame[column] = np.asarray(uniques, dtype=object)[codes]
    paths = frame["Path"]
    bad = _first((paths == "").to_numpy())
    if bad is not None:
        raise fail(bad, "Path", "empty; each row needs its image's path relative to the CheXpert root")
    bad = _first(paths.duplicated(keep="first").to_numpy())
    if bad is not None:
        first = int(lines[_first((paths == paths.iloc[bad]).to_numpy())])
        raise fail(bad, "Path", f"{paths.iloc[bad]} is listed twice (first on line {first})")
    frame["line"] = lines
    return CheXpertTable(frame, values, str(path)).with_views(views)


def read_chexpert_labels(path: str | Path, task: str | Task = "chexpert5",
                         uncertainty: str | UncertaintyPolicy = DEFAULT_UNCERTAINTY,
                         views: str = "frontal") -> CheXpertLabelList:
    """Read a CheXpert CSV (:func:`read_chexpert_csv`) into a label list of ``task``'s classes.

    Args:
        path (str | Path): the CSV.
        task (str | Task, optional): ``'chexpert5'``, ``'chexpert14'`` or ``'abnormal'``. Default: 'chexpert5'.
        uncertainty (str | UncertaintyPolicy, optional): see :func:`parse_uncertainty`. Default: 'paper'.
        views (str, optional): ``'frontal'`` or ``'all'``. Default: 'frontal'.

    Returns:
        CheXpertLabelList: names = the CSV ``Path``, labels float32 0/1/NaN, the task's class names.
    """
    return read_chexpert_csv(path, views).label_list(task, uncertainty)


def is_chexpert_csv(path: str | Path) -> bool:
    """Whether ``path``'s first line is a CheXpert header (``Path`` first, the 14 observations present).

    For commands that take either a CheXNet label list or a CheXpert CSV
    (``--label-list``); reads one line.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool(header) and header[0] == "Path" and set(CHEXPERT_CLASSES) <= set(header)


# --------------------------------------------------------------------------- #
# The folder, the split, the images.
# --------------------------------------------------------------------------- #
def find_chexpert_root(data_dir: str | Path) -> tuple[Path, Path]:
    """``(ROOT, ROOT/CheXpert-v1.0-small)`` (or ``CheXpert-v1.0``) for ``--data-dir``.

    ``data_dir`` may be ROOT (the folder the CSV paths are relative to) or the
    ``CheXpert-v1.0-small`` / ``CheXpert-v1.0`` folder itself.

    Raises:
        FileNotFoundError: no CheXpert folder there; or both, which is ambiguous (the message says
            how to pick one).
    """
    data_dir = Path(data_dir)
    if data_dir.name in CHEXPERT_FOLDERS and data_dir.is_dir():
        return data_dir.parent, data_dir
    found = [data_dir / name for name in CHEXPERT_FOLDERS if (data_dir / name).is_dir()]
    if len(found) > 1:
        raise FileNotFoundError(
            f"{data_dir} holds both {found[0].name}/ and {found[1].name}/; pass --data-dir {found[0]} or "
            f"--data-dir {found[1]} to choose"
        )
    if not found:
        raise FileNotFoundError(
            f"no CheXpert folder in {data_dir}: expected {' or '.join(f'{n}/' for n in CHEXPERT_FOLDERS)} with "
            "train.csv and valid.csv, as Stanford's archive unpacks; pass the folder that holds it as --data-dir"
        )
    return data_dir, found[0]


def chexpert_csv(data_dir: str | Path, split: str) -> Path:
    """Stanford's ``train.csv`` or ``valid.csv`` (``split`` ``'train'`` / ``'valid'``) under ``data_dir``."""
    if split not in CSV_SPLITS:
        raise ValueError(f"split must be one of {', '.join(CSV_SPLITS)}, got {split!r}")
    _, folder = find_chexpert_root(data_dir)
    path = folder / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; Stanford's {folder.name}/ holds train.csv and valid.csv")
    return path


def patient_of(path: str) -> str:
    """The ``patientNNNNN`` folder of a CheXpert path, or ``''``."""
    match = _PATIENT.search(path)
    return f"patient{match.group(1)}" if match else ""


def split_by_patient_chexpert(label_list: CheXpertLabelList, val_fraction: float = 0.1,
                              seed: int = 0) -> tuple[CheXpertLabelList, CheXpertLabelList]:
    """Split rows into (train, val) so that each patient (``patientNNNNN`` folder) is in one part only.

    Uses :func:`paddle_chexnet.data.nih.split_by_patient`: patients shuffled with
    ``numpy.random.default_rng(seed)``, assigned to val until it holds
    ``round(val_fraction * N)`` images or more; both parts keep the input order.

    Args:
        label_list (CheXpertLabelList): e.g. :func:`read_chexpert_labels` of train.csv.
        val_fraction (float, optional): share of images (whole patients) for val. Default: 0.1.
        seed (int, optional): shuffles the patients. Default: 0.

    Raises:
        CheXpertCSVError: a path has no ``patientNNNNN`` folder (the message names its line).
    """
    patients = []
    for row, name in enumerate(label_list.names):
        patient = patient_of(name)
        if not patient:
            line = label_list.line_of(row)
            where = f"{label_list.source} line {line}, column 'Path'" if line else label_list.source or "label list"
            raise CheXpertCSVError(
                f"{where}: {name} has no patientNNNNN folder, so the split by patient cannot place it"
            )
        patients.append(int(patient[len("patient"):]))
    train, val = split_by_patient(label_list.names, patients, val_fraction, seed)
    return label_list.subset(train), label_list.subset(val)


def missing_images(root: str | Path, label_list: LabelList) -> list[int]:
    """Rows of ``label_list`` whose image ``ROOT/<Path>`` is not a file."""
    root = Path(root)
    return [row for row, name in enumerate(label_list.names) if not (root / name).is_file()]


def chexpert_image_paths(root: str | Path, rows: LabelList | CheXpertTable) -> list[Path]:
    """``ROOT/<Path>`` of every row of a label list or a table (what an image cache or a predictor reads)."""
    root = Path(root)
    return [root / name for name in (rows.paths if isinstance(rows, CheXpertTable) else rows.names)]


class CheXpertDataset(ChestXray14Dataset):
    """CheXpert images with their labels: ``(image float32 array, labels float32 [C])`` per item.

    The same reader (:func:`~paddle_chexnet.data.images.read_xray`), transforms and
    attributes as :class:`~paddle_chexnet.data.datasets.ChestXray14Dataset`
    (``names`` are the CSV paths, ``paths`` the files, ``skipped`` the missing
    CSV paths), so training, evaluation and ``predict_dataset`` take it as they
    take the NIH dataset.

    Args:
        root (str | Path): the folder the CSV paths are relative to (see :func:`find_chexpert_root`).
        label_list (LabelList | str | Path): e.g. :func:`read_chexpert_labels`'s result, or a CSV to read
            with the defaults of :func:`read_chexpert_labels`.
        transform (Callable, optional): PIL image -> array. ``None`` returns the pixels. Default: None.
        skip_missing (bool, optional): drop rows whose image is not on disk (their paths are in
            :attr:`skipped`, with a warning) instead of raising. Default: False.
        reader (Callable, optional): path -> PIL image. Default: read_xray.

    Attributes:
        name_column (str): ``'Path'``, the header of the column that keys rows in outputs such as
            ``preds.csv`` (the NIH dataset's rows are keyed by ``Image Index``).

    Raises:
        MissingImagesError: images are missing and ``skip_missing`` is False; the message names the
            CSV, the line and the column ``Path`` of the first, the count, and ``--skip-missing``.
    """

    name_column = "Path"

    def __init__(
        self,
        root: str | Path,
        label_list: LabelList | str | Path,
        transform: Callable | None = None,
        skip_missing: bool = False,
        reader: Callable[[Path], Image.Image] = read_xray,
    ) -> None:
        root = Path(root)
        if not isinstance(label_list, LabelList):
            label_list = read_chexpert_labels(label_list)
        if not root.is_dir():
            raise FileNotFoundError(f"CheXpert root not found: {root}; pass the folder that holds "
                                    f"{' or '.join(f'{n}/' for n in CHEXPERT_FOLDERS)} as --data-dir")
        missing = missing_images(root, label_list)
        if missing and not skip_missing:
            first = missing[0]
            line = label_list.line_of(first) if isinstance(label_list, CheXpertLabelList) else None
            where = f"{label_list.source} line {line}, column 'Path'" if line else (label_list.source or "label list")
            raise MissingImagesError(
                f"{where}: image not found: {root / label_list.names[first]} ({len(missing)} of {len(label_list)} "
                f"listed images are missing under {root}). Check --data-dir (the folder that holds "
                f"{' or '.join(f'{n}/' for n in CHEXPERT_FOLDERS)}), or pass --skip-missing to use the images "
                "that are present"
            )
        absent = set(missing)
        index = {name: root / name for row, name in enumerate(label_list.names) if row not in absent}
        super().__init__(root, label_list, transform, skip_missing=skip_missing, image_index=index, reader=reader)

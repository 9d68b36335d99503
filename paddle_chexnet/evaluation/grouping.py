"""Which patient an image belongs to, read from its name, for resampling by patient.

Images of one patient are correlated (follow-up films of the same chest), so a
bootstrap that resamples images one by one understates the uncertainty; the
default unit is the patient. Two naming schemes are understood:

* NIH ChestX-ray14: ``PPPPPPPP_FFF.png`` (patient, follow-up number), with or
  without a folder: ``00000013_005.png`` -> ``00000013``.
* CheXpert: ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``
  (any prefix, or none: ``patient00001/study1/view1_frontal.jpg``) ->
  ``patient00001``. CheXpert's training and validation patients are numbered
  apart, so the folder name alone identifies the patient.

Any other name is an error that says to resample images instead
(``--bootstrap-unit image``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

UNITS: tuple[str, ...] = ("patient", "image")

_NIH = re.compile(r"(?:^|/)(\d{8})_\d{3}\.png$", re.IGNORECASE)
_CHEXPERT = re.compile(r"(?:^|/)(patient\d+)/study\d+/view\d+_[A-Za-z]+\.jpe?g$", re.IGNORECASE)


class PatientGroupingError(ValueError):
    """An image name from which no patient can be read; the message names it and the way out."""


def patient_of(name: str) -> str:
    """The patient of one image, from its NIH name or CheXpert path.

    Args:
        name (str): an image name or path (``/`` or ``\\`` separators).

    Returns:
        str: the patient: ``'00000013'`` (NIH) or ``'patient00001'`` (CheXpert).

    Raises:
        PatientGroupingError: the name follows neither scheme.

    Examples:
        >>> patient_of("00000013_005.png")
        '00000013'
        >>> patient_of("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
        'patient00001'
    """
    text = name.strip().replace("\\", "/")
    for pattern in (_NIH, _CHEXPERT):
        match = pattern.search(text)
        if match:
            return match.group(1)
    raise PatientGroupingError(
        f"cannot tell the patient of image {name!r}: expected an NIH name 'PPPPPPPP_FFF.png' "
        f"(e.g. 00000013_005.png) or a CheXpert path '.../patientNNNNN/studyN/viewN_frontal.jpg'; "
        f"use --bootstrap-unit image to resample images instead of patients"
    )


def group_codes(names: Sequence[str], unit: str = "patient") -> tuple[np.ndarray, int]:
    """One integer per image naming its resampling unit, and how many units there are.

    Args:
        names (Sequence[str]): image names, in the order of the score and label rows.
        unit (str, optional): ``'patient'`` (images of a patient share a code) or
            ``'image'`` (each image is its own unit). Default: 'patient'.

    Returns:
        tuple[numpy.ndarray, int]: int64 codes ``[N]`` in ``0 .. n_units - 1``, numbered
        in order of first appearance, and ``n_units``.

    Raises:
        ValueError: an unknown ``unit``.
        PatientGroupingError: ``unit='patient'`` and a name follows neither scheme.

    Examples:
        >>> group_codes(["00000001_000.png", "00000002_000.png", "00000001_001.png"])
        (array([0, 1, 0]), 2)
    """
    if unit not in UNITS:
        raise ValueError(f"unknown bootstrap unit {unit!r}; expected one of {', '.join(UNITS)}")
    if unit == "image":
        return np.arange(len(names), dtype=np.int64), len(names)
    index: dict[str, int] = {}
    codes = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        codes[i] = index.setdefault(patient_of(name), len(index))
    return codes, len(index)

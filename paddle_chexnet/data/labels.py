"""The 14 ChestX-ray14 findings, defined once, in CheXNet order.

Everything else in the package (metric names, CSV columns, plots, the model's
``class_names``) derives from :data:`CLASS_NAMES`.
"""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)


NUM_CLASSES: int = len(CLASS_NAMES)


# NIH's files spell some findings differently from the class list:
# BBox_List_2017.csv says "Infiltrate", Data_Entry_2017.csv writes
# "Pleural_Thickening" as in the list. Map every known spelling to ours.
LABEL_ALIASES: dict[str, str] = {
    "Infiltrate": "Infiltration",
    "Pleural Thickening": "Pleural_Thickening",
    "Pleural_thickening": "Pleural_Thickening",
}


def canonical_label(name: str) -> str:
    """Return the CheXNet spelling of a finding name, or raise ``KeyError``.

    Args:
        name (str): a finding name as written in an NIH file or by a user.

    Examples:
        >>> canonical_label("Infiltrate")
        'Infiltration'
    """
    stripped = name.strip()
    stripped = LABEL_ALIASES.get(stripped, stripped)
    if stripped not in CLASS_NAMES:
        raise KeyError(
            f"unknown finding {name!r}; expected one of {', '.join(CLASS_NAMES)}"
        )
    return stripped

"""Label vocabularies of the public datasets and how rendered findings map onto them.

A finding that a dataset has no label for is never rendered in that dataset's layout, so every label
file stays truthful: a label is 1 exactly when its finding was drawn.
"""

from __future__ import annotations

__all__ = [
    "CHRONIC",
    "NIH_BBOX_LABEL",
    "NIH_CLASSES",
    "NIH_LABEL",
    "PREVALENCE",
    "RSNA_OPACITY",
    "VINDR_CLASSES",
    "VINDR_CLASS_ID",
]

#: The 14 ChestX-ray14 labels in their canonical order and spelling.
NIH_CLASSES: tuple[str, ...] = (
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

#: Finding -> NIH label.
NIH_LABEL: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "effusion": "Effusion",
    "infiltration": "Infiltration",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "emphysema": "Emphysema",
    "fibrosis": "Fibrosis",
    "pleural_thickening": "Pleural_Thickening",
    "hernia": "Hernia",
}

#: Finding -> label used in ``BBox_List_2017.csv`` (8 classes; note "Infiltrate").
NIH_BBOX_LABEL: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "effusion": "Effusion",
    "infiltration": "Infiltrate",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
}

#: VinDr-CXR competition classes (``class_id`` -> ``class_name``); 14 is "No finding".
VINDR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)

#: Finding -> VinDr class id (ILD and Other lesion are not simulated).
VINDR_CLASS_ID: dict[str, int] = {
    "aortic_enlargement": 0,
    "atelectasis": 1,
    "calcification": 2,
    "cardiomegaly": 3,
    "consolidation": 4,
    "infiltration": 6,
    "pneumonia": 7,
    "nodule": 8,
    "mass": 8,
    "effusion": 10,
    "pleural_thickening": 11,
    "pneumothorax": 12,
    "fibrosis": 13,
}

#: Findings that make an RSNA image "Lung Opacity" (Target 1); any other rendered finding makes it
#: "No Lung Opacity / Not Normal".
RSNA_OPACITY: frozenset[str] = frozenset({"pneumonia", "consolidation"})

#: Findings that persist across a patient's follow-up images.
CHRONIC: frozenset[str] = frozenset(
    {
        "cardiomegaly",
        "emphysema",
        "fibrosis",
        "hernia",
        "pleural_thickening",
        "aortic_enlargement",
        "calcification",
        "mass",
        "nodule",
    }
)

_NIH_PREV = {
    "atelectasis": 0.12,
    "cardiomegaly": 0.12,
    "effusion": 0.13,
    "infiltration": 0.12,
    "mass": 0.09,
    "nodule": 0.1,
    "pneumonia": 0.1,
    "pneumothorax": 0.1,
    "consolidation": 0.1,
    "edema": 0.09,
    "emphysema": 0.09,
    "fibrosis": 0.09,
    "pleural_thickening": 0.09,
    "hernia": 0.08,
}

#: Per-layout finding prevalence (findings absent from a layout's dict never occur there).
PREVALENCE: dict[str, dict[str, float]] = {
    "nih": _NIH_PREV,
    "pacs": _NIH_PREV,
    "vindr": {
        "aortic_enlargement": 0.12,
        "atelectasis": 0.08,
        "calcification": 0.08,
        "cardiomegaly": 0.12,
        "consolidation": 0.08,
        "infiltration": 0.08,
        "pneumonia": 0.1,
        "nodule": 0.08,
        "mass": 0.05,
        "effusion": 0.1,
        "pleural_thickening": 0.1,
        "pneumothorax": 0.08,
        "fibrosis": 0.08,
    },
    "rsna": {
        "pneumonia": 0.26,
        "consolidation": 0.1,
        "cardiomegaly": 0.08,
        "effusion": 0.08,
        "nodule": 0.06,
        "mass": 0.05,
        "atelectasis": 0.06,
        "pleural_thickening": 0.05,
        "emphysema": 0.05,
        "fibrosis": 0.05,
        "pneumothorax": 0.04,
    },
    "siim": {
        "pneumothorax": 0.3,
        "cardiomegaly": 0.05,
        "effusion": 0.05,
        "nodule": 0.04,
        "atelectasis": 0.04,
        "emphysema": 0.04,
    },
}

"""steelseg's light ground floor: the Severstal formats and pure functions every other package shares.

Importing any module here needs only NumPy, pandas and OpenCV (scikit-learn, iterative-stratification,
Hydra and OmegaConf are imported inside the few functions that use them), so the submission validator and
the metric run in a Kaggle kernel or on a line PC without torch: ``python -m common.submission validate``,
``python -m common.metrics``. ``common`` imports no other steelseg package.
"""

__all__ = [
    "constants",
    "errors",
    "devices",
    "io",
    "config",
    "rle",
    "annotations",
    "images",
    "layout",
    "dataset",
    "folds",
    "metrics",
    "submission",
    "oof",
    "preprocess",
    "inspections",
    "data_setup",
    "sampling",
    "viz",
]

"""Dash app over the SQLite inspections store: counts, defect rate over time (live), image strips, uploads,
truth-vs-prediction with TP/FP/FN, exports and in-process predictions on demand. Run ``python -m dashboard``."""

__all__ = ["app", "images", "importer", "layout", "predict", "store", "upload", "views"]

"""Dash app over the SQLite inspections store: counts, defect rate over time (live), zoomable image strips, a
filterable image grid, a review loop exporting a Kaggle train.csv, uploads (submissions and images),
truth-vs-prediction with TP/FP/FN, precision/recall, model vs model, exports and in-process predictions on
demand. Run ``python -m dashboard``."""

__all__ = ["app", "images", "importer", "layout", "predict", "review", "store", "upload", "views"]

"""Dash app over the SQLite inspections store: counts, charts, samples, uploads, scoring, predictions on demand."""

__all__ = ["app", "importer", "predict", "upload", "views"]

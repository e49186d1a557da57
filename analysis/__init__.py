"""Reports for people: the EDA report (``python -m analysis.eda``) and the CV report (``python -m analysis.report``).
Imports ``common`` and ``ensemble``; mask drawing is ``common.viz``."""

__all__ = ["eda", "report"]

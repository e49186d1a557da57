"""Reports for people: the EDA report (``python -m analysis.eda``), the CV report (``python -m analysis.report``)
and the image drawing they and the dashboard share (``analysis.viz``). Imports ``common`` and ``ensemble``."""

__all__ = ["eda", "report", "viz"]

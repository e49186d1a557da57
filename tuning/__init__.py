"""Choosing the rules from out-of-fold predictions: the ensemble OOF predicted the way ``infer.py`` predicts
(``oof``) and the exact threshold search on its histograms (``threshold_search``)."""

__all__ = ["oof", "threshold_search"]

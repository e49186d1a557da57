"""The scoring rules: how class and pixel probabilities become masks, one object shared by validation, the threshold
search and both runtimes (rules and thresholds files, gating modes, TTA flips, reducers, post-processing).

NumPy only (a tensor is handled where one is given, never imported): the light core with ``common``, checked by
``mypy --strict``.
"""

__all__ = ["arrays", "rules", "gating", "postprocess", "reduce", "tta"]

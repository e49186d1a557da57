"""Predicting with the ensemble: the one torch-free loop (``core.GatedEnsemble``: members -> TTA -> reduce -> gate
-> post-process -> rows) with its two runtimes (PyTorch checkpoints: ``members``, ``predict``; an ONNX bundle:
``onnx_runtime``, ``bundle_check``), the job behind ``infer.py`` (``run``, ``settings``, ``pipeline``, ``timing``), and
pseudo-labels from its predictions (``pseudo_label``).

``core``, ``onnx_runtime``, ``bundle_check``, ``run``, ``settings``, ``pipeline`` and ``timing`` need no torch: with
``scoring`` and ``common`` they are what a deploy bundle runs on.
"""

__all__ = [
    "core",
    "members",
    "predict",
    "onnx_runtime",
    "bundle_check",
    "run",
    "settings",
    "pipeline",
    "timing",
    "pseudo_label",
]

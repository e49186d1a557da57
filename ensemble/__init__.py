"""Everything after training: members from checkpoints -> preprocessing -> TTA -> reduce -> gating ->
post-processing -> submission; the threshold search and the ensemble OOF; the deploy bundle (ONNX export,
the ONNX Runtime predictor, HTTP serving).

``arrays``, ``core``, ``tta``, ``reduce``, ``rules``, ``gating``, ``postprocess``, ``onnx_runtime`` and ``serve``
need no torch (NumPy, OpenCV, onnxruntime; FastAPI for ``serve``): they are what a deploy bundle runs on.
"""

__all__ = [
    "arrays",
    "core",
    "rules",
    "gating",
    "postprocess",
    "reduce",
    "tta",
    "members",
    "predict",
    "run",
    "settings",
    "threshold_search",
    "export",
    "onnx_runtime",
    "serve",
]

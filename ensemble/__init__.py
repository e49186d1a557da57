"""Everything after training: members from checkpoints -> preprocessing -> TTA -> reduce -> gating ->
post-processing -> submission; the threshold search and the ensemble OOF.

``rules``, ``gating`` and ``postprocess`` need only NumPy and OpenCV (no torch), for the ONNX runtime.
"""

__all__ = ["rules", "gating", "postprocess", "reduce", "tta", "members", "predict", "run", "settings",
           "threshold_search"]

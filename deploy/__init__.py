"""Taking the ensemble off this checkout: the ONNX export of trained members into a bundle (``export``: flips in the
graph, INT8, parity report) and the HTTP service over a bundle (``serve``). A bundle runs through
``ensemble.onnx_runtime``, without torch."""

__all__ = ["export", "serve"]

"""Stage 1: a timm multilabel classifier saying which of the four defect classes each image shows.

``make_stage`` (``configs/stage/classifier.yaml``) hands the engine its model, data, loss and metric.
Imports ``common`` and ``engine``, never ``segmenter``."""

__all__ = ["data", "metrics", "model", "stage"]

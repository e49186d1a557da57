"""Stage 2: smp segmenters (U-Net, FPN, U-Net++) that outline each of the four defect classes, and the joint
two-headed model (segmentation decoder + image-level class head on one encoder).

``make_stage`` (``configs/stage/segmenter.yaml``) hands the engine its model, data, loss and metric.
Imports ``common`` and ``engine``, never ``classifier``."""

__all__ = ["data", "losses", "metrics", "model", "stage"]

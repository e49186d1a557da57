"""Stage 1: a timm multilabel classifier saying which of the four defect classes each image shows."""

"""The embedded synthetic steel generator: Kaggle-layout datasets for the demo, the tests and CPU recipes.

``python -m synthetic --out DIR --train N --test M --seed S [--shapes-from CSV]``.
"""

from synthetic.generator import (
    VERSION,
    MaskBank,
    SyntheticDataError,
    draw_mask,
    ensure_dataset,
    generate_dataset,
    make_image_ids,
    make_sample,
    read_metadata,
    render_defect,
    sample_classes,
    sample_rng,
)

__all__ = [
    "VERSION",
    "MaskBank",
    "SyntheticDataError",
    "draw_mask",
    "ensure_dataset",
    "generate_dataset",
    "make_image_ids",
    "make_sample",
    "read_metadata",
    "render_defect",
    "sample_classes",
    "sample_rng",
]

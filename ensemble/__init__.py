"""Everything after training: checkpoints -> TTA -> reduce -> gating -> post-processing -> submission."""

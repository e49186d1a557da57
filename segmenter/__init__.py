"""Stage 2: smp segmenters (U-Net, FPN, U-Net++) that outline each of the four defect classes."""

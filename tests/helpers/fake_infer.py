"""Stand-in for infer.py in tests: predicts a class-3 box on every image of a folder (old format)."""

import csv
import sys
from pathlib import Path

images, submission = Path(sys.argv[1]), Path(sys.argv[2])
if len(sys.argv) > 3 and sys.argv[3] == "--fail":
    sys.exit("fake_infer: asked to fail")
with submission.open("w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["ImageId_ClassId", "EncodedPixels"])
    for name in sorted(p.name for p in images.iterdir()):
        for class_id in (1, 2, 3, 4):
            # columns 100..139, rows 10..59 of a 256x1600 image
            rle = " ".join(f"{col * 256 + 11} 50" for col in range(100, 140)) if class_id == 3 else ""
            writer.writerow([f"{name}_{class_id}", rle])

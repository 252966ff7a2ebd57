"""`pipeline dedup`: the paper's semantic-hash de-duplication, with candidates verified on the
images themselves.

The passes, one module each, in the order they run (`stage` drives them):
- `crops`: every record's 32x32 center crop and whole-frame thumbnails, streamed to disk
  (`resizing`: the fast area downscales it makes them with);
- `autoencoder`: the 3072-128-3072 de-noising autoencoder and its training (torch);
- `hashing`: every crop's 128-bit code, in numpy (no torch needed to hash);
- `grouping`: candidate pairs from nearby codes, groups around anchors without chaining,
  settled by vote so one wrong link moves nobody;
- `verify`: the verdict on a candidate pair, and the label-free threshold calibration
  (with `reuploads`, the kinds of change a re-upload brings);
- `keypoints`: every image's ORB keypoints, and the geometric check of borderline pairs;
- `results`: the manifest, groups.jsonl, duplicates.txt and the sheets a person checks.
"""

from pipeline.dedup.stage import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CODE_NOISE,
    DEFAULT_DROPOUT,
    DEFAULT_EPOCHS,
    DEFAULT_MIN_STEPS,
    DEFAULT_NOISE,
    DEFAULT_RADIUS,
    DEFAULT_TRAIN_SAMPLES,
    MAX_RADIUS,
    TRAINING_DEFAULTS,
    dedup,
)

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CODE_NOISE", "DEFAULT_DROPOUT", "DEFAULT_EPOCHS",
           "DEFAULT_MIN_STEPS", "DEFAULT_NOISE", "DEFAULT_RADIUS", "DEFAULT_TRAIN_SAMPLES",
           "MAX_RADIUS", "TRAINING_DEFAULTS", "dedup"]

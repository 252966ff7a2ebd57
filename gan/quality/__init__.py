"""Sample quality the way the field measures it: FID, KID and precision/recall of a generator's
samples against real images, in feature space.

`inception` is the FID network (its own Inception-v3 that loads pytorch-fid's weight file),
`extractors` finds and checks the feature extractor a user names, `statistics` streams features
into float64 sums, `scores` holds the maths, `cache` keeps the real images' statistics per data
set and extractor, and `evaluate` is the driver behind `gan metrics` and `gan train
--metrics-every`.
"""

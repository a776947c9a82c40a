"""Omniglot from scratch on a CPU: the recipe of the README's Training section.

Put Omniglot in dataset/ first (python -m tools.datasets omniglot, or --zips images_background_small1 for the
5-alphabet minimal split the measured figures used). Every pair of a batch of 16 characters of one alphabet is
scored, each character also turned by quarter turns as 3 more characters and each of those mirrored as 4 more, with
small stroke distortions and the one-shot ranking term; the small four-block conv4 with 96 channels a block at 48x48,
each drawing framed by its ink, Adam.
"""
pretrained = False
input_shape = [48, 48]  # a 3x3 map of a drawing: 1.5 points above 32x32's 2x2 and better calibrated
crop_to_ink = True  # a character fills the 48x48 input, not a third of it: +2 to 3 points on unseen alphabets
backbone = "conv4_96"  # 252 k weights: 80% on unseen alphabets, 2 points above 64 channels in 1.4x the minutes
split_by = "class"
pairing = "batch"
batch_size = 64
images_per_class = 4
negatives = "same_group"
augmentation = "strokes"
class_rotations = True
class_mirrors = True  # 976 training classes from small1's 122 characters: +4 points on unseen alphabets
loss = "bce_ranking"
num_workers = 0  # on 2 CPU cores the main process loads as fast as workers or faster; with a GPU, use workers
Epoch = 100  # 19 min on a 2-core AMD EPYC limited to AVX2, fp32; 140 do not pay (docs/results.md)

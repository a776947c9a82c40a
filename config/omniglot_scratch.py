"""Omniglot from scratch on a CPU: the recipe of the README's Training section.

Put Omniglot in dataset/ first (python -m tools.datasets omniglot, or --zips images_background_small1 for the
5-alphabet minimal split the measured figures used). Every pair of a batch of 16 characters of one alphabet is
scored, each character also turned by quarter turns as 3 more characters, each of those mirrored as 4 more and each
of the 8 slanted like italics as 8 more, with small stroke distortions and the one-shot ranking term; the small
four-block conv4 with 96 channels a block at 48x48, each drawing framed by its ink, SGD, 150 epochs.
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
class_mirrors = True  # each character's 4 turns mirrored as 4 more classes: +4 points on unseen alphabets
class_slant = 30  # each of those 8 sheared 30 degrees as 8 more, 1,952 classes: ECE 0.016 against 0.022
loss = "bce_ranking"
optimizer_type = "sgd"  # Nesterov momentum, weight decay 5e-4 (auto): 84.4-85.2% where Adam's runs scored 83.3-84.2%
Init_lr = 0.05  # 0.1 scored 82.9% (docs/results.md#sgd-round-eighteen)
num_workers = 0  # on 2 CPU cores the main process loads as fast as workers or faster; with a GPU, use workers
Epoch = 150  # 5,700 steps, 26 min on a 2-core AMD EPYC (AVX2, fp32); 300 add half a point in twice the minutes

"""Omniglot from scratch on a CPU: the recipe of the README's Training section.

Put Omniglot in dataset/ first (python -m tools.datasets omniglot, or --zips images_background_small1 for the
5-alphabet minimal split the measured figures used). Every pair of a batch of 16 characters of one alphabet is
scored, each character also turned by quarter turns as 3 more characters and each of those mirrored as 4 more, with
small stroke distortions and the one-shot ranking term; ResNet18 at 64x64, Adam.
"""
pretrained = False
input_shape = [64, 64]
backbone = "resnet18"
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
Epoch = 60  # 23-54 min on 2-core AVX-512 CPUs limited to AVX2, fp32; more do not pay here (docs/results.md)

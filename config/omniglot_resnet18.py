"""Omniglot from scratch with ResNet18 at 64x64: the recipe before conv4 (78-80% on the yardstick in 33-54 minutes on
2-core CPUs limited to AVX2, fp32), and the step the speed figures of docs/results.md measure.

The same class batches, augmentation and ranking term as config/omniglot_scratch.py; a network of 11 M weights
instead of 113 k.
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

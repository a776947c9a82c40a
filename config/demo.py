"""The demo (python train.py --demo): the embedded glyph set, from scratch, in minutes on a CPU.

Every pair of a batch of 16 characters of one script is scored, each character also turned by quarter turns as
3 more characters, with small stroke distortions and the one-shot ranking term; ResNet18 up to its layer3 at 32x32,
each glyph framed by its ink.
"""
dataset_path = "dataset/glyphs"
save_dir = "logs/demo"
overwrite = True  # a new demo replaces the last one
input_shape = [32, 32]
crop_to_ink = True  # each glyph framed by its ink: ECE 0.027 on the unseen scripts against 0.053, the same accuracy
pretrained = False
backbone = "resnet18_layer3"  # a 2x2 map of a 32x32 glyph where all of resnet18 leaves 1x1: 82% against 67%
optimizer_type = "adam"
Init_lr = 1e-3
weight_decay = 0.0
pairing = "batch"
batch_size = 64
images_per_class = 4
class_rotations = True
negatives = "same_group"
augmentation = "strokes"
loss = "bce_ranking"
Epoch = 20
split_by = "class"
best_by = "oneshot"
num_workers = 0
save_period = 100

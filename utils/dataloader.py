"""Listing images by class, splitting them, and sampling labelled pairs (or whole class batches) for training."""
import os
import random
import sys
from collections import defaultdict

import torch
from torch.utils.data import Dataset

from utils.augment import BatchAutoAugment, PerImage, train_transform
from utils.errors import DataError, ImageError
from utils.images import eval_transform, is_image_file, load_image, verify_image

SPLITS = ("image", "class")
NEGATIVES = ("any", "same_group")
PAIRINGS = ("items", "batch")


def class_groups(class_names):
    """The group of each class name: its alphabet for "alphabet/character" (Omniglot), "" for own data."""
    return [name.rsplit("/", 1)[0] if "/" in name else "" for name in class_names]


def indices_by_class(labels):
    """{label: [indices of its images, in order]} for a list of per-image labels."""
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    return by_class


def scan(folder, broken):
    """(subfolder names, file names) of `folder`, sorted; hidden folders are left out (hidden files are
    listed, to be counted as skipped). A symlink that dangles or loops is neither; its path and problem
    are appended to `broken`.
    """
    folders, files = [], []
    for entry in os.scandir(folder):
        try:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    folders.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
            elif entry.is_symlink():
                broken.append(f"{entry.path} (dangling symlink)")
        except OSError as e:  # a symlink loop
            broken.append(f"{entry.path} ({e.strerror})")
    return sorted(folders), sorted(files)


def warn_skipped(what, items):
    """One warning line on stderr naming up to 5 skipped `items`."""
    if items:
        print(f"Warning: skipped {len(items)} {what}: " + "; ".join(items[:5]) + (" ..." if len(items) > 5 else ""),
              file=sys.stderr)


def list_images(dataset_path, train_own_data=False, folder="images_background", warn=True):
    """List `dataset_path/folder` by class.

    Omniglot layout: `<alphabet>/<character>/<image>`, one class per character.
    Own data (`train_own_data`): `<class>/<image>`.
    Returns (paths, labels, class_names, skipped) where `skipped` counts the files left out: hidden
    and non-image files, and images that fail a cheap check (`verify_image`: header, PNG checksums),
    which `warn` names on stderr together with class folders that hold no image. Classes are sorted
    by name so labels are stable.
    """
    root = os.path.join(dataset_path, folder)
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    broken = []
    if train_own_data:
        class_dirs = [(name, os.path.join(root, name)) for name in scan(root, broken)[0]]
    else:
        class_dirs = [
            (f"{alphabet}/{character}", os.path.join(root, alphabet, character))
            for alphabet in scan(root, broken)[0]
            for character in scan(os.path.join(root, alphabet), broken)[0]
        ]
    paths, labels, class_names, skipped, unreadable, empty = [], [], [], 0, [], []
    for name, class_dir in class_dirs:
        files = scan(class_dir, broken)[1]
        images = []
        for path in (os.path.join(class_dir, f) for f in files if is_image_file(f)):
            try:
                verify_image(path)
                images.append(path)
            except ImageError as e:
                unreadable.append(str(e))
        skipped += len(files) - len(images)
        if not images:
            empty.append(name)
            continue
        label = len(class_names)
        class_names.append(name)
        paths += images
        labels += [label] * len(images)
    skipped += len(broken)
    if warn:
        warn_skipped("unreadable image(s)", unreadable)
        warn_skipped("broken symlink(s)", broken)
        warn_skipped("class folder(s) without images", empty if paths else [])
    if not paths:
        layout = "<class>/<image>" if train_own_data else "<alphabet>/<character>/<image>"
        found = f"{len(class_dirs)} class folders, none with a readable image" if class_dirs else "no class folders"
        raise DataError(f"{root}: no images found ({found}; expected {layout} with train_own_data={train_own_data})")
    return paths, labels, class_names, skipped


def split_by_image(labels, train_ratio=0.9, seed=0):
    """Shuffle image indices with a fixed seed; first `train_ratio` train, rest validation."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * train_ratio)
    return order[:cut], order[cut:]


def split_by_class(labels, train_ratio=0.9, seed=0):
    """Shuffle classes with a fixed seed; images of the first `train_ratio` of classes train, rest validation."""
    classes = sorted(set(labels))
    random.Random(seed).shuffle(classes)
    train_classes = set(classes[: int(len(classes) * train_ratio)])
    train = [i for i, label in enumerate(labels) if label in train_classes]
    val = [i for i, label in enumerate(labels) if label not in train_classes]
    return train, val


def split_indices(labels, split_by="image", train_ratio=0.9, seed=0):
    """(train indices, validation indices) by image (the original) or by class (unseen classes)."""
    if split_by == "image":
        return split_by_image(labels, train_ratio, seed)
    if split_by == "class":
        return split_by_class(labels, train_ratio, seed)
    raise ValueError(f"unknown split_by {split_by!r}; choose one of {', '.join(SPLITS)}")


def batch_transform(input_shape, train=True, augmentation="autoaugment"):
    """What turns a list of decoded uint8 images into one uint8 (N, 3, H, W) batch: the training
    `augmentation` (AutoAugment batched), or the validation resize when not `train`."""
    if train and augmentation == "autoaugment":
        return BatchAutoAugment(input_shape)
    return PerImage(train_transform(input_shape, augmentation) if train else eval_transform(input_shape))


class SiameseDataset(Dataset):
    """Each item is two labelled pairs: (a, b) of one class -> 1, (c, d) of two classes -> 0.

    The positive class has at least 3 images; a, b, c are distinct images of it and d is an
    image of another class: any other class (`negatives` "any", the original), or one of the same
    group (`negatives` "same_group": the same alphabet, as Lake's one-shot task asks; `groups[label]`
    names each label's group, and a class alone in its group falls back to any other class).
    Items are random draws (the index only sets the epoch length), so every DataLoader worker and
    rank must seed `random` differently.
    Returns images (2 pairs, 2 sides, 3, H, W) uint8 (a quarter of the float bytes to collate, share
    between processes and copy to the GPU; `split_pairs` makes them float) and labels (2,) float32.
    """

    def __init__(self, paths, labels, input_shape, train=True, augmentation="autoaugment", name="dataset",
                 groups=None, negatives="any"):
        self.paths, self.labels, self.input_shape = list(paths), list(labels), list(input_shape)
        self.transform = batch_transform(input_shape, train, augmentation)
        self.by_class = {label: [self.paths[i] for i in rows] for label, rows in indices_by_class(labels).items()}
        self.classes = sorted(self.by_class)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.positive_classes = [c for c in self.classes if len(self.by_class[c]) >= 3]
        self.group_mates = {}  # class -> the other classes of its group, where it has any
        if negatives == "same_group" and groups is not None:
            members = defaultdict(list)
            for c in self.classes:
                members[groups[c]].append(c)
            self.group_mates = {c: [m for m in members[groups[c]] if m != c] for c in self.classes
                                if len(members[groups[c]]) > 1}
        if len(self.classes) < 2:
            raise DataError(f"the {name} split has {len(self.classes)} class; pairs need at least 2 classes")
        if not self.positive_classes:
            raise DataError(
                f"the {name} split has no class with at least 3 images ({len(self.paths)} images in "
                f"{len(self.classes)} classes); add images, or use split_by class"
            )

    def __len__(self):
        return len(self.paths)

    def sample_pair(self):
        """Draw a positive and a negative pair of paths: ((a, b), (c, d))."""
        positive = random.choice(self.positive_classes)
        a, b, c = random.sample(self.by_class[positive], 3)
        if positive in self.group_mates:
            other = random.choice(self.group_mates[positive])
        else:
            index = random.randrange(len(self.classes) - 1)  # uniform over the other classes, no rejection loop
            other = self.classes[index + (index >= self.class_index[positive])]
        d = random.choice(self.by_class[other])
        return (a, b), (c, d)

    def __getitems__(self, indices):
        """A whole batch of items: every image is decoded once, then all are augmented together.

        Greyscale PNGs stay one channel until the end (channel-wise ops, a third of the work).
        """
        drawn = []
        for _ in indices:
            positive, negative = self.sample_pair()
            items = [(positive, 1.0), (negative, 0.0)]
            random.shuffle(items)
            drawn.append(items)
        paths = [path for items in drawn for pair, _ in items for path in pair]
        images = self.transform([load_image(path, keep_grey=True) for path in paths])
        images = images.unflatten(0, (len(drawn), 2, 2))
        return [(images[k], torch.tensor([label for _, label in items])) for k, items in enumerate(drawn)]

    def __getitem__(self, index):
        return self.__getitems__([index])[0]


class ClassBatches(Dataset):
    """Each item is one whole training batch for `pairing = "batch"`: `batch_size // images_per_class`
    classes with `images_per_class` images each, of which the loop scores every pair.

    The classes of a batch come from one group (alphabet) with `negatives` "same_group", drawn with
    probability by the group's size; groups with a single class are left out, and when none has two
    classes all classes form one group. A class with fewer images gives all it has (at least 2).
    `class_rotations` True adds each class turned by 90, 180 and 270 degrees as three new classes (in
    a group of their own per turn): a turned character is another character, four times the classes.
    Items are random draws; `len` is the number of steps in an epoch, about one pass over the images.
    Returns images (B, 3, H, W) uint8 and their class labels (B,) int64; a turned class is labelled
    label + turns * (largest label + 1).
    """

    def __init__(self, paths, labels, input_shape, batch_size, images_per_class=4, augmentation="autoaugment",
                 groups=None, negatives="any", name="training", class_rotations=False):
        self.paths, self.batch_size, self.images_per_class = list(paths), batch_size, images_per_class
        self.transform = batch_transform(input_shape, True, augmentation)
        self.by_class = {label: [self.paths[i] for i in rows] for label, rows in indices_by_class(labels).items()}
        classes = [c for c in sorted(self.by_class) if len(self.by_class[c]) >= 2]
        if len(classes) < 2:
            raise DataError(f"the {name} split has {len(classes)} class(es) with at least 2 images; "
                            f"pairing batch needs at least 2")
        pools = defaultdict(list)
        for c in classes:
            group = groups[c] if negatives == "same_group" and groups is not None else ""
            for turns in range(4 if class_rotations else 1):
                pools[(group, turns)].append((c, turns))
        self.pools = [pool for _, pool in sorted(pools.items()) if len(pool) >= 2] or [sum(pools.values(), [])]
        self.pool_weights = [len(pool) for pool in self.pools]
        self.classes_per_batch = max(2, batch_size // images_per_class)
        self.turn_stride = max(classes) + 1

    def __len__(self):
        return max(1, len(self.paths) // self.batch_size)

    def sample_batch(self):
        """Draw one batch, grouped by class: (paths, quarter turns of each image, class labels)."""
        pool = random.choices(self.pools, self.pool_weights)[0]
        paths, turns, labels = [], [], []
        for c, k in random.sample(pool, min(self.classes_per_batch, len(pool))):
            drawn = random.sample(self.by_class[c], min(self.images_per_class, len(self.by_class[c])))
            paths += drawn
            turns += [k] * len(drawn)
            labels += [c + k * self.turn_stride] * len(drawn)
        return paths, turns, labels

    def __getitem__(self, index):
        paths, turns, labels = self.sample_batch()
        images = [torch.rot90(load_image(path, keep_grey=True), k, dims=(1, 2)) for path, k in zip(paths, turns)]
        return self.transform(images), torch.tensor(labels)

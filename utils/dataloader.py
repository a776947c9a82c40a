"""Listing images by class, splitting them, and sampling labelled pairs for training."""
import os
import random
import sys
from collections import defaultdict

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from utils.utils import GREY, ImageError, eval_transform, is_image_file, load_image, verify_image

SPLITS = ("image", "class")
AUGMENTATIONS = ("autoaugment", "jitter", "none")


class DataError(ValueError):
    """A dataset that cannot be trained on; the message says what is wrong and where."""


def _subfolders(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


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
    if train_own_data:
        class_dirs = [(name, os.path.join(root, name)) for name in _subfolders(root)]
    else:
        class_dirs = [
            (f"{alphabet}/{character}", os.path.join(root, alphabet, character))
            for alphabet in _subfolders(root)
            for character in _subfolders(os.path.join(root, alphabet))
        ]
    paths, labels, class_names, skipped, unreadable, empty = [], [], [], 0, [], []
    for name, class_dir in class_dirs:
        files = sorted(e.name for e in os.scandir(class_dir) if e.is_file())
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
    if warn and unreadable:
        print(f"Warning: skipped {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:5])
              + (" ..." if len(unreadable) > 5 else ""), file=sys.stderr)
    if warn and empty and paths:
        print(f"Warning: skipped {len(empty)} class folder(s) without images: " + ", ".join(empty[:5])
              + (" ..." if len(empty) > 5 else ""), file=sys.stderr)
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


class RandomLetterbox(torch.nn.Module):
    """Jitter aspect ratio and scale, then place the image at a random spot on a grey canvas."""

    def __init__(self, size, jitter=0.3, scale=(0.75, 1.25)):
        super().__init__()
        self.size, self.jitter, self.scale = list(size), jitter, scale

    def forward(self, image):
        height, width = self.size
        _, ih, iw = image.shape
        aspect = iw / ih * random.uniform(1 - self.jitter, 1 + self.jitter) / random.uniform(1 - self.jitter, 1 + self.jitter)
        scale = random.uniform(*self.scale)
        nh = int(scale * height) if aspect < 1 else int(scale * width / aspect)
        nw = int(nh * aspect)
        nh, nw = max(1, min(nh, height)), max(1, min(nw, width))
        resized = v2.functional.resize(image, [nh, nw], antialias=True)
        top, left = random.randint(0, height - nh), random.randint(0, width - nw)
        return v2.functional.pad(resized, [left, top, width - nw - left, height - nh - top], fill=GREY)


def train_transform(input_shape, augmentation="autoaugment"):
    """Training augmentation on uint8 (3, H, W) tensors -> float [0, 1].

    `autoaugment` (the original default): random resized crop, flip, one AutoAugment ImageNet
    sub-policy. `jitter`: scale/aspect jitter with grey padding, flip, rotation, HSV jitter.
    `none`: the validation preprocessing (fastest to learn from; for aligned data and short runs).
    """
    size = list(input_shape)
    if augmentation == "none":
        return eval_transform(size)
    if augmentation == "autoaugment":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=GREY),
        ]
    elif augmentation == "jitter":
        steps = [
            RandomLetterbox(size),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomRotation(15, fill=GREY),
            v2.ColorJitter(brightness=0.4, saturation=0.7, hue=0.1),
        ]
    else:
        raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])


class BatchAutoAugment:
    """The `autoaugment` pipeline of `train_transform` applied to many images at once: same distribution, much faster.

    Every image draws its own crop, flip and AutoAugment sub-policy exactly as torchvision does, and
    images that drew the same AutoAugment op and magnitude go through torchvision's op together, in
    sub-policy order: one call per op instead of one per image.
    Takes a list of uint8 (1 or 3, H, W) images; returns float (N, 3, h, w) in [0, 1].
    """

    def __init__(self, input_shape):
        self.size = list(input_shape)
        self.crop = v2.RandomResizedCrop(self.size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=GREY)

    @staticmethod
    def supported():
        """True when this torchvision has the AutoAugment internals used here (checked on 0.29); else go per image."""
        return all(hasattr(v2.AutoAugment, name) for name in ("_AUGMENTATION_SPACE", "_apply_image_or_video_transform")) \
            and hasattr(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET), "_policies")

    def resized_crop(self, images):
        """Random resized crop and flip of each image -> uint8 (N, C, h, w), bilinear with antialiasing."""
        channels = max(image.shape[0] for image in images)
        out = torch.empty((len(images), channels, *self.size), dtype=torch.uint8)
        flips = (torch.rand(len(images)) < 0.5).tolist()
        for i, (image, flip) in enumerate(zip(images, flips)):
            box = self.crop.make_params([image])
            crop = image[None, :, box["top"]: box["top"] + box["height"], box["left"]: box["left"] + box["width"]]
            crop = crop.flip(-1) if flip else crop  # flipping before the (symmetric) resize is the same, and smaller
            resized = torch.nn.functional.interpolate(crop.float(), self.size, mode="bilinear", antialias=True)
            out[i] = resized.round_().clamp_(0, 255)[0]  # a grey image broadcasts into RGB when the batch mixes them
        return out

    def auto_augment(self, images):
        """One AutoAugment ImageNet sub-policy per image, applied in place to uint8 (N, C, h, w)."""
        aa = self.autoaugment
        height, width = images.shape[-2:]
        policies = torch.randint(len(aa._policies), (len(images),)).tolist()
        magnitudes = {name: fn(10, height, width) for name, (fn, _) in aa._AUGMENTATION_SPACE.items()}
        draws, signs = torch.rand(len(images), 2).tolist(), torch.rand(len(images), 2).tolist()
        for slot in range(2):
            groups = defaultdict(list)
            for i, policy in enumerate(policies):
                transform_id, probability, magnitude_idx = aa._policies[policy][slot]
                if not draws[i][slot] <= probability:
                    continue
                bins = magnitudes[transform_id]
                magnitude = 0.0 if bins is None else float(bins[magnitude_idx])
                if aa._AUGMENTATION_SPACE[transform_id][1] and signs[i][slot] <= 0.5:  # signed op
                    magnitude = -magnitude
                groups[transform_id, magnitude].append(i)
            for (transform_id, magnitude), indices in groups.items():
                images[indices] = aa._apply_image_or_video_transform(
                    images[indices], transform_id, magnitude, interpolation=aa.interpolation, fill=aa._fill
                )
        return images

    def __call__(self, images):
        augmented = self.auto_augment(self.resized_crop(images))
        return v2.functional.to_dtype(augmented, torch.float32, scale=True).expand(-1, 3, -1, -1)


class PerImage:
    """A per-image transform applied to a list of uint8 (1 or 3, H, W) images -> float (N, 3, h, w)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, images):
        return torch.stack([self.transform(image).expand(3, -1, -1) for image in images])


class SiameseDataset(Dataset):
    """Each item is two labelled pairs: (a, b) of one class -> 1, (c, d) of two classes -> 0.

    The positive class has at least 3 images; a, b, c are distinct images of it and d is an
    image of another class. Items are random draws (the index only sets the epoch length), so
    every DataLoader worker and rank must seed `random` differently.
    Returns images (2 pairs, 2 sides, 3, H, W) float32 and labels (2,) float32.
    """

    def __init__(self, paths, labels, input_shape, train=True, augmentation="autoaugment", name="dataset"):
        self.paths, self.input_shape = list(paths), list(input_shape)
        if train and augmentation == "autoaugment" and BatchAutoAugment.supported():
            self.transform = BatchAutoAugment(input_shape)
        else:
            self.transform = PerImage(train_transform(input_shape, augmentation) if train else eval_transform(input_shape))
        self.by_class = defaultdict(list)
        for path, label in zip(self.paths, labels):
            self.by_class[label].append(path)
        self.classes = sorted(self.by_class)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.positive_classes = [c for c in self.classes if len(self.by_class[c]) >= 3]
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
        other = random.randrange(len(self.classes) - 1)  # uniform over the other classes, no rejection loop
        if other >= self.class_index[positive]:
            other += 1
        d = random.choice(self.by_class[self.classes[other]])
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

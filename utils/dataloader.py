"""Listing images by class, splitting them, and drawing the batch of each step: pair items or class batches.

Every batch is drawn by a generator seeded with the dataset's seed and the step's number alone, so a step's
images are the same whichever worker draws them and however the run was interrupted and resumed.
"""
import hashlib
import os
import random
import signal
from collections import defaultdict, namedtuple
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from utils.augment import BatchAutoAugment, BatchStrokes, PerImage, train_transform
from utils.errors import ConfigError, DataError, ImageError
from utils.files import warn_skipped
from utils.images import eval_transform, ink_box, ink_square, is_image_file, load_image, resize, verify_image

SPLITS = ("image", "class")
NEGATIVES = ("any", "same_group")
PAIRINGS = ("items", "batch")
TRANSFORMS = 64  # class transforms: 4 turns x mirrored or not x squashed or not x slanted or not x cut or not
CACHE_BYTES = 512 * 2 ** 20  # drawings kept decoded per process: Omniglot's background set is 203 MiB (405 slanted too)


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
    listed, to be counted as skipped). A symlink that dangles or loops, a FIFO, a device or a socket is neither; its
    path and problem are appended to `broken`.
    """
    folders, files = [], []
    for entry in os.scandir(folder):
        try:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    folders.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                broken.append(f"{entry.path} (dangling symlink)")
            else:  # a FIFO would block a reader, a device never end
                broken.append(f"{entry.path} (not a regular file)")
        except OSError as e:  # a symlink loop
            broken.append(f"{entry.path} ({e.strerror})")
    return sorted(folders), sorted(files)


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


def data_digest(class_names, train_indices, labels):
    """A digest (hex) of the class list and of which classes and how many images train: what a resumed run
    must find again."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\n".join(class_names).encode())
    digest.update(repr(sorted(labels[i] for i in train_indices)).encode())
    return digest.hexdigest()


def batch_transform(input_shape, train=True, augmentation="autoaugment"):
    """What turns a list of decoded uint8 images into one uint8 (N, 3, H, W) batch: the training
    `augmentation` (AutoAugment, affine and strokes batched), or the validation resize when not `train`."""
    if train and augmentation == "autoaugment":
        return BatchAutoAugment(input_shape)
    if train and augmentation in ("strokes", "affine"):
        return BatchStrokes(input_shape, strokes=augmentation == "strokes")
    return PerImage(train_transform(input_shape, augmentation) if train else eval_transform(input_shape))


PairBatch = namedtuple("PairBatch", "images labels")  # uint8 (B items, 2 pairs, 2 sides, 3, H, W); float (B, 2)
ClassBatch = namedtuple("ClassBatch", "images labels")  # uint8 (B, 3, H, W); int64 class labels (B,)


class StepBatches(Dataset):
    """A dataset whose item `step` is the whole batch of that step: `draw(rng)`, with `rng` a `random.Random` and
    torch's generator seeded from (`seed`, `step`) alone. `len` is the number of steps in an epoch; step numbers
    run on across epochs (`StepSampler`)."""

    def __init__(self, steps, seed):
        self.steps, self.seed = steps, seed
        self.drawings = DrawingCache()

    def __len__(self):
        return self.steps

    def generators(self, step):
        """(a `random.Random`, a seed for torch's generator): what draws `step`'s batch."""
        rng = random.Random(f"{self.seed}/{step}")
        return rng, rng.getrandbits(63)

    def __getitem__(self, step):
        rng, torch_seed = self.generators(step)
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's global generator
            torch.manual_seed(torch_seed)
            return self.draw(rng)

    def draw(self, rng):
        raise NotImplementedError


class PairItems(StepBatches):
    """Each step is `items` items of two labelled pairs: (a, b) of one class -> 1, (c, d) of two classes -> 0.

    The positive class has at least 3 images; a, b, c are distinct images of it and d is an
    image of another class: any other class (`negatives` "any", the original), or one of the same
    group (`negatives` "same_group": the same alphabet, as Lake's one-shot task asks; `groups[label]`
    names each label's group, and a class alone in its group falls back to any other class).
    A step gives a `PairBatch`: images uint8 (items, 2 pairs, 2 sides, 3, H, W), a quarter of the float bytes to
    share between processes and copy to the GPU, and labels (items, 2) float32, the two pairs in random order.
    """

    def __init__(self, paths, labels, input_shape, items, steps=None, train=True, augmentation="autoaugment",
                 name="dataset", groups=None, negatives="any", seed=0, crop_to_ink=False):
        super().__init__(max(1, len(paths) // items) if steps is None else steps, seed)
        self.paths, self.labels, self.input_shape, self.items = list(paths), list(labels), list(input_shape), items
        self.crop_to_ink = crop_to_ink
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

    def sample_pair(self, rng):
        """Draw a positive and a negative pair of paths with `rng` (a `random.Random`): ((a, b), (c, d))."""
        positive = rng.choice(self.positive_classes)
        a, b, c = rng.sample(self.by_class[positive], 3)
        if positive in self.group_mates:
            other = rng.choice(self.group_mates[positive])
        else:
            index = rng.randrange(len(self.classes) - 1)  # uniform over the other classes, no rejection loop
            other = self.classes[index + (index >= self.class_index[positive])]
        d = rng.choice(self.by_class[other])
        return (a, b), (c, d)

    def sample_step(self, rng):
        """One step's pairs, drawn with `rng` -> ([(a, b), ...] the 2 x `items` pairs of paths in the batch's
        order, labels (items, 2) float32)."""
        drawn = []
        for _ in range(self.items):
            items = [(pair, label) for pair, label in zip(self.sample_pair(rng), (1.0, 0.0))]
            rng.shuffle(items)
            drawn.append(items)
        return [pair for items in drawn for pair, _ in items], torch.tensor([[label for _, label in items]
                                                                              for items in drawn])

    def step_pairs(self, step):
        """The pairs of paths and their labels (2 x items,) that `step`'s batch holds, no image decoded."""
        pairs, labels = self.sample_step(self.generators(step)[0])
        return pairs, labels.flatten()

    def draw(self, rng):
        """One step's `PairBatch`: every image is decoded once, then all are augmented together.

        Greyscale PNGs stay one channel until the end (channel-wise ops, a third of the work).
        """
        pairs, labels = self.sample_step(rng)
        images = self.transform([self.drawings.get(path, lambda path=path: load_drawing(path, self.crop_to_ink))
                                 for pair in pairs for path in pair])
        return PairBatch(images.unflatten(0, (len(labels), 2, 2)), labels)


class ClassBatches(StepBatches):
    """Each step is one class batch for `pairing = "batch"`: `batch_size // images_per_class` classes with
    `images_per_class` images each, of which the loop scores every pair.

    The classes of a batch come from one group (alphabet) with `negatives` "same_group", drawn with
    probability by the group's size; groups with a single class are left out, and when none has two
    classes all classes form one group. A class with fewer images gives all it has (at least 2).
    `class_rotations` True adds each class turned by 90, 180 and 270 degrees as three new classes (in
    a group of their own per turn): a turned character is another character, four times the classes.
    `class_mirrors` True adds each class (and each turn of it) mirrored left to right, twice the classes again.
    `class_squash` s (0: off) adds each class squashed to s of its height (white above and below), before
    its turns and mirroring, twice the classes again: with the turns, also squashed to s of its width.
    `class_slant` d (degrees, 0: off) adds each class (and each squashed one) sheared by d degrees like italics,
    before its turns and mirroring, twice the classes again: with them, slanted the other ways too.
    `class_cut` f (0: off) adds each class (and each of the above) cut to the top f of its ink's height (white
    below), centred again with `crop_to_ink`, before the squash, slant, turns and mirroring: a part of a character
    is another character; with the turns, also its left, bottom and right parts.
    `class_blends` b makes each class of a batch, with probability b, a blend instead: that class drawn over another
    of its group at the same transform (the darker pixel of the two, for dark strokes on a light ground), a new
    character for every pair of characters; its images pair each image of one with a random image of the other.
    A step gives a `ClassBatch`: images uint8 (B, 3, H, W) and their class labels (B,) int64; a class under
    transform t (turns + 4 * mirrored + 8 * squashed + 16 * slanted + 32 * cut) is labelled
    label + t * (largest label + 1), a blend of two such labels l1 < l2 (1 + l1) * TRANSFORMS * (largest label + 1)
    + l2. `steps` defaults to about one pass over the images.
    """

    def __init__(self, paths, labels, input_shape, batch_size, images_per_class=4, augmentation="autoaugment",
                 groups=None, negatives="any", name="training", class_rotations=False, steps=None, seed=0,
                 class_mirrors=False, class_blends=0.0, class_squash=0.0, class_slant=0.0, class_cut=0.0,
                 crop_to_ink=False):
        super().__init__(max(1, len(paths) // batch_size) if steps is None else steps, seed)
        self.paths, self.batch_size, self.images_per_class = list(paths), batch_size, images_per_class
        self.crop_to_ink = crop_to_ink
        self.class_blends, self.class_squash, self.class_slant = class_blends, class_squash, class_slant
        self.class_cut = class_cut
        self.transform = batch_transform(input_shape, True, augmentation)
        self.by_class = {label: [self.paths[i] for i in rows] for label, rows in indices_by_class(labels).items()}
        classes = [c for c in sorted(self.by_class) if len(self.by_class[c]) >= 2]
        if len(classes) < 2:
            raise DataError(f"the {name} split has {len(classes)} class(es) with at least 2 images; "
                            f"pairing batch needs at least 2")
        pools = defaultdict(list)
        transforms = [turns + 4 * mirrored + 8 * squashed + 16 * slanted + 32 * cut
                      for cut in range(2 if class_cut else 1) for slanted in range(2 if class_slant else 1)
                      for squashed in range(2 if class_squash else 1) for mirrored in range(2 if class_mirrors else 1)
                      for turns in range(4 if class_rotations else 1)]
        for c in classes:
            group = groups[c] if negatives == "same_group" and groups is not None else ""
            for transform in transforms:
                pools[(group, transform)].append((c, transform))
        self.pools = [pool for _, pool in sorted(pools.items()) if len(pool) >= 2] or [sum(pools.values(), [])]
        self.pool_weights = [len(pool) for pool in self.pools]
        self.classes_per_batch = max(2, batch_size // images_per_class)
        self.turn_stride = max(classes) + 1

    def smallest_batch(self):
        """The fewest images a batch can hold: its group's classes may be fewer, or hold fewer images, than asked."""
        return min(sum(sorted(min(self.images_per_class, len(self.by_class[c])) for c, _ in pool)
                       [:self.classes_per_batch]) for pool in self.pools)

    def sample_batch(self, rng):
        """Draw one batch with `rng` (a `random.Random`), grouped by class: (paths, the transform of each image
        (quarter turns + 4 when mirrored + 8 when squashed + 16 when slanted + 32 when cut), class labels); a blended
        class's images are (path, path) tuples."""
        pool = rng.choices(self.pools, self.pool_weights)[0]
        paths, turns, labels = [], [], []
        for c, k in rng.sample(pool, min(self.classes_per_batch, len(pool))):
            count = min(self.images_per_class, len(self.by_class[c]))
            drawn = rng.sample(self.by_class[c], count)
            label = c + k * self.turn_stride
            if self.class_blends and rng.random() < self.class_blends:
                partner = rng.choice([other for other, _ in pool if other != c])
                low, high = sorted((label, partner + k * self.turn_stride))
                blend = (1 + low) * TRANSFORMS * self.turn_stride + high
                if blend not in labels:  # B over A is A over B: a blend already in the batch stays single
                    drawn = [(path, rng.choice(self.by_class[partner])) for path in drawn]
                    label = blend
            paths += drawn
            turns += [k] * count
            labels += [label] * count
        return paths, turns, labels

    def draw(self, rng):
        paths, turns, labels = self.sample_batch(rng)
        images = [turned(self.shaped_drawing(path, k), k) for path, k in zip(paths, turns)]
        return ClassBatch(self.transform(images), torch.tensor(labels))

    def shaped_drawing(self, path, transform):
        """The drawing at `path` decoded, framed by its ink with `crop_to_ink`, cut, squashed and slanted as
        `transform` asks: what a step would otherwise redo for every image it draws, kept after the first time."""
        def make():
            return shaped(load_drawing(path, self.crop_to_ink), transform, self.class_squash, self.class_slant,
                          self.class_cut, self.crop_to_ink)
        return make() if isinstance(path, tuple) else self.drawings.get((path, transform // 8), make)


def load_drawing(path, crop_to_ink=False):
    """A path -> its image as `load_image` keeps it (grey stays one channel); a (path, path) tuple -> the two
    drawn over each other, the darker pixel of each, the second resized to the first's size when they differ.
    With `crop_to_ink`, the `ink_square` of that image, as prediction fits it."""
    if crop_to_ink:
        return ink_square(load_drawing(path))
    if isinstance(path, str):
        return load_image(path, keep_grey=True)
    first, second = (load_image(p, keep_grey=True) for p in path)
    if first.shape[0] != second.shape[0]:
        first, second = first.expand(3, -1, -1), second.expand(3, -1, -1)
    if first.shape != second.shape:
        second = resize(second, first.shape[-2:])
    return torch.minimum(first, second)


def transformed(image, transform, squash=0.0, slant=0.0, cut=0.0, reframe=False):
    """A uint8 (C, H, W) image cut to the top `cut` of its ink when `transform` >= 32 (centred again with
    `reframe`), squashed to `squash` of its height when `transform` % 16 >= 8, sheared by `slant` degrees (its top
    to the right) when `transform` % 32 >= 16, mirrored left to right when `transform` % 8 >= 4, then turned by
    `transform` % 4 quarter turns."""
    return turned(shaped(image, transform, squash, slant, cut, reframe), transform)


def shaped(image, transform, squash=0.0, slant=0.0, cut=0.0, reframe=False):
    """`transformed`'s first part, the costly one: cut when `transform` >= 32, squashed when `transform` % 16 >= 8,
    slanted when `transform` % 32 >= 16."""
    if transform >= 32:
        image = cut_to_top(image, cut, centre=reframe)
    if transform % 16 >= 8:
        image = squashed(image, squash)
    if transform % 32 >= 16:
        image = 255 - slanted(255 - image, slant)
    return image


def turned(image, transform):
    """`transformed`'s second part, a new tensor: mirrored when `transform` % 8 >= 4, then quarter turns."""
    if transform % 8 >= 4:
        image = image.flip(-1)
    return torch.rot90(image, transform % 4, dims=(1, 2))


class DrawingCache:
    """Decoded drawings kept in memory by key until they fill `max_bytes`; later ones are made each time they are
    asked for. A drawing is decoded and framed once per process instead of at every step that draws it."""

    def __init__(self, max_bytes=CACHE_BYTES):
        self.items, self.bytes, self.max_bytes = {}, 0, max_bytes

    def get(self, key, make):
        """The tensor kept under `key`, else `make()`, kept when it still fits. Callers must not change it in place."""
        image = self.items.get(key)
        if image is None:
            image = make()
            if self.bytes + image.nbytes <= self.max_bytes:
                self.items[key] = image
                self.bytes += image.nbytes
        return image


def slanted(ink, degrees):
    """A uint8 (C, H, W) image of ink on 0 sheared by `degrees` about its centre, its top to the right; the ink, not
    the image, is sheared, since torchvision's bilinear fill of 255 leaves a grey seam along the image's edges."""
    return v2.functional.affine(ink, angle=0.0, translate=[0, 0], scale=1.0, shear=[degrees, 0.0], fill=0,
                                interpolation=v2.InterpolationMode.BILINEAR)


def cut_to_top(image, fraction, centre=False):
    """A uint8 (C, H, W) drawing, dark ink on white, with its ink below the top `fraction` of the ink's rows made
    white: the upper part of the character; with `centre`, moved to the middle of the image at its own scale, as
    a drawing framed by its ink sits. An image without ink is returned as it is."""
    box = ink_box(image)
    if box is None:
        return image
    top, bottom = box[:2]
    part = image.clone()
    part[:, top + max(1, round((bottom - top) * fraction)):] = 255
    if not centre:
        return part
    top, bottom, left, right = ink_box(part)
    down = (part.shape[1] - top - bottom) // 2
    across = (part.shape[2] - left - right) // 2
    return part.roll((down, across), dims=(1, 2))  # what wraps round is paper beyond the ink


def squashed(image, fraction):
    """A uint8 (C, H, W) image resized to `fraction` of its height, centred on a white (C, H, W) ground."""
    height = image.shape[1]
    short = max(1, round(height * fraction))
    top = (height - short) // 2
    ground = torch.full_like(image, 255)
    ground[:, top:top + short] = resize(image, (short, image.shape[2]))
    return ground


class StepSampler(Sampler):
    """The step numbers of one epoch of `steps` steps, from step `first` of it on (`set_epoch`): a resumed run
    takes the very batches the interrupted one would have."""

    def __init__(self, steps):
        self.steps, self.epoch, self.first = steps, 0, 0

    def set_epoch(self, epoch, first=0):
        self.epoch, self.first = epoch, first

    def __iter__(self):
        return iter(range(self.epoch * self.steps + self.first, (self.epoch + 1) * self.steps))

    def __len__(self):
        return self.steps - self.first


def ignore_ctrl_c(worker_id):
    """DataLoader workers leave Ctrl-C, which a terminal sends to every process of the job, to the main process:
    it stops the run at a step boundary and then shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, num_workers, pin_memory=False):
    """A DataLoader over a `StepBatches` dataset, each item a whole batch, its steps chosen by a `StepSampler`
    (`loader.sampler.set_epoch`); `num_workers` processes draw ahead of the training step."""
    return DataLoader(dataset, batch_size=None, sampler=StepSampler(len(dataset)), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=ignore_ctrl_c if num_workers > 0 else None)


def load_training_data(c, rank=0, world_size=1, say=print):
    """List, split and wrap the data of training config `c` for this process -> a namespace: `train_loader`
    (`make_loader`), `val_pairs` (each validation step's pairs of paths and their labels, `PairItems.step_pairs`),
    `steps` (training steps an epoch), `num_train`, `num_val`, `val_paths`, `val_labels`, `digest` (`data_digest`)
    and `description` (what a settings file records of the data).

    Each rank draws its own batches (its seed is seed + rank) of batch_size / world_size images or items; the
    validation batches are the same every epoch. Raises DataError when the data cannot be used, and ConfigError
    when `best_by oneshot` could never measure on the validation classes.
    """
    root = os.path.join(c.dataset_path, "images_background")
    if not os.path.isdir(root):
        raise DataError(
            f"no dataset at {root}: make one with 'python -m tools.datasets glyphs' (embedded, offline) or "
            f"'python -m tools.datasets omniglot' (downloads Omniglot), or put your own class folders there "
            f"with --train_own_data True"
        )
    paths, labels, class_names, skipped = list_images(c.dataset_path, c.train_own_data, warn=rank == 0)
    say(f"{len(paths)} images in {len(class_names)} classes ({skipped} files skipped)")
    few = sum(1 for rows in indices_by_class(labels).values() if len(rows) < 3)
    if few:
        say(f"Note: {few} of {len(class_names)} classes have fewer than 3 images: they only appear in negative pairs")
    train_idx, val_idx = split_indices(labels, c.split_by, c.train_ratio, seed=0)
    per_rank, steps = c.batch_size // world_size, len(train_idx) // c.batch_size
    train_set = training_batches(c, [paths[i] for i in train_idx], [labels[i] for i in train_idx],
                                 class_groups(class_names), per_rank, steps, c.seed + rank, say)
    val_paths, val_labels = [paths[i] for i in val_idx], [labels[i] for i in val_idx]
    val_set = PairItems(val_paths, val_labels, c.input_shape, per_rank, len(val_idx) // c.batch_size, train=False,
                        name="validation", groups=class_groups(class_names), negatives=c.negatives,
                        seed=f"validation/{c.seed + rank}")
    if len(train_idx) < c.batch_size or len(val_idx) < c.batch_size:
        raise DataError(
            f"dataset too small: {len(train_idx)} training and {len(val_idx)} validation images for batch_size "
            f"{c.batch_size}; lower batch_size or add images"
        )
    check_oneshot_measurable(c, val_labels)
    pin = c.device.type == "cuda"
    return SimpleNamespace(
        train_loader=make_loader(train_set, c.num_workers, pin),
        val_pairs=[val_set.step_pairs(step) for step in range(len(val_set))],
        steps=steps, num_train=len(train_idx), num_val=len(val_idx), val_paths=val_paths, val_labels=val_labels,
        digest=data_digest(class_names, train_idx, labels),
        description={"dataset_path": os.path.abspath(c.dataset_path), "classes": len(class_names),
                     "images": len(paths), "train_classes": len({labels[i] for i in train_idx}),
                     "train_images": len(train_idx), "split_by": c.split_by, "train_ratio": c.train_ratio,
                     "train_own_data": c.train_own_data})


def training_batches(c, paths, labels, groups, per_rank, steps, seed, say):
    """The training dataset of config `c`: `ClassBatches` for pairing "batch", else `PairItems`; says once when
    some class batches must hold fewer images than asked for."""
    if c.pairing != "batch":
        return PairItems(paths, labels, c.input_shape, per_rank, steps, train=True, augmentation=c.augmentation,
                         name="training", groups=groups, negatives=c.negatives, seed=seed, crop_to_ink=c.crop_to_ink)
    batches = ClassBatches(paths, labels, c.input_shape, per_rank, c.images_per_class, c.augmentation, groups,
                           c.negatives, class_rotations=c.class_rotations, steps=steps, seed=seed,
                           class_mirrors=c.class_mirrors, class_blends=c.class_blends, class_squash=c.class_squash,
                           class_slant=c.class_slant, class_cut=c.class_cut, crop_to_ink=c.crop_to_ink)
    smallest = batches.smallest_batch()
    if smallest < per_rank:
        say(f"Note: some groups hold too few classes or images for batches of {per_rank}: a batch may hold as few "
            f"as {smallest} images (the learning rate stays scaled to batch_size {c.batch_size})")
    return batches


def check_oneshot_measurable(c, val_labels):
    """Raise ConfigError when `best_by oneshot` asks for a one-shot check the validation classes cannot give."""
    if c.best_by != "oneshot":
        return
    usable = sum(1 for rows in indices_by_class(val_labels).values() if len(rows) >= 2)
    if usable < 2:
        raise ConfigError(f"best_by oneshot: the validation split has {usable} class(es) with 2 images or more, "
                          f"too few for any one-shot task, so best_epoch_weights.pth would never be written; raise "
                          f"the validation share (train_ratio {c.train_ratio}) or use best_by val_loss")

"""Training augmentation: per-image torchvision pipelines, and the batched AutoAugment the loader uses."""
import math
import random

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from utils.images import GREY, eval_transform

AUGMENTATIONS = ("autoaugment", "jitter", "none")
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


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
    """Training augmentation of one image: uint8 (3, H, W) -> uint8 (3, h, w).

    `autoaugment` (the original default): random resized crop, flip, one AutoAugment ImageNet
    sub-policy. `jitter`: scale/aspect jitter with grey padding, flip, rotation, HSV jitter.
    `none`: the validation preprocessing (fastest to learn from; for aligned data and short runs).
    """
    size = list(input_shape)
    if augmentation == "none":
        return eval_transform(size)
    if augmentation == "autoaugment":
        steps = [
            v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
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
    return v2.Compose(steps)


class PerImage:
    """A per-image transform applied to a list of uint8 (1 or 3, H, W) images -> uint8 (N, 3, h, w)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, images):
        return torch.stack([self.transform(image).expand(3, -1, -1) for image in images])


def sample_crop_boxes(sizes, scale=CROP_SCALE, ratio=CROP_RATIO, attempts=10):
    """RandomResizedCrop's boxes for many images at once, drawn as torchvision draws them.

    Takes (height, width) per image; returns long tensors (top, left, height, width). Each image
    tries `attempts` random areas and aspect ratios and keeps the first that fits; if none
    fits it takes torchvision's fallback, a centre crop with the ratio clamped.
    """
    sizes = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    height, width = sizes[:, :1], sizes[:, 1:]
    shape = (len(sizes), attempts)
    area = height * width * torch.empty(shape, dtype=torch.float64).uniform_(*scale)
    aspect = torch.empty(shape, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp_()
    w, h = (area * aspect).sqrt_().round_(), (area / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first attempt that fits
    found, height, width = fits.any(1), height[:, 0], width[:, 0]
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    in_ratio = width / height
    w = torch.where(found, w, torch.where(in_ratio > max(ratio), (height * max(ratio)).round(), width))
    h = torch.where(found, h, torch.where(in_ratio < min(ratio), (width / min(ratio)).round(), height))
    top = torch.where(found, torch.rand(len(h), dtype=torch.float64).mul_(height - h + 1).floor_(), (height - h).div(2).floor_())
    left = torch.where(found, torch.rand(len(w), dtype=torch.float64).mul_(width - w + 1).floor_(), (width - w).div(2).floor_())
    return top.long(), left.long(), h.long(), w.long()


def crop_resize(images, boxes, flips, size):
    """Crop each of a list of uint8 (C, H, W) images to its box (`sample_crop_boxes`), resize to `size`
    (bilinear, antialiased when shrinking, as torchvision) and mirror those whose `flips` is true.
    Returns uint8 (N, C, h, w), C the largest channel count: a grey image among RGB ones becomes RGB."""
    out_height, out_width = size
    out = torch.empty((len(images), max(image.shape[0] for image in images), out_height, out_width))
    for i, (image, top, left, height, width, flip) in enumerate(zip(images, *(b.tolist() for b in boxes), flips.tolist())):
        crop = image[None, :, top: top + height, left: left + width].float()
        # antialiasing only changes a shrink; plain bilinear enlarging gives the same pixels, twice as fast
        shrink = height > out_height or width > out_width
        resized = F.interpolate(crop, size, mode="bilinear", antialias=shrink)[0]
        out[i] = resized.flip(-1) if flip else resized
    return out.round_().to(torch.uint8)  # bilinear weights are convex: no value leaves [0, 255]


def _affine(images, theta, fill=GREY):
    """Warp uint8 (k, C, H, W) images by per-image inverse affine matrices (k, 2, 3) in pixel units
    about the image centre, nearest neighbour, `fill` outside: torchvision's affine and rotate, batched."""
    k, channels, height, width = images.shape
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height)
    base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width), torch.ones(height, width)], -1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height])  # (k, 3, 2), to grid units
    grid = (base.view(-1, 3) @ scaled.transpose(0, 1).reshape(3, 2 * k)).view(height, width, k, 2).permute(2, 0, 1, 3)
    # nearest sampling with zero padding: shifting by `fill` makes the outside come back as `fill`
    warped = F.grid_sample(images.float() - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.add_(fill).to(torch.uint8)


def _matrices(k, row0=(1.0, 0.0, 0.0), row1=(0.0, 1.0, 0.0)):
    """(k, 2, 3) inverse affine matrices from two rows whose entries are numbers or (k,) tensors."""
    rows = [torch.stack([torch.as_tensor(v, dtype=torch.float32).expand(k) for v in row], 1) for row in (row0, row1)]
    return torch.stack(rows, 1)


def _blend(images, other, factor):
    """factor * images + (1 - factor) * other per image, clamped to uint8 (torchvision's blend)."""
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor + other * (1.0 - factor)).clamp_(0, 255).to(torch.uint8)


def _grey_level(images):
    """Float (k, 1, H, W) luma, floored as torchvision does for uint8; grey images are their own."""
    if images.shape[1] == 1:
        return images.float()
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).floor_()


def _rotate(images, degrees):
    """Anticlockwise rotation about the centre by per-image `degrees`, as torchvision's rotate."""
    radians = torch.deg2rad(degrees)
    cos, sin = radians.cos(), radians.sin()
    return _affine(images, _matrices(len(images), (cos, -sin, 0.0), (sin, cos, 0.0)))


def _sharpness(images, factor):
    """Blend with a 3x3 smoothed copy (borders kept) by per-image `factor`, as torchvision's adjust_sharpness."""
    channels = images.shape[1]
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(channels, 1, 3, 3)
    out = images.float()
    blurred = F.conv2d(out, kernel, groups=channels).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((blurred - inner) * (1.0 - factor.view(-1, 1, 1, 1)))
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(images, bits):
    """Keep the top per-image `bits` of each value."""
    masks = (255 << (8 - bits.long())) & 255
    return images & masks.to(torch.uint8).view(-1, 1, 1, 1)


# Each op takes uint8 (k, C, H, W) images and their k magnitudes (a float tensor), as torchvision's
# AutoAugment defines the op and its magnitude.
BATCH_OPS = {
    "Identity": lambda x, m: x,
    # shears are about the top-left corner, translations in whole pixels, as torchvision's AutoAugment has them
    "ShearX": lambda x, m: _affine(x, _matrices(len(x), row0=(1.0, m, m * x.shape[-2] / 2))),
    "ShearY": lambda x, m: _affine(x, _matrices(len(x), row1=(m, 1.0, m * x.shape[-1] / 2))),
    "TranslateX": lambda x, m: _affine(x, _matrices(len(x), row0=(1.0, 0.0, -m.trunc()))),
    "TranslateY": lambda x, m: _affine(x, _matrices(len(x), row1=(0.0, 1.0, -m.trunc()))),
    "Rotate": _rotate,
    "Brightness": lambda x, m: _blend(x.float(), 0.0, 1.0 + m),
    "Color": lambda x, m: x if x.shape[1] == 1 else _blend(x.float(), _grey_level(x), 1.0 + m),
    "Contrast": lambda x, m: _blend(x.float(), _grey_level(x).mean((1, 2, 3), keepdim=True), 1.0 + m),
    "Sharpness": lambda x, m: _sharpness(x, 1.0 + m),
    "Posterize": _posterize,
    "Solarize": lambda x, m: torch.where(x >= 255.0 * m.view(-1, 1, 1, 1), 255 - x, x),
    "AutoContrast": lambda x, m: v2.functional.autocontrast(x),
    "Equalize": lambda x, m: v2.functional.equalize(x),
    "Invert": lambda x, m: v2.functional.invert(x),
}


class BatchAutoAugment:
    """The `autoaugment` pipeline of `train_transform` applied to many images at once: same distribution, much faster.

    Every image draws its own crop, flip and AutoAugment sub-policy and sign as torchvision does;
    the crops share one parameter draw, and each op runs once per sub-policy slot on all the images
    that drew it, with per-image magnitudes (`BATCH_OPS`), instead of once per image.
    Takes a list of uint8 (1 or 3, H, W) images; returns uint8 (N, 3, h, w).
    """

    def __init__(self, input_shape):
        self.size = list(input_shape)
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=GREY)
        self.tables = {}

    @staticmethod
    def supported():
        """True when this torchvision has the AutoAugment tables used here (checked on 0.29); else go per image."""
        return hasattr(v2.AutoAugment, "_AUGMENTATION_SPACE") and hasattr(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET), "_policies") \
            and set(v2.AutoAugment._AUGMENTATION_SPACE) <= set(BATCH_OPS)

    def resized_crop(self, images):
        """Random resized crop and flip of each image -> uint8 (N, C, h, w)."""
        boxes = sample_crop_boxes([image.shape[-2:] for image in images])
        return crop_resize(images, boxes, torch.rand(len(images)) < 0.5, self.size)

    def policy_table(self, height, width):
        """The sub-policies as (P, 2) tensors, one row per sub-policy and one column per slot: op index
        into `BATCH_OPS`, probability, magnitude, and whether the op's sign is random. Cached per image size."""
        if (height, width) not in self.tables:
            aa, names = self.autoaugment, list(BATCH_OPS)
            rows = []
            for policy in aa._policies:
                for op, probability, magnitude_idx in policy:
                    bins_fn, signed = aa._AUGMENTATION_SPACE[op]
                    bins = bins_fn(10, height, width)
                    rows.append((names.index(op), probability, 0.0 if bins is None else float(bins[magnitude_idx]), signed))
            columns = list(zip(*rows))
            self.tables[height, width] = tuple(torch.tensor(c).view(len(aa._policies), 2) for c in columns)
        return self.tables[height, width]

    def auto_augment(self, images):
        """One AutoAugment ImageNet sub-policy per image, applied in place to uint8 (N, C, h, w)."""
        ops, probabilities, magnitudes, signed = self.policy_table(*images.shape[-2:])
        policies = torch.randint(len(ops), (len(images),))
        ops, magnitudes = ops[policies], magnitudes[policies]  # (N, 2): each image's two ops
        applied = torch.rand(len(images), 2) <= probabilities[policies]
        magnitudes = torch.where(signed[policies] & (torch.rand(len(images), 2) <= 0.5), -magnitudes, magnitudes)
        names = list(BATCH_OPS)
        for slot in range(2):
            slot_ops = torch.where(applied[:, slot], ops[:, slot], -1)
            for op in slot_ops.unique().tolist():
                if op >= 0:  # the images whose draw applied this op, all at once
                    indices = (slot_ops == op).nonzero()[:, 0]
                    images[indices] = BATCH_OPS[names[op]](images[indices], magnitudes[indices, slot])
        return images

    def __call__(self, images):
        return self.auto_augment(self.resized_crop(images)).expand(-1, 3, -1, -1)


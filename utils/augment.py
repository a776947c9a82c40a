"""Training augmentation: per-image torchvision pipelines, and the batched AutoAugment, affine and stroke
augmentations the loader uses."""
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from utils.images import GREY, eval_transform

AUGMENTATIONS = ("autoaugment", "affine", "strokes", "jitter", "none")
WHITE = 255  # the "affine" fill: drawings such as Omniglot's are ink on white paper
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# Koch et al.'s small distortions of a drawing for "affine" and "strokes": degrees, translation (of the side),
# scale, x-shear (degrees)
AFFINE_MOVES = {"degrees": 10, "translate": 0.08, "scale": (0.85, 1.15), "shear": 15}

# The AutoAugment ImageNet policy (Cubuk et al., 2019), as torchvision 0.29 has it: 25 sub-policies of two
# (op, probability, magnitude bin) steps, the bin None for ops without a magnitude.
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
NUM_BINS = 10
# op: (first bin, last bin, negated at random); the bins are evenly spaced, torchvision's torch.linspace(first, last)
MAGNITUDE_RANGES = {
    "ShearX": (0.0, 0.3, True),  # shear factor
    "ShearY": (0.0, 0.3, True),
    "TranslateX": (0.0, 150.0 / 331.0, True),  # times the width, then truncated to whole pixels
    "TranslateY": (0.0, 150.0 / 331.0, True),  # times the height
    "Rotate": (0.0, 30.0, True),  # degrees
    "Brightness": (0.0, 0.9, True),  # the factor less 1
    "Color": (0.0, 0.9, True),
    "Contrast": (0.0, 0.9, True),
    "Sharpness": (0.0, 0.9, True),
    "Solarize": (1.0, 0.0, False),  # threshold as a fraction of 255, uint8's maximum
}
POSTERIZE_BITS = (8, 8, 7, 7, 6, 6, 5, 5, 4, 4)  # bits kept, 8 - round(arange(10) / 2.25); never negated
NO_MAGNITUDE = ("AutoContrast", "Equalize", "Invert")


class RandomLetterbox(torch.nn.Module):
    """Jitter aspect ratio and scale, then place the image at a random spot on a grey canvas."""

    def __init__(self, size, jitter=0.3, scale=(0.75, 1.25)):
        super().__init__()
        self.size, self.jitter, self.scale = list(size), jitter, scale

    def forward(self, image):
        height, width = self.size
        _, ih, iw = image.shape
        aspect = iw / ih * uniform(1 - self.jitter, 1 + self.jitter)
        aspect /= uniform(1 - self.jitter, 1 + self.jitter)
        scale = uniform(*self.scale)
        nh = int(scale * height) if aspect < 1 else int(scale * width / aspect)
        nw = int(nh * aspect)
        nh, nw = max(1, min(nh, height)), max(1, min(nw, width))
        resized = v2.functional.resize(image, [nh, nw], antialias=True)
        top, left = int(torch.randint(height - nh + 1, ())), int(torch.randint(width - nw + 1, ()))
        return v2.functional.pad(resized, [left, top, width - nw - left, height - nh - top], fill=GREY)


def stroke_width(images, draws, p=0.25):
    """Dark strokes on a light ground made a pixel thinner (3x3 maximum) where an image's `draws` (N,) value in
    [0, 1) is below `p`, thicker (3x3 minimum) where it is in [p, 2p), else left: uint8 (N, C, H, W) in and out."""
    out = images.clone()
    for rows, pick in ((draws < p, torch.maximum), ((draws >= p) & (draws < 2 * p), torch.minimum)):
        if rows.any():
            out[rows] = neighbourhood(images[rows], pick)
    return out


def neighbourhood(images, pick):
    """The 3x3 neighbourhood's maximum (`pick` torch.maximum) or minimum (torch.minimum) of each pixel of uint8
    (N, C, H, W) images, what lies outside left out: max_pool2d(3, 1, 1)'s, in uint8 and a few passes."""
    out = images.clone()
    for dim in (-1, -2):  # along rows, then along columns
        before = out.clone()
        size = before.shape[dim]
        out.narrow(dim, 1, size - 1).copy_(pick(out.narrow(dim, 1, size - 1), before.narrow(dim, 0, size - 1)))
        out.narrow(dim, 0, size - 1).copy_(pick(out.narrow(dim, 0, size - 1), before.narrow(dim, 1, size - 1)))
    return out


# Not torchvision's ElasticTransform: its smoothness (sigma) is in pixels, a grid's cells are fractions of the drawing
def elastic_shifts(count, fraction=0.04, cells=4):
    """`count` random grids (count, 2, cells + 1, cells + 1) of shifts of up to `fraction` of the side, x then y, in
    units of the [-1, 1] grid: a smooth warp for `elastic_warp`, as a hand draws a character differently each time."""
    return (torch.rand(count, 2, cells + 1, cells + 1) * 2 - 1) * fraction * 2


def elastic_warp(images, shifts):
    """uint8 (N, C, H, W) images, each warped by the field interpolated (bicubic) from its grid of `shifts`
    (`elastic_shifts`), the border's colour filling what moves in -> uint8 (N, C, H, W)."""
    _, _, height, width = images.shape
    field = F.interpolate(shifts, size=(height, width), mode="bicubic", align_corners=True)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    grid = torch.stack([xs + field[:, 0], ys + field[:, 1]], -1)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.round_().clamp_(0, 255).to(torch.uint8)


def random_affine_matrices(count, height, width, degrees, translate, scale, shear):
    """`count` random moves of torchvision's RandomAffine(degrees, (translate, translate), scale, shear) for
    height x width images, drawn as it draws them, as inverse matrices (count, 2, 3) float64 for `_affine`."""
    matrices = []
    for _ in range(count):
        angle = uniform(-degrees, degrees)
        moves = [int(round(uniform(-translate * side, translate * side))) for side in (width, height)]
        factor, x_shear = uniform(*scale), uniform(-shear, shear)
        matrices.append(inverse_affine(angle, moves, factor, x_shear))
    return torch.tensor(matrices, dtype=torch.float64)


def inverse_affine(degrees, translate, scale, x_shear):
    """The (2, 3) matrix, as nested lists, taking an output pixel to the input point it shows (both from the image
    centre) for torchvision's affine move: shear along x by `x_shear` degrees, turn by `degrees`, scale, then move by
    `translate` (x, y) pixels."""
    turn, slope = math.radians(degrees), math.tan(math.radians(x_shear))
    cos, sin = math.cos(turn), math.sin(turn)
    # the forward matrix is the turn times [[1, -slope], [0, 1]]: determinant 1, so its inverse is its adjugate
    row0 = [(cos - sin * slope) / scale, (cos * slope + sin) / scale]
    row1 = [-sin / scale, cos / scale]
    tx, ty = translate
    return [row0 + [-(row0[0] * tx + row0[1] * ty)], row1 + [-(row1[0] * tx + row1[1] * ty)]]


class BatchStrokes:
    """The "strokes" augmentation (or "affine", with `strokes` False) of a list of uint8 (1 or 3, H, W) images
    -> uint8 (N, 3, h, w). "affine": the validation resize, then small random distortions of a drawing (rotation 10
    degrees, translation 8%, scale 0.85-1.15, shear 15 degrees, nearest, white fill), as Koch et al. used for
    Omniglot; "strokes" adds handwriting's own variation before them: strokes a pixel thinner or thicker (each with
    probability 0.25, at the drawing's own resolution) and a smooth elastic warp. Images of one size go through each
    step in one call."""

    def __init__(self, input_shape, strokes=True):
        self.resize, self.strokes = eval_transform(input_shape), strokes

    def __call__(self, images):
        if self.strokes:
            draws = torch.rand(len(images))
            images = by_size(images, lambda batch, rows: stroke_width(batch, draws[rows]))
        channels = max(image.shape[0] for image in images)
        resized = by_size(images, lambda batch, rows: self.resize(batch))
        batch = torch.stack([image.expand(channels, -1, -1) for image in resized])
        if self.strokes:
            batch = elastic_warp(batch, elastic_shifts(len(batch)))
        matrices = random_affine_matrices(len(batch), *batch.shape[-2:], **AFFINE_MOVES)
        return _affine(batch, matrices, fill=WHITE).expand(-1, 3, -1, -1)


class OneImage(torch.nn.Module):
    """A batch augmentation (a list of images -> (N, 3, h, w)) as a per-image transform: uint8 (C, H, W) ->
    uint8 (C, h, w)."""

    def __init__(self, batch_augmentation):
        super().__init__()
        self.batch_augmentation = batch_augmentation

    def forward(self, image):
        return self.batch_augmentation([image])[0, :image.shape[0]]


def by_size(images, fn):
    """`fn(batch, rows)` on each group of same-shape (C, H, W) images of the list `images`, stacked as `batch`
    (k, C, H, W), `rows` their places in the list -> the list of the results' rows in the list's order."""
    groups = defaultdict(list)
    for row, image in enumerate(images):
        groups[tuple(image.shape)].append(row)
    out = [None] * len(images)
    for rows in groups.values():
        for row, image in zip(rows, fn(torch.stack([images[row] for row in rows]), rows)):
            out[row] = image
    return out


def uniform(low, high):
    """A float drawn uniformly from [low, high) with torch's generator, as torchvision's transforms draw theirs."""
    return float(torch.empty(()).uniform_(low, high))


def train_transform(input_shape, augmentation="autoaugment"):
    """Training augmentation of one image: uint8 (3, H, W) -> uint8 (3, h, w).

    `autoaugment` (the original default): random resized crop, flip, one AutoAugment ImageNet
    sub-policy. `affine` and `strokes`: `BatchStrokes` on one image.
    `jitter`: scale/aspect jitter with grey padding, flip, rotation, HSV jitter.
    `none`: the validation preprocessing.
    """
    size = list(input_shape)
    if augmentation == "none":
        return eval_transform(size)
    if augmentation in ("affine", "strokes"):
        return OneImage(BatchStrokes(size, strokes=augmentation == "strokes"))
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
    top = torch.rand(len(h), dtype=torch.float64).mul_(height - h + 1).floor_()
    top = torch.where(found, top, (height - h).div(2).floor_())
    left = torch.rand(len(w), dtype=torch.float64).mul_(width - w + 1).floor_()
    left = torch.where(found, left, (width - w).div(2).floor_())
    return top.long(), left.long(), h.long(), w.long()


def crop_resize(images, boxes, flips, size):
    """Crop each of a list of uint8 (C, H, W) images to its box (`sample_crop_boxes`), resize to `size`
    (bilinear, antialiased when shrinking, as torchvision) and mirror those whose `flips` is true.
    Returns uint8 (N, C, h, w), C the largest channel count: a grey image among RGB ones becomes RGB."""
    out_height, out_width = size
    out = torch.empty((len(images), max(image.shape[0] for image in images), out_height, out_width))
    params = zip(*(b.tolist() for b in boxes), flips.tolist())
    for i, (image, (top, left, height, width, flip)) in enumerate(zip(images, params)):
        crop = image[None, :, top: top + height, left: left + width].float()
        # antialiasing only changes a shrink; plain bilinear enlarging gives the same pixels, twice as fast
        shrink = height > out_height or width > out_width
        resized = F.interpolate(crop, size, mode="bilinear", antialias=shrink)[0]
        out[i] = resized.flip(-1) if flip else resized
    return out.round_().to(torch.uint8)  # bilinear weights are convex: no value leaves [0, 255]


def _affine(images, theta, fill=GREY):
    """Warp uint8 (k, C, H, W) images by per-image inverse affine matrices `theta` (k, 2, 3), float64, that map
    an output pixel to the input point it shows, both in pixels from the image centre; nearest neighbour,
    `fill` outside: torchvision's affine and rotate, batched. Returns uint8 (k, C, H, W)."""
    k, channels, height, width = images.shape
    xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64).view(1, 2, 1)
    # elementwise float64, not a matmul: GEMM rounding varies by CPU and decides points half-way between pixels
    along_x = theta[:, :, 0, None] * xs
    along_y = theta[:, :, 1, None] * ys + (theta[:, :, 2, None] + centre)
    source = (along_y[..., :, None] + along_x[..., None, :]).round_().long()  # (k, 2, H, W), halves to even
    sx, sy = source.unbind(1)
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    index = (sy.clamp_(0, height - 1) * width + sx.clamp_(0, width - 1)).view(k, 1, -1).expand(-1, channels, -1)
    warped = images.reshape(k, channels, -1).gather(2, index).view(k, channels, height, width)
    return torch.where(inside[:, None], warped, torch.tensor(fill, dtype=torch.uint8))


def _matrices(k, row0=(1.0, 0.0, 0.0), row1=(0.0, 1.0, 0.0)):
    """(k, 2, 3) float64 inverse affine matrices from two rows whose entries are numbers or (k,) tensors."""
    rows = [torch.stack([torch.as_tensor(v, dtype=torch.float64).expand(k) for v in row], 1) for row in (row0, row1)]
    return torch.stack(rows, 1)


def _shear_x(images, m):
    """Shear by per-image factors `m` about the top-left corner: output point (x, y) shows input point (x + m y, y)."""
    m = m.double()
    return _affine(images, _matrices(len(images), row0=(1.0, m, m * images.shape[-2] / 2)))


def _shear_y(images, m):
    """Shear by per-image factors `m` about the top-left corner: output point (x, y) shows input point (x, y + m x)."""
    m = m.double()
    return _affine(images, _matrices(len(images), row1=(m, 1.0, m * images.shape[-1] / 2)))


def _translate(images, pixels, axis):
    """Shift along `axis` (0: x, 1: y) by per-image `pixels`, truncated to whole pixels as torchvision's AutoAugment."""
    rows = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
    rows[axis] = rows[axis][:2] + (-pixels.double().trunc(),)
    return _affine(images, _matrices(len(images), *rows))


def _rotate(images, degrees):
    """Anticlockwise rotation about the centre by per-image `degrees`, as torchvision's rotate."""
    radians = [math.radians(d) for d in degrees.tolist()]
    # Python's sin and cos, not torch's: vectorised float64 kernels round differently on different CPUs
    cos = torch.tensor([math.cos(r) for r in radians], dtype=torch.float64)
    sin = torch.tensor([math.sin(r) for r in radians], dtype=torch.float64)
    return _affine(images, _matrices(len(images), (cos, -sin, 0.0), (sin, cos, 0.0)))


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


def _solarize(images, fraction):
    """Invert the values at or above per-image `fraction` of 255, as torchvision's solarize for uint8."""
    # float32, as torchvision compares uint8 with its Python-float threshold: 255 * bin 2/3 is then 170, not 170.000005
    return torch.where(images >= 255.0 * fraction.float().view(-1, 1, 1, 1), 255 - images, images)


# Each op takes uint8 (k, C, H, W) images and their k magnitudes (a float tensor), as torchvision's
# AutoAugment defines the op and its magnitude.
BATCH_OPS = {
    "Identity": lambda x, m: x,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": lambda x, m: _translate(x, m, 0),
    "TranslateY": lambda x, m: _translate(x, m, 1),
    "Rotate": _rotate,
    "Brightness": lambda x, m: _blend(x.float(), 0.0, 1.0 + m),
    "Color": lambda x, m: x if x.shape[1] == 1 else _blend(x.float(), _grey_level(x), 1.0 + m),
    "Contrast": lambda x, m: _blend(x.float(), _grey_level(x).mean((1, 2, 3), keepdim=True), 1.0 + m),
    "Sharpness": lambda x, m: _sharpness(x, 1.0 + m),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, m: v2.functional.autocontrast(x),
    "Equalize": lambda x, m: v2.functional.equalize(x),
    "Invert": lambda x, m: v2.functional.invert(x),
}


def magnitude_bins(op, height, width):
    """`op`'s NUM_BINS magnitudes for a height x width image, as floats (None for an op without one), and
    whether AutoAugment negates them at random."""
    if op in NO_MAGNITUDE:
        return None, False
    if op == "Posterize":
        return tuple(float(bits) for bits in POSTERIZE_BITS), False
    first, last, signed = MAGNITUDE_RANGES[op]
    last *= {"TranslateX": width, "TranslateY": height}.get(op, 1)
    return tuple(first + (last - first) * i / (NUM_BINS - 1) for i in range(NUM_BINS)), signed


class BatchAutoAugment:
    """The `autoaugment` pipeline of `train_transform` applied to many images at once, with the same distribution.

    Every image draws its own crop, flip and AutoAugment sub-policy and sign as torchvision does;
    the crops share one parameter draw, and each op runs once per sub-policy slot on all the images
    that drew it, with per-image magnitudes (`BATCH_OPS`), instead of once per image.
    Takes a list of uint8 (1 or 3, H, W) images; returns uint8 (N, 3, h, w).
    """

    def __init__(self, input_shape):
        self.size = list(input_shape)
        self.tables = {}

    def resized_crop(self, images):
        """Random resized crop and flip of each image -> uint8 (N, C, h, w)."""
        boxes = sample_crop_boxes([image.shape[-2:] for image in images])
        return crop_resize(images, boxes, torch.rand(len(images)) < 0.5, self.size)

    def policy_table(self, height, width):
        """`IMAGENET_POLICY` as (P, 2) tensors, one row per sub-policy and one column per slot: op index into
        `BATCH_OPS`, probability, magnitude, and whether the op's sign is random. Cached per image size."""
        if (height, width) not in self.tables:
            names = list(BATCH_OPS)
            rows = []
            for policy in IMAGENET_POLICY:
                for op, probability, index in policy:
                    bins, signed = magnitude_bins(op, height, width)
                    rows.append((names.index(op), probability, 0.0 if bins is None else bins[index], signed))
            columns = list(zip(*rows))
            self.tables[height, width] = tuple(torch.tensor(c).view(len(IMAGENET_POLICY), 2) for c in columns)
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

"""The batched AutoAugment: each piece gives what torchvision gives image by image, on real Omniglot files."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

import utils.augment as augment
from utils.augment import BATCH_OPS, BatchAutoAugment, crop_resize, sample_crop_boxes
from utils.dataloader import batch_transform, list_images
from utils.images import GREY, load_image


@pytest.fixture(scope="module")
def glyphs(small1):
    """40 real grey Omniglot drawings, (1, 105, 105) uint8."""
    paths, _, _, _ = list_images(small1.parent, folder=small1.name)
    return [load_image(p, keep_grey=True) for p in paths[::25][:40]]


def colour_images(count, height, width, seed=0):
    """Smooth random RGB images (a few distinct levels per channel, like a photo's), uint8 (3, H, W)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 3, 6, 5)).astype(np.float32)
    images = torch.nn.functional.interpolate(torch.from_numpy(small), (height, width), mode="bilinear")
    return list(images.round().to(torch.uint8))


def test_crop_boxes_are_drawn_as_torchvision_draws_them():
    torch.manual_seed(0)
    for height, width in [(105, 105), (200, 300), (12, 300)]:  # the last mostly falls back to a centre crop
        top, left, h, w = sample_crop_boxes([(height, width)] * 4000)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
        crop = v2.RandomResizedCrop(32, scale=augment.CROP_SCALE, ratio=augment.CROP_RATIO)
        reference = [crop.make_params([torch.empty(1, height, width)]) for _ in range(4000)]
        for ours, key in [(h, "height"), (w, "width")]:
            theirs = torch.tensor([float(box[key]) for box in reference])
            assert abs(ours.float().mean() - theirs.mean()) < 0.04 * theirs.mean() + 0.5, (height, width, key)
            assert abs(ours.float().std() - theirs.std()) < 0.06 * theirs.std() + 0.5, (height, width, key)
        fallbacks = ((top == (height - h) // 2) & (left == (width - w) // 2) & (h == height)).float().mean()
        expected = np.mean([box["height"] == height and box["top"] == 0
                            and box["left"] == (width - box["width"]) // 2 for box in reference])
        assert abs(fallbacks - expected) < 0.03, (height, width)


def test_crop_resize_matches_torchvision(glyphs):
    images = glyphs[:20] + colour_images(4, 300, 240)  # the large ones shrink, with antialiasing
    torch.manual_seed(1)
    boxes = sample_crop_boxes([image.shape[-2:] for image in images])
    flips = torch.rand(len(images)) < 0.5
    out = crop_resize(images, boxes, flips, [48, 40])
    assert out.shape == (24, 3, 48, 40) and out.dtype == torch.uint8
    for image, result, top, left, height, width, flip in zip(images, out, *boxes, flips):
        expected = v2.functional.resized_crop(image, int(top), int(left), int(height), int(width), [48, 40],
                                              antialias=True)
        expected = expected.flip(-1) if flip else expected
        assert (result.int() - expected.expand(3, -1, -1).int()).abs().max() <= 1  # float vs integer rounding


def test_tables_are_torchvisions():
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    space, policies = getattr(aa, "_AUGMENTATION_SPACE", None), getattr(aa, "_policies", None)
    if space is None or policies is None:
        pytest.skip("this torchvision has no private AutoAugment tables to check ours against")
    assert tuple(tuple(policy) for policy in policies) == augment.IMAGENET_POLICY
    assert set(space) == set(BATCH_OPS) - {"Identity"}
    for height, width in [(105, 105), (60, 50), (331, 224)]:
        for op, (bins_fn, signed) in space.items():
            ours, our_signed = augment.magnitude_bins(op, height, width)
            theirs = bins_fn(augment.NUM_BINS, height, width)
            assert our_signed == signed and (ours is None) == (theirs is None), op
            if theirs is None:
                continue
            ours = torch.tensor(ours, dtype=theirs.dtype)
            if theirs.is_floating_point():
                # ours are the exact values rounded; torch.linspace's float32 can be an ulp off, per CPU kernel
                ulp = theirs.abs().nextafter(torch.tensor(math.inf)) - theirs.abs()
                assert ((ours - theirs).abs() <= ulp).all(), (op, height, width, ours, theirs)
            else:
                assert torch.equal(ours, theirs), op


def torchvision_op(image, op, magnitude):
    """One uint8 (C, H, W) image through torchvision's public functional op, called as its AutoAugment calls it."""
    F = v2.functional
    shear = math.degrees(math.atan(magnitude))  # torchvision's AutoAugment shears by the angle whose tangent is m
    calls = {
        "ShearX": lambda: F.affine(image, 0.0, [0, 0], 1.0, [shear, 0.0], fill=GREY, center=[0, 0]),
        "ShearY": lambda: F.affine(image, 0.0, [0, 0], 1.0, [0.0, shear], fill=GREY, center=[0, 0]),
        "TranslateX": lambda: F.affine(image, 0.0, [int(magnitude), 0], 1.0, [0.0, 0.0], fill=GREY),
        "TranslateY": lambda: F.affine(image, 0.0, [0, int(magnitude)], 1.0, [0.0, 0.0], fill=GREY),
        "Rotate": lambda: F.rotate(image, magnitude, fill=GREY),
        "Brightness": lambda: F.adjust_brightness(image, 1.0 + magnitude),
        "Color": lambda: F.adjust_saturation(image, 1.0 + magnitude),
        "Contrast": lambda: F.adjust_contrast(image, 1.0 + magnitude),
        "Sharpness": lambda: F.adjust_sharpness(image, 1.0 + magnitude),
        "Posterize": lambda: F.posterize(image, int(magnitude)),
        "Solarize": lambda: F.solarize(image, 255.0 * magnitude),
        "AutoContrast": lambda: F.autocontrast(image),
        "Equalize": lambda: F.equalize(image),
        "Invert": lambda: F.invert(image),
    }
    return calls[op]()


def source_points(op, magnitude, height, width):
    """The exact input point each output pixel of a geometric op shows, as float64 (H, W) pixel indices x, y."""
    x = torch.arange(width, dtype=torch.float64).expand(height, width)
    y = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    if op == "ShearX":  # about the top-left corner, half a pixel before the first pixel's centre
        return x + magnitude * (y + 0.5), y
    if op == "ShearY":
        return x, y + magnitude * (x + 0.5)
    if op == "TranslateX":
        return x - int(magnitude), y
    if op == "TranslateY":
        return x, y - int(magnitude)
    cx, cy, angle = (width - 1) / 2, (height - 1) / 2, math.radians(magnitude)  # Rotate: anticlockwise about the centre
    cos, sin = math.cos(angle), math.sin(angle)
    return cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos


def sample_nearest(image, x, y):
    """uint8 (C, H, W) image at the pixels nearest the points x, y (each (H, W)), GREY outside it."""
    _, height, width = image.shape
    ix, iy = x.round().long(), y.round().long()
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    return torch.where(inside, image[:, iy.clamp(0, height - 1), ix.clamp(0, width - 1)], GREY)


# torchvision's float32 grid is within 1e-4 px of the exact point for images up to 400 px, whatever the CPU's rounding,
# so only a point within TIE (px) of half-way between pixels may round either way in either implementation
TIE = 1e-3
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")


@pytest.mark.parametrize("op", sorted(set(BATCH_OPS) - {"Identity"}))
def test_each_batched_op_matches_torchvision(op, glyphs):
    for images in (torch.stack(glyphs[:20]), torch.stack(colour_images(20, 60, 50))):
        bins, signed = augment.magnitude_bins(op, *images.shape[-2:])
        magnitudes = torch.zeros(len(images)) if bins is None else torch.tensor(bins * 2)  # every bin, twice
        if signed:
            magnitudes[augment.NUM_BINS:] *= -1
        ours = BATCH_OPS[op](images.clone(), magnitudes)
        assert ours.shape == images.shape and ours.dtype == torch.uint8
        for image, result, magnitude in zip(images, ours, magnitudes.tolist()):
            expected = torchvision_op(image, op, magnitude)
            if op in GEOMETRIC:
                x, y = source_points(op, magnitude, *image.shape[-2:])
                nudges = [(dx, dy) for dx in (-TIE, TIE) for dy in (-TIE, TIE)]
                nearest = torch.stack([sample_nearest(image, x + dx, y + dy) for dx, dy in nudges])
                settled = (nearest == nearest[:1]).all(1).all(0)  # the same value whichever way a tie goes
                assert settled.float().mean() > 0.7, (op, magnitude)  # ties are rare, so most pixels are checked
                for name, out in (("ours", result), ("torchvision", expected)):
                    assert (nearest == out).all(1).any(0).all(), (op, magnitude, name)
                assert torch.equal(result[:, settled], expected[:, settled]), (op, magnitude)
            elif op in BLENDS:
                # a float blend is truncated to uint8, so an ulp of rounding (FMA or not) can cross an integer
                assert (result.int() - expected.int()).abs().max() <= 1, (op, magnitude)
            else:
                assert torch.equal(result, expected), (op, magnitude)  # integer arithmetic or torchvision's own op


def test_sub_policies_are_drawn_with_torchvisions_probabilities(monkeypatch):
    transform = BatchAutoAugment([16, 16])
    counts = {}
    for name, op in list(BATCH_OPS.items()):
        def counting(images, magnitudes, name=name, op=op):
            counts[name] = counts.get(name, 0) + len(images)
            return op(images, magnitudes)
        monkeypatch.setitem(BATCH_OPS, name, counting)
    torch.manual_seed(3)
    n = 20000
    transform.auto_augment(torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8))
    policies = augment.IMAGENET_POLICY
    expected = {}
    for policy in policies:
        for op, probability, _ in policy:
            expected[op] = expected.get(op, 0) + n * probability / len(policies)
    assert set(counts) == {op for op, count in expected.items() if count > 0}
    for op, count in expected.items():
        assert abs(counts.get(op, 0) - count) < 4 * count ** 0.5 + 1, (op, counts.get(op), count)


def test_batch_autoaugment_output(glyphs):
    images = glyphs + colour_images(1, 90, 70)  # grey and RGB mixed
    torch.manual_seed(0)
    out = BatchAutoAugment([48, 40])(images)
    assert out.shape == (41, 3, 48, 40) and out.dtype == torch.uint8
    assert len({tuple(x.flatten().tolist()) for x in out}) > 35  # every image augmented on its own
    assert not torch.equal(out, BatchAutoAugment([48, 40])(images))  # random, not fixed


def test_stroke_augmentation_changes_stroke_width_and_warps_but_keeps_white_paper():
    from utils.augment import elastic_shifts, elastic_warp, stroke_width

    white = torch.full((1, 105, 105), 255, dtype=torch.uint8)
    transform = augment.train_transform([48, 48], "strokes")
    torch.manual_seed(0)
    assert all(torch.equal(transform(white), torch.full((1, 48, 48), 255, dtype=torch.uint8)) for _ in range(5))
    drawing = white.clone()
    drawing[:, 30:75, 50:54] = 0  # a vertical stroke 4 pixels wide
    widened = stroke_width(drawing.expand(3, -1, -1)[:, None], torch.tensor([0.1, 0.3, 0.9]))
    assert [int((image[0, 50] < 128).sum()) for image in widened] == [2, 6, 4]  # thinner, thicker, unchanged
    torch.manual_seed(0)
    warped = elastic_warp(drawing[None], elastic_shifts(1))[0]
    assert warped.shape == drawing.shape and not torch.equal(warped, drawing)
    ink = (warped < 128).float().sum() / (drawing < 128).float().sum()
    assert 0.7 < ink < 1.3  # moved, not erased or smeared


def test_the_3x3_neighbourhood_in_uint8_is_max_pools():
    from utils.augment import neighbourhood

    images = torch.randint(0, 256, (5, 3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = images.float()
    assert torch.equal(neighbourhood(images, torch.maximum), F.max_pool2d(pixels, 3, 1, 1).to(torch.uint8))
    assert torch.equal(neighbourhood(images, torch.minimum), (-F.max_pool2d(-pixels, 3, 1, 1)).to(torch.uint8))


def test_batched_affine_moves_are_torchvisions_random_affine_drawn_alike():
    from utils.augment import AFFINE_MOVES, WHITE, _affine, random_affine_matrices

    drawing = torch.full((1, 48, 40), 255, dtype=torch.uint8)
    drawing[:, 10:38, 18:23], drawing[:, 20:24, 4:36] = 0, 0
    moves = AFFINE_MOVES
    reference = v2.RandomAffine(moves["degrees"], (moves["translate"],) * 2, moves["scale"], moves["shear"], fill=WHITE)
    for seed in range(20):
        torch.manual_seed(seed)
        ours = _affine(drawing[None], random_affine_matrices(1, 48, 40, **moves), fill=WHITE)[0]
        torch.manual_seed(seed)
        theirs = reference(drawing)
        assert not torch.equal(ours, drawing)
        # nearest neighbour: a point half-way between pixels may round either way in float32 and float64
        assert (ours == theirs).float().mean() > 0.99, seed


def test_batch_strokes_keeps_each_image_in_its_place_whatever_its_size():
    from utils.augment import BatchStrokes, elastic_warp

    white = torch.full((1, 105, 105), 255, dtype=torch.uint8)
    drawing = white.clone()
    drawing[:, 20:85, 40:60] = 0
    images = [drawing, white, colour_images(1, 90, 70)[0], drawing.clone(), white.clone()]
    torch.manual_seed(0)
    out = BatchStrokes([48, 40])(images)
    assert out.shape == (5, 3, 48, 40) and out.dtype == torch.uint8
    assert torch.equal(out[1], torch.full((3, 48, 40), 255, dtype=torch.uint8)) and torch.equal(out[1], out[4])
    assert not torch.equal(out[0], out[3]) and (out[0] < 128).any() and (out[2] != 255).any()
    shifts = torch.rand(3, 2, 5, 5) * 0.1  # a batch warps as its images one by one
    batch = torch.stack([drawing, white, drawing.flip(-1)])
    assert torch.equal(elastic_warp(batch, shifts),
                       torch.cat([elastic_warp(image[None], shift[None]) for image, shift in zip(batch, shifts)]))


def test_the_loader_augments_strokes_and_affine_as_a_batch():
    from utils.augment import BatchStrokes

    for name, strokes in (("strokes", True), ("affine", False)):
        transform = batch_transform([48, 48], True, name)
        assert isinstance(transform, BatchStrokes) and transform.strokes is strokes

"""The batched AutoAugment: each piece gives what torchvision gives image by image, on real Omniglot files."""
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import utils.augment as augment
from utils.augment import BATCH_OPS, BatchAutoAugment, crop_resize, sample_crop_boxes
from utils.dataloader import list_images
from utils.images import load_image

pytestmark = pytest.mark.skipif(not BatchAutoAugment.supported(), reason="this torchvision lacks the AutoAugment tables")


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
        expected = np.mean([box["height"] == height and box["top"] == 0 and box["left"] == (width - box["width"]) // 2
                            for box in reference])
        assert abs(fallbacks - expected) < 0.03, (height, width)


def test_crop_resize_matches_torchvision(glyphs):
    images = glyphs[:20] + colour_images(4, 300, 240)  # the large ones shrink, with antialiasing
    torch.manual_seed(1)
    boxes = sample_crop_boxes([image.shape[-2:] for image in images])
    flips = torch.rand(len(images)) < 0.5
    out = crop_resize(images, boxes, flips, [48, 40])
    assert out.shape == (24, 3, 48, 40) and out.dtype == torch.uint8
    for image, result, top, left, height, width, flip in zip(images, out, *boxes, flips):
        expected = v2.functional.resized_crop(image, int(top), int(left), int(height), int(width), [48, 40], antialias=True)
        expected = expected.flip(-1) if flip else expected
        assert (result.int() - expected.expand(3, -1, -1).int()).abs().max() <= 1  # float vs integer rounding


@pytest.mark.parametrize("op", sorted(v2.AutoAugment._AUGMENTATION_SPACE))
def test_each_batched_op_matches_torchvision(op, glyphs):
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=128)
    bins_fn, signed = aa._AUGMENTATION_SPACE[op]
    generator = torch.Generator().manual_seed(2)
    for images in (torch.stack(glyphs[:12]), torch.stack(colour_images(12, 60, 50))):
        bins = bins_fn(10, *images.shape[-2:])
        if bins is None:
            magnitudes = torch.zeros(len(images))
        else:
            magnitudes = bins[torch.randint(10, (len(images),), generator=generator)].float()
            if signed:
                magnitudes = torch.where(torch.rand(len(images), generator=generator) < 0.5, -magnitudes, magnitudes)
        ours = BATCH_OPS[op](images.clone(), magnitudes)
        assert ours.shape == images.shape and ours.dtype == torch.uint8
        for image, result, magnitude in zip(images, ours, magnitudes.tolist()):
            expected = aa._apply_image_or_video_transform(image, op, magnitude, interpolation=aa.interpolation, fill=aa._fill)
            differ = (result.int() - expected.int()).abs()
            # nearest-neighbour warps may round a pixel on a sampling boundary the other way
            assert differ.max() <= 1 or (differ > 0).float().mean() < 0.005, (op, magnitude, differ.max())
            assert (differ > 1).float().mean() < 0.005, (op, magnitude)


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
    policies = transform.autoaugment._policies
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

"""Listing, splitting and pair sampling on real files on disk."""
import random
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from utils.augment import train_transform
from utils.dataloader import (ClassBatches, PairItems, class_groups, list_images, split_by_class, split_by_image,
                              split_indices)
from utils.engine import pair_sides
from utils.errors import DataError
from utils.images import INK_LEVEL, INK_MARGIN, MAX_INK_SIDE, ink_square, load_image, preprocess, resize


def test_omniglot_layout_lists_one_class_per_character(omniglot_subset):
    paths, labels, class_names, skipped = list_images(omniglot_subset)
    alphabets = sorted(p.name for p in (omniglot_subset / "images_background").iterdir())
    assert len(alphabets) == 2 and len(class_names) == 12 and len(paths) == 240 and skipped == 0
    assert all(name.split("/")[0] in alphabets for name in class_names)
    for path, label in zip(paths, labels):
        alphabet, character = class_names[label].split("/")
        assert path.split("/")[-3:-1] == [alphabet, character]
    assert Counter(labels) == {label: 20 for label in range(12)}


def test_own_data_layout_lists_one_class_per_folder(tmp_path, small1):
    root = tmp_path / "own" / "images_background"
    sources = sorted((small1 / "Greek").iterdir())[:3]
    for i, source in enumerate(sources):
        shutil.copytree(source, root / f"class_{i}")
    (root / "class_0" / ".DS_Store").write_bytes(b"junk")
    (root / "class_1" / "notes.txt").write_text("not an image")
    paths, labels, class_names, skipped = list_images(tmp_path / "own", train_own_data=True)
    assert class_names == ["class_0", "class_1", "class_2"]
    assert len(paths) == 60 and skipped == 2
    assert all(f"class_{label}" in path for path, label in zip(paths, labels))


def test_missing_or_empty_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        list_images(tmp_path)
    (tmp_path / "images_background" / "Alphabet" / "character01").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)


def test_split_by_image_is_deterministic_and_complete():
    labels = [i % 7 for i in range(100)]
    train, val = split_by_image(labels, 0.9, seed=0)
    assert (train, val) == split_by_image(labels, 0.9, seed=0)
    assert len(train) == 90 and len(val) == 10 and sorted(train + val) == list(range(100))
    assert train != list(range(90))  # shuffled, not the listing order


def test_split_by_class_keeps_validation_classes_unseen():
    labels = [i % 10 for i in range(200)]
    train, val = split_indices(labels, "class", 0.8, seed=0)
    assert (train, val) == split_by_class(labels, 0.8, seed=0)
    train_classes, val_classes = {labels[i] for i in train}, {labels[i] for i in val}
    assert len(train_classes) == 8 and len(val_classes) == 2 and not train_classes & val_classes


def test_items_hold_one_positive_and_one_negative_pair(omniglot_subset):
    paths, labels, class_names, _ = list_images(omniglot_subset)
    label_of = dict(zip(paths, labels))
    dataset = PairItems(paths, labels, (32, 32), items=1, train=False)
    for step in range(8):
        (a, b), (c, d) = dataset.sample_pair(dataset.generators(step)[0])  # the step's first (and only) item
        assert len({a, b, c}) == 3 and label_of[a] == label_of[b] == label_of[c] != label_of[d]
        batch = dataset[step]
        images, item_labels = batch.images[0], batch.labels[0]
        assert images.shape == (2, 2, 3, 32, 32) and images.dtype == torch.uint8  # made float on the device
        assert sorted(item_labels.tolist()) == [0.0, 1.0]
        expected = {1.0: (a, b), 0.0: (c, d)}
        first, second, labels = pair_sides(batch, torch.device("cpu"))
        assert first.dtype == torch.float32 and labels.tolist() == item_labels.tolist()
        for k, label in enumerate(item_labels.tolist()):
            assert torch.equal(first[k], preprocess(expected[label][0], (32, 32)))  # what predict.py would feed
            assert torch.equal(second[k], preprocess(expected[label][1], (32, 32)))


def test_class_with_fewer_than_three_images_is_never_positive(tmp_path, small1):
    root = tmp_path / "images_background"
    characters = sorted((small1 / "Latin").iterdir())[:4]
    counts = [2, 20, 1, 20]
    for character, count in zip(characters, counts):
        (root / character.name).mkdir(parents=True)
        for image in sorted(character.glob("*.png"))[:count]:
            shutil.copy(image, root / character.name / image.name)
    paths, labels, _, _ = list_images(tmp_path, train_own_data=True)
    dataset = PairItems(paths, labels, (32, 32), items=1)
    label_of = dict(zip(paths, labels))
    rng = random.Random(0)
    positives, negatives = set(), set()
    for _ in range(300):
        (a, _b, ), (_c, d) = dataset.sample_pair(rng)
        positives.add(label_of[a])
        negatives.add(label_of[d])
    assert positives == {1, 3}
    assert negatives == {0, 1, 2, 3}  # every class, the last one included, serves as a negative


def test_training_items_are_augmented_at_the_input_size(omniglot_subset):
    paths, labels, _, _ = list_images(omniglot_subset)
    for augmentation in ("autoaugment", "jitter"):
        dataset = PairItems(paths, labels, (48, 40), items=1, train=True, augmentation=augmentation)
        images = dataset[0].images[0]
        assert images.shape == (2, 2, 3, 48, 40) and images.dtype == torch.uint8
        # each augmented on its own
        assert len({tuple(image.flatten().tolist()) for image in images.flatten(0, 1)}) == 4


def test_any_image_mode_becomes_three_channel_rgb(tmp_path):
    modes = {"L": 128, "LA": (128, 255), "P": 3, "RGBA": (10, 20, 30, 255), "1": 1, "I;16": 40000}
    for mode, colour in modes.items():
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (40, 50), colour).save(path)
        tensor = preprocess(path, (32, 32))
        assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32, mode
        assert 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_same_group_negatives_stay_in_the_positive_alphabet(omniglot_subset):
    paths, labels, class_names, _ = list_images(omniglot_subset)
    groups = class_groups(class_names)
    alphabet = {path: groups[label] for path, label in zip(paths, labels)}
    character = {path: class_names[label] for path, label in zip(paths, labels)}
    rng = random.Random(0)
    for negatives, same_share in (("same_group", 1.0), ("any", None)):
        dataset = PairItems(paths, labels, [32, 32], items=1, train=False, groups=groups, negatives=negatives)
        pairs = [dataset.sample_pair(rng) for _ in range(400)]
        assert all(character[a] == character[b] == character[c] != character[d] for (a, b), (c, d) in pairs)
        same = sum(alphabet[c] == alphabet[d] for _, (c, d) in pairs) / len(pairs)
        if same_share:
            assert same == same_share
        else:  # 5 of the 11 other characters share the alphabet
            assert 0.35 < same < 0.56


def test_a_class_alone_in_its_group_draws_negatives_elsewhere(omniglot_subset):
    paths, labels, class_names, _ = list_images(omniglot_subset)
    groups = ["only" if label == 0 else "rest" for label in range(len(class_names))]
    dataset = PairItems(paths, labels, [32, 32], items=1, train=False, groups=groups, negatives="same_group")
    assert 0 not in dataset.group_mates and dataset.group_mates[1] == list(range(2, 12))


def test_affine_augmentation_distorts_drawings_and_fills_white(omniglot_subset):
    transform = train_transform([48, 48], "affine")
    white = torch.full((3, 105, 105), 255, dtype=torch.uint8)
    assert torch.equal(transform(white), torch.full((3, 48, 48), 255, dtype=torch.uint8))  # no grey or black corners
    drawing = preprocess(next((omniglot_subset / "images_background").rglob("*.png")), [48, 48])
    drawing = (drawing * 255).round().to(torch.uint8)
    torch.manual_seed(0)
    outputs = [transform(drawing) for _ in range(4)]
    assert all(out.shape == (3, 48, 48) and out.dtype == torch.uint8 for out in outputs)
    assert len({tuple(out.flatten().tolist()) for out in outputs}) == 4  # each draw distorts differently
    ink = [(out < 128).float().mean().item() for out in outputs]
    reference = (drawing < 128).float().mean().item()
    assert all(0.5 * reference < share < 2.0 * reference for share in ink)  # a distortion, not a different image


def test_crop_to_ink_frames_the_drawing_wherever_and_however_small_it_was_drawn(small1):
    path = sorted(small1.glob("Greek/*/*.png"))[3]
    drawing = load_image(str(path), keep_grey=True)
    source = (drawing[0] < INK_LEVEL).nonzero()
    assert (source.max(0).values - source.min(0).values).max() < 105 / (1 + 2 * INK_MARGIN) - 5  # not framed yet
    square = ink_square(drawing)
    assert square.shape == (1, 105, 105) and square.dtype == torch.uint8
    ink = (square[0] < INK_LEVEL).nonzero()
    low, high = ink.min(0).values, ink.max(0).values
    margin = 105 * INK_MARGIN / (1 + 2 * INK_MARGIN)
    assert (high - low).max() >= 105 - 2 * margin - 3  # the larger side spans the frame but for the margins
    assert abs((low + high).float() / 2 - 52).max() <= 2  # centred
    moved = torch.full_like(drawing, 255)
    moved[:, 50:102, 3:55] = resize(drawing, (52, 52))  # half the size, in a corner
    again, other = ink_square(moved), ink_square(load_image(str(sorted(small1.glob("Latin/*/*.png"))[0]), True))
    iou = lambda a, b: ((a < INK_LEVEL) & (b < INK_LEVEL)).sum() / ((a < INK_LEVEL) | (b < INK_LEVEL)).sum()
    assert iou(square, again) > 0.55 > 0.35 > iou(square, other)  # the same character, framed the same way
    corner = torch.full((3, 40, 60), 255, dtype=torch.uint8)
    corner[:, :4, 56:] = 0  # ink at the very corner: the square leaves the image, white beyond
    framed = ink_square(corner)
    assert framed.shape == (3, 60, 60) and framed[:, 20:40, 20:40].max() == 0  # the 4x4 ink, framed
    assert framed[:, :4].min() == 255 and framed[:, :, -4:].min() == 255  # paper beyond the image: white
    streak = torch.full((1, 1, 200_000), 255, dtype=torch.uint8)
    streak[..., ::7] = 0  # a 1 x 200,000 drawing: its square is bounded, not 280,000 pixels a side
    assert ink_square(streak).shape == (1, MAX_INK_SIDE, MAX_INK_SIDE)
    blank = torch.full((3, 30, 30), 255, dtype=torch.uint8)
    assert torch.equal(ink_square(blank), blank)  # no ink: kept as it is


def test_training_batches_crop_to_ink_as_prediction_does(omniglot_subset):
    paths, labels, names, _ = list_images(omniglot_subset)
    batches = ClassBatches(paths, labels, (32, 32), batch_size=8, images_per_class=4, augmentation="none",
                           crop_to_ink=True)
    drawn, _, _ = batches.sample_batch(batches.generators(0)[0])
    images, _ = batches[0]
    for image, path in zip(images, drawn):
        expected = (preprocess(path, [32, 32], crop_to_ink=True) * 255).round().to(torch.uint8)
        torch.testing.assert_close(image, expected, atol=1, rtol=0)
        assert not torch.equal(expected, (preprocess(path, [32, 32]) * 255).round().to(torch.uint8))
    items = PairItems(paths, labels, (32, 32), 2, augmentation="none", crop_to_ink=True)
    pairs, _ = items.sample_step(items.generators(0)[0])
    torch.testing.assert_close(items[0].images[0, 0, 0], (preprocess(pairs[0][0], [32, 32], crop_to_ink=True)
                                                         * 255).round().to(torch.uint8), atol=1, rtol=0)

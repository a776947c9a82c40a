"""Class batches scored on every pair, balanced pair weights, and the per-epoch one-shot check."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import TRAIN, make_subset, run

from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.dataloader import (TRANSFORMS, ClassBatch, ClassBatches, DrawingCache, PairItems, class_groups, cut_to_top,
                              list_images, load_drawing, transformed)
from utils.engine import Scored, evaluate_pairs, score_batch, step_loss
from utils.history import LossHistory
from utils.images import load_image
from utils.losses import COSINE_SCALE, balanced_weights, cosine_ranking_loss, pair_bce, ranking_loss
from utils.oneshot import EmbeddedImages, evaluate_split


@pytest.fixture
def listed(omniglot_subset):
    paths, labels, names, _ = list_images(omniglot_subset)
    return paths, labels, class_groups(names)


def test_class_batches_hold_classes_of_one_alphabet_with_their_images(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group")
    assert len(batches) == len(paths) // 16
    label_of = dict(zip(paths, labels))
    rng = random.Random(0)
    for _ in range(20):
        drawn, turns, drawn_labels = batches.sample_batch(rng)
        assert turns == [0] * 16
        assert [label_of[p] for p in drawn] == drawn_labels  # each label is its image's class
        assert len(set(drawn)) == 16 and len(set(drawn_labels)) == 4
        assert all(drawn_labels.count(c) == 4 for c in set(drawn_labels))
        assert len({groups[c] for c in drawn_labels}) == 1
    images, classes = batches[0]
    assert isinstance(batches[0], ClassBatch)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and classes.shape == (16,)


def test_class_batches_mix_alphabets_with_any_negatives(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=2, groups=groups)
    rng = random.Random(0)
    mixed = [len({groups[c] for c in batches.sample_batch(rng)[2]}) > 1 for _ in range(20)]
    assert any(mixed)


def transforms_drawn(batches, paths, labels, draws):
    """The transforms (turns, mirrors) `draws` batches used, checking each drawn label is its class's plus the
    transform times the class count, and that a batch is one transform, so its negatives stay within it."""
    stride = max(labels) + 1
    label_of = dict(zip(paths, labels))
    rng = random.Random(0)
    seen = set()
    for _ in range(draws):
        drawn, transforms, drawn_labels = batches.sample_batch(rng)
        assert [label_of[p] + t * stride for p, t in zip(drawn, transforms)] == drawn_labels
        assert len(set(transforms)) == 1
        seen |= set(transforms)
    return seen


def test_class_rotations_turn_whole_classes_into_new_classes(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_rotations=True)
    assert transforms_drawn(batches, paths, labels, draws=40) == {0, 1, 2, 3}
    drawn, turns, _ = batches.sample_batch(batches.generators(1)[0])
    images, _ = batches[1]  # the batch of step 1 is the one its generator draws
    upright = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none")
    unturned = upright.transform([load_image(p, keep_grey=True) for p in drawn])
    for image, plain, k in zip(images, unturned, turns):
        torch.testing.assert_close(image, torch.rot90(plain, k, dims=(1, 2)), atol=1, rtol=0)  # square: turn commutes


def test_every_pair_of_a_class_batch_is_scored_as_the_pair_forward_scores_it():
    torch.manual_seed(0)
    model = SiameseNetwork((32, 32), "vgg16_bn").eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    classes = torch.tensor([3, 3, 5, 5, 7, 7])
    with torch.no_grad():
        logits, targets, pairs, embeddings = score_batch(model, ClassBatch(images, classes), torch.device("cpu"))
        first, second = torch.triu_indices(6, 6, 1)
        as_pairs = model(images[first].float() / 255, images[second].float() / 255).squeeze(1)
    assert logits.shape == targets.shape == (15,) and torch.equal(pairs, torch.stack([first, second]))
    assert embeddings is None
    assert targets.tolist() == [float(classes[i] == classes[j]) for i, j in zip(first, second)]
    torch.testing.assert_close(logits, as_pairs, atol=1e-4, rtol=1e-4)


def test_balanced_weights_give_positives_and_negatives_half_each():
    targets = torch.tensor([1.0, 0, 0, 0, 0, 1, 0])
    weights = balanced_weights(targets)
    assert weights[targets == 1].sum().item() == pytest.approx(0.5)
    assert weights[targets == 0].sum().item() == pytest.approx(0.5)
    logits = torch.randn(7)
    loss = F.binary_cross_entropy_with_logits(logits, targets, weights, reduction="sum")
    each = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert loss.item() == pytest.approx(0.5 * each[targets == 1].mean().item() + 0.5 * each[targets == 0].mean().item())
    balanced = torch.tensor([1.0, 0.0] * 4)  # pair items: the plain mean, as before
    assert torch.allclose(balanced_weights(balanced), torch.full((8,), 1 / 8))


def test_label_smoothing_moves_the_bce_targets_and_stops_at_a_finite_logit():
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    smoothed, weights = pair_bce(logits, targets, 0.2)
    by_hand = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.9, 0.1, 0.1, 0.1]), weights, reduction="sum")
    torch.testing.assert_close(smoothed, by_hand)
    torch.testing.assert_close(pair_bce(logits, targets, 0.0)[0], pair_bce(logits, targets)[0])
    sure = torch.tensor([math.log(9.0), -math.log(9.0), -math.log(9.0), -math.log(9.0)], requires_grad=True)
    pair_bce(sure, targets, 0.2)[0].backward()  # sigmoid(+-ln 9) = 0.9 / 0.1: the smoothed targets themselves
    assert sure.grad.abs().max().item() < 1e-6


def test_step_loss_smooths_what_is_minimised_and_reports_the_plain_bce():
    targets = torch.tensor([1.0, 0.0, 0.0])
    logits = torch.tensor([8.0, -8.0, -8.0])
    total, bce, _ = step_loss(Scored(logits, targets, None, None), None, smoothing=0.1)
    assert bce.item() < 1e-3 < total.item()  # near-certain logits: no BCE left, but smoothing pulls them back
    torch.testing.assert_close(bce, pair_bce(logits, targets)[0])


def test_ranking_loss_is_the_one_shot_softmax_over_each_images_positive_and_negatives():
    torch.manual_seed(0)
    labels = torch.tensor([4, 4, 4, 9, 9, 2, 2])
    count = len(labels)
    first, second = torch.triu_indices(count, count, 1)
    logits = torch.randn(len(first), requires_grad=True)
    loss = ranking_loss(logits, labels, torch.stack([first, second]))
    score = {}
    for k, (i, j) in enumerate(zip(first.tolist(), second.tolist())):
        score[i, j] = score[j, i] = logits[k]
    tasks = []  # each (image, same-class image): pick the latter among it and the image's other-class images
    for i in range(count):
        negatives = [score[i, j] for j in range(count) if labels[j] != labels[i]]
        for p in range(count):
            if p != i and labels[p] == labels[i]:
                tasks.append(-torch.log_softmax(torch.stack([score[i, p]] + negatives), 0)[0])
    assert len(tasks) == 3 * 2 + 2 + 2
    torch.testing.assert_close(loss, torch.stack(tasks).mean())
    loss.backward()
    same = (labels[first] == labels[second])
    assert (logits.grad[same] < 0).all() and (logits.grad[~same] > 0).all()  # raise positives, lower negatives
    separated = torch.where(same, 20.0, -20.0)
    assert ranking_loss(separated, labels, torch.stack([first, second])).item() < 1e-6


def test_cosine_ranking_loss_ranks_the_directions_of_embeddings_whatever_their_length():
    torch.manual_seed(0)
    labels = torch.tensor([4, 4, 4, 9, 9, 2, 2])
    pairs = torch.triu_indices(7, 7, 1)
    embeddings = torch.randn(7, 3, 2, 2)  # a backbone's map, flattened inside
    loss = cosine_ranking_loss(embeddings, labels, pairs)
    unit = embeddings.flatten(1) / embeddings.flatten(1).norm(dim=1, keepdim=True)
    cosines = torch.stack([unit[i] @ unit[j] for i, j in zip(*pairs.tolist())])
    torch.testing.assert_close(loss, ranking_loss(COSINE_SCALE * cosines, labels, pairs))
    lengths = torch.rand(7, 1, 1, 1) * 10 + 0.1
    torch.testing.assert_close(cosine_ranking_loss(embeddings * lengths, labels, pairs), loss)
    one_hot = F.one_hot(torch.tensor([0, 0, 0, 1, 1, 2, 2]), 12).float()  # each class its own direction
    assert cosine_ranking_loss(one_hot, labels, pairs) < 0.01 < loss


def test_the_cosine_loss_adds_the_embeddings_ranking_and_trains_the_backbone_through_it():
    torch.manual_seed(0)
    model = SiameseNetwork((32, 32), "resnet18").train()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = ClassBatch(images, torch.tensor([3, 3, 5, 5, 7, 7]))
    scored = score_batch(model, batch, torch.device("cpu"), with_embeddings=True)
    assert scored.embeddings.shape == (6, 512)
    total, bce, _ = step_loss(scored, batch.labels, "bce_ranking_cosine")
    expected = bce + ranking_loss(scored.logits, batch.labels, scored.pairs) \
        + cosine_ranking_loss(scored.embeddings, batch.labels, scored.pairs)
    torch.testing.assert_close(total, expected)
    cosine_ranking_loss(scored.embeddings, batch.labels, scored.pairs).backward()
    assert model.resnet18.conv1.weight.grad.abs().sum() > 0  # it trains the backbone, and leaves the head alone
    assert model.fully_connect1.weight.grad is None and model.fully_connect2.weight.grad is None


class ClassIndicator(torch.nn.Module):
    """A stand-in network whose embedding is the mean intensity: classes drawn as distinct greys are told apart."""

    def embed(self, images):
        return images.mean((1, 2, 3))[:, None]

    def score(self, emb1, emb2):
        return -(emb1 - emb2).abs()


def test_validation_one_shot_is_perfect_for_a_separating_embedding_and_caps_the_way(tmp_path):
    from PIL import Image

    paths, labels = [], []
    for c in range(5):
        for k in range(3):
            path = tmp_path / f"{c}_{k}.png"
            Image.new("L", (40, 40), 40 * c + 20).save(path)
            paths.append(str(path))
            labels.append(c)
    predictor = Siamese.from_network(ClassIndicator(), (32, 32), torch.device("cpu"))
    accuracy, way = evaluate_split(predictor, paths, labels, way=20, trials=50)
    assert way == 5 and accuracy == 1.0
    assert evaluate_split(predictor, paths[:3], labels[:3]) == (None, 1)


def test_embedding_matches_the_network_on_preprocessed_images(tmp_path):
    from PIL import Image

    from utils.images import preprocess

    path = tmp_path / "a.png"
    Image.effect_noise((50, 40), 60).convert("RGB").save(path)
    model = SiameseNetwork((32, 32)).eval()
    embedded = Siamese.from_network(model, (32, 32), torch.device("cpu")).embed([str(path)] * 3, batch_size=2)
    with torch.no_grad():
        direct = model.embed(preprocess(str(path), (32, 32))[None])
    assert embedded.shape == (3, 512)
    torch.testing.assert_close(embedded, direct.expand(3, -1), atol=1e-4, rtol=1e-4)


def test_best_epoch_follows_the_chosen_criterion(tmp_path):
    history = LossHistory(tmp_path / "log")
    history.append(0.6, 0.50, 0.30)
    assert history.is_best("val_loss") and history.is_best("oneshot")
    history.append(0.5, 0.45, 0.25)  # lower loss, worse one-shot
    assert history.is_best("val_loss") and not history.is_best("oneshot")
    history.append(0.4, 0.47, 0.40)
    assert not history.is_best("val_loss") and history.is_best("oneshot")
    assert (tmp_path / "log" / "epoch_val_oneshot.txt").read_text().split() == ["0.3", "0.25", "0.4"]


@pytest.mark.slow
def test_tensorboard_events_hold_each_epochs_figures(small1, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an extra: pip install -r requirements-extras.txt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_subset(small1, tmp_path / "data", alphabets=2, characters=5, drawers=8)
    save_dir = tmp_path / "logs"
    result = run("train.py", "--dataset_path", data, "--save_dir", save_dir, *TRAIN, "--Epoch", "2", "--batch_size",
                 "8", "--pairing", "batch", "--images_per_class", "2", "--split_by", "class", "--train_ratio", "0.6",
                 "--oneshot_way", "4", "--best_by", "oneshot", "--tensorboard", "True")
    assert result.returncode == 0, result.stderr[-2000:]
    (log_dir,) = save_dir.glob("loss_*")
    events = EventAccumulator(str(log_dir)).Reload()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "oneshot/val"} <= set(
        events.Tags()["scalars"])
    logged = [event.value for event in events.Scalars("loss/val")]
    written = [float(x) for x in (log_dir / "epoch_val_loss.txt").read_text().split()]
    assert [event.step for event in events.Scalars("loss/val")] == [1, 2]
    assert logged == pytest.approx(written, rel=1e-6)
    oneshots = [float(x) for x in (log_dir / "epoch_val_oneshot.txt").read_text().split()]
    assert [event.value for event in events.Scalars("oneshot/val")] == pytest.approx(oneshots, rel=1e-6)
    assert "val 4-way one-shot" in result.stdout
    saved = torch.load(save_dir / "best_epoch_weights.pth", weights_only=True)
    epoch_file = torch.load(next(save_dir.glob("ep002-*.pth")), weights_only=True)
    same_as_last = all(torch.equal(saved[k], epoch_file[k]) for k in saved)
    assert same_as_last == (oneshots[1] >= oneshots[0]), oneshots  # best_by oneshot: ties go to the later epoch


def test_class_batches_fall_back_to_all_classes_when_no_alphabet_has_two():
    paths = [f"{c}_{i}.png" for c in range(3) for i in range(4)]
    labels = [c for c in range(3) for _ in range(4)]
    groups = {0: "a", 1: "b", 2: "c"}  # one character per alphabet: no within-alphabet negative exists
    for rotations in (False, True):
        batches = ClassBatches(paths, labels, (32, 32), batch_size=8, images_per_class=4, groups=groups,
                               negatives="same_group", class_rotations=rotations)
        drawn_labels = batches.sample_batch(random.Random(0))[2]
        assert len(set(drawn_labels)) == 2  # two classes still make a batch with negatives


def test_class_mirrors_make_each_class_and_each_turn_mirrored_a_class_of_its_own(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_rotations=True, class_mirrors=True)
    assert transforms_drawn(batches, paths, labels, draws=80) == set(range(8))  # 4 turns, each also mirrored
    step = next(s for s in range(50) if batches.sample_batch(batches.generators(s)[0])[1][0] == 5)
    drawn, transforms, _ = batches.sample_batch(batches.generators(step)[0])
    upright = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none")
    plain = upright.transform([load_image(p, keep_grey=True) for p in drawn])
    for image, original in zip(batches[step].images, plain):  # mirrored, then turned once
        torch.testing.assert_close(image, torch.rot90(original.flip(-1), 1, dims=(1, 2)), atol=1, rtol=0)


def test_class_squash_makes_each_class_and_each_turn_and_mirror_squashed_a_class_of_its_own(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_rotations=True, class_mirrors=True,
                           class_squash=0.5)
    assert transforms_drawn(batches, paths, labels, draws=200) == set(range(16))  # 8 as before, each also squashed
    upright = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none")
    for wanted, squashed_rows in ((8, True), (9, False)):  # squashed alone; squashed then turned: narrower instead
        step = next(s for s in range(400) if batches.sample_batch(batches.generators(s)[0])[1][0] == wanted)
        drawn, _, _ = batches.sample_batch(batches.generators(step)[0])
        images = batches[step].images
        plain = upright.transform([load_image(p, keep_grey=True) for p in drawn])
        ink_at = (images < 128).any(dim=1)  # (B, H, W)
        inked = ink_at.any(dim=2) if squashed_rows else ink_at.any(dim=1)  # which rows (or columns) hold a stroke
        assert not inked[:, :10].any() and not inked[:, 30:].any()  # half the height, centred: the rest white
        if not squashed_rows:
            plain = torch.rot90(plain, 1, dims=(2, 3))
        ink = (plain < 128).sum(dim=(1, 2, 3)).float()
        assert (images < 128).sum(dim=(1, 2, 3)).float().sum() < 0.8 * ink.sum()  # the same strokes, on half the area


def ink_slope(images):
    """Per image of a uint8 (B, C, H, W) batch, how far right its ink lies per row upwards (a least-squares slope)."""
    ink = (255 - images.float()).mean(dim=1)  # (B, H, W)
    rows = torch.arange(ink.shape[1], dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(ink.shape[2], dtype=torch.float32).view(1, 1, -1)
    weight = ink / ink.sum(dim=(1, 2), keepdim=True)
    up = -(rows - (weight * rows).sum(dim=(1, 2), keepdim=True))
    right = cols - (weight * cols).sum(dim=(1, 2), keepdim=True)
    return (weight * up * right).sum(dim=(1, 2)) / (weight * up * up).sum(dim=(1, 2))


def test_class_slant_makes_each_class_and_each_turn_and_mirror_slanted_a_class_of_its_own(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_rotations=True, class_mirrors=True,
                           class_slant=30)
    assert transforms_drawn(batches, paths, labels, draws=200) == set(range(8)) | set(range(16, 24))
    step = next(s for s in range(400) if batches.sample_batch(batches.generators(s)[0])[1][0] == 16)
    drawn, _, _ = batches.sample_batch(batches.generators(step)[0])
    upright = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none")
    plain = upright.transform([load_image(p, keep_grey=True) for p in drawn])
    slope = ink_slope(batches[step].images) - ink_slope(plain)
    torch.testing.assert_close(slope, torch.full_like(slope, math.tan(math.radians(30))), atol=0.15, rtol=0)
    ink = (255 - batches[step].images.float()).sum(dim=(1, 2, 3)) / (255 - plain.float()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(ink, torch.ones_like(ink), atol=0.1, rtol=0)  # the same strokes, leaning
    blank = torch.full((1, 105, 105), 255, dtype=torch.uint8)
    assert torch.equal(transformed(blank, 16, slant=30), blank)  # no seam where the image's edges were


def test_class_cut_makes_the_top_part_of_each_class_and_of_each_turn_and_mirror_a_class_of_its_own(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_rotations=True, class_mirrors=True,
                           class_cut=0.5, crop_to_ink=True)
    assert transforms_drawn(batches, paths, labels, draws=200) == set(range(8)) | set(range(32, 40))
    upright = ClassBatches(paths, labels, (40, 40), batch_size=16, images_per_class=4, augmentation="none",
                           crop_to_ink=True)
    step = next(s for s in range(400) if batches.sample_batch(batches.generators(s)[0])[1][0] == 32)
    drawn, _, _ = batches.sample_batch(batches.generators(step)[0])
    part, whole = batches[step].images.float(), upright.transform([load_drawing(p, True) for p in drawn]).float()
    ink = (255 - part).sum(dim=(1, 2, 3)) / (255 - whole).sum(dim=(1, 2, 3))
    assert ((ink > 0.2) & (ink < 0.85)).all()  # part of the strokes, at their own scale
    rows = ((part < 128).any(dim=1).any(dim=2)).float()  # (B, H): which rows hold ink
    middle = (rows * torch.arange(40.0)).sum(1) / rows.sum(1)
    torch.testing.assert_close(middle, torch.full_like(middle, 19.5), atol=3, rtol=0)  # centred again
    drawing = load_drawing(drawn[0], True)
    top = cut_to_top(drawing, 0.5)
    ink_rows = (drawing.amin(0) < 128).any(1).nonzero().flatten()
    cut_at = ink_rows[0] + round((ink_rows[-1] + 1 - ink_rows[0]).item() * 0.5)
    assert torch.equal(top[:, :cut_at], drawing[:, :cut_at]) and (top[:, cut_at:] == 255).all()
    blank = torch.full((1, 105, 105), 255, dtype=torch.uint8)
    assert torch.equal(transformed(blank, 32, cut=0.5, reframe=True), blank)


def test_class_blends_draw_two_characters_of_one_alphabet_over_each_other_as_a_new_class(listed):
    paths, labels, groups = listed
    batches = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none",
                           groups=groups, negatives="same_group", class_blends=0.5)
    label_of, stride = dict(zip(paths, labels)), max(labels) + 1
    rng, kinds = random.Random(0), set()
    for _ in range(30):
        drawn, _, drawn_labels = batches.sample_batch(rng)
        assert all(drawn_labels.count(c) == 4 for c in set(drawn_labels))  # a blend is a whole class of 4 images
        for path, label in zip(drawn, drawn_labels):
            if isinstance(path, str):
                assert label == label_of[path]
                kinds.add("single")
                continue
            first, second = label_of[path[0]], label_of[path[1]]
            assert first != second and groups[first] == groups[second]  # two characters of one alphabet
            assert label == (1 + min(first, second)) * TRANSFORMS * stride + max(first, second) >= TRANSFORMS * stride
            kinds.add("blend")
        blend_sides = {}
        for path, label in zip(drawn, drawn_labels):  # one blend's images all pair the same two characters
            if not isinstance(path, str):
                blend_sides.setdefault(label, set()).add(frozenset(label_of[p] for p in path))
        assert all(len(sides) == 1 for sides in blend_sides.values())
    assert kinds == {"single", "blend"}
    every = ClassBatches(paths, labels, (32, 32), batch_size=16, images_per_class=4, augmentation="none",
                         groups=groups, negatives="same_group", class_blends=1.0)
    drawn, _, _ = every.sample_batch(every.generators(3)[0])
    blended = [i for i, path in enumerate(drawn) if not isinstance(path, str)]
    assert len(blended) >= 8  # every class a blend but where its blend is already in the batch
    pairs = [drawn[i] for i in blended]
    plain = every.transform([torch.minimum(*(load_image(p, keep_grey=True) for p in pair)) for pair in pairs])
    torch.testing.assert_close(every[3].images[blended], plain, atol=0, rtol=0)  # the darker pixel of the two
    first_alone = every.transform([load_image(a, keep_grey=True) for a, _ in pairs])
    assert plain.float().mean() < first_alone.float().mean()  # the second character's strokes are really there


def test_a_blend_of_a_grey_and_a_larger_colour_drawing_is_their_darker_pixels_at_the_first_ones_size(tmp_path):
    from PIL import Image

    from utils.dataloader import load_drawing
    grey = Image.new("L", (20, 10), 255)
    grey.paste(0, (2, 2, 6, 8))  # a dark bar at the left
    colour = Image.new("RGB", (40, 20), (255, 255, 255))
    colour.paste((0, 0, 0), (28, 4, 36, 16))  # a dark bar at the right, at twice the size
    grey.save(tmp_path / "grey.png")
    colour.save(tmp_path / "colour.png")
    blend = load_drawing((str(tmp_path / "grey.png"), str(tmp_path / "colour.png")))
    assert blend.shape == (3, 10, 20) and blend.dtype == torch.uint8
    assert (blend[:, 3:7, 3:5] == 0).all() and (blend[:, 3:7, 15:17] == 0).all()  # both bars
    assert (blend[:, :, 8:12] == 255).all()  # the white between them stays white


def test_validation_from_embeddings_equals_the_pair_items_scored_through_the_network(listed):
    paths, labels, groups = listed  # as train.py validates: len(images) // batch_size steps of batch_size items
    val_set = PairItems(paths, labels, (32, 32), items=8, steps=len(paths) // 8, train=False, groups=groups,
                        negatives="same_group", seed="validation/0")
    cpu, steps = torch.device("cpu"), range(len(val_set))
    torch.manual_seed(0)
    net = SiameseNetwork((32, 32), "resnet18").eval()
    with torch.no_grad():
        net.fully_connect2.weight *= 1000  # logits of a trained network's spread, not a fresh one's 0.01
    with torch.inference_mode():
        scored = [score_batch(net, val_set[step], cpu) for step in steps]
    through = [step_loss(s, None) for s in scored]
    embedded = EmbeddedImages(Siamese.from_network(net, (32, 32), cpu), paths)
    val = evaluate_pairs(embedded, [val_set.step_pairs(step) for step in steps], cpu)
    assert len(embedded.row) == len(set(paths)) < len(steps) * 8 * 4  # each image once, not once for each pair
    assert torch.equal(val["targets"], torch.cat([s.targets for s in scored]))
    logits = torch.cat([s.logits for s in scored])
    assert logits.std() > 1  # the pairs' logits differ by far more than the tolerance
    assert torch.allclose(val["logits"], logits, rtol=1e-3, atol=1e-2)
    assert val["loss"] == pytest.approx(sum(float(bce) for _, bce, _ in through) / len(steps), rel=1e-3)
    assert val["acc"] == pytest.approx(sum(float(correct) for _, _, correct in through) / len(steps), abs=1 / 16)


def test_drawings_kept_decoded_give_the_very_batches_of_drawings_decoded_each_step(listed):
    paths, labels, groups = listed
    settings = dict(augmentation="strokes", groups=groups, negatives="same_group", class_rotations=True,
                    class_mirrors=True, class_squash=0.6, class_slant=30, class_cut=0.6, crop_to_ink=True)
    kept = ClassBatches(paths, labels, (40, 40), 16, **settings)
    uncached = ClassBatches(paths, labels, (40, 40), 16, **settings)
    uncached.drawings.max_bytes = 0
    first = [kept[step] for step in range(12)]
    assert len(kept.drawings.items) > 50 and not uncached.drawings.items
    stored = {key: image.clone() for key, image in kept.drawings.items.items()}
    for step in range(12):  # drawn again from what is kept, and as if each were the first time
        again, fresh = kept[step], uncached[step]
        assert torch.equal(again.images, first[step].images) and torch.equal(again.images, fresh.images)
        assert torch.equal(again.labels, fresh.labels)
    assert all(torch.equal(kept.drawings.items[key], image) for key, image in stored.items())  # none changed in place
    for augmentation in ("autoaugment", "affine", "none"):  # pair items, through every kind of batch transform
        items = PairItems(paths, labels, (40, 40), 4, augmentation=augmentation, crop_to_ink=True)
        plain = PairItems(paths, labels, (40, 40), 4, augmentation=augmentation, crop_to_ink=True)
        plain.drawings.max_bytes = 0
        assert all(torch.equal(items[step].images, plain[step].images) for step in (0, 1))
        stored = {key: image.clone() for key, image in items.drawings.items.items()}
        assert stored and all(torch.equal(items[step].images, plain[step].images) for step in (0, 1))
        assert all(torch.equal(items.drawings.items[key], image) for key, image in stored.items())


def test_the_drawing_cache_keeps_what_fits_and_makes_the_rest_each_time():
    cache, made = DrawingCache(max_bytes=250), []

    def make(value):
        made.append(value)
        return torch.full((100,), value, dtype=torch.uint8)

    for value in (1, 2, 3, 1, 2, 3):
        kept = cache.get(value, lambda value=value: make(value))
        assert torch.equal(kept, torch.full((100,), value, dtype=torch.uint8))
    assert made == [1, 2, 3, 3] and cache.bytes == 200  # the third did not fit: made again, not kept

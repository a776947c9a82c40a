"""One-shot evaluation, verification, the benchmark and gallery search, on real Omniglot images with a real VGG16."""
import os
import random
import shutil

import numpy as np
import pytest
import torch
from helpers import make_subset

import bench
import eval_oneshot
import predict
from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.errors import DataError
from utils.gallery import CACHE_NAME, gallery_embeddings, rank_gallery
from utils.images import preprocess
from utils.metrics import best_threshold, metrics_at, roc_auc, threshold_to_record
from utils.oneshot import (evaluate_embedded, evaluate_folder, evaluate_runs, evaluate_runs_embedded,
                           evaluate_verification, list_classes, list_runs, parse_run, pick_best, sample_tasks)

SHAPE = [32, 32]


def save_random_weights(path, seed=0, constant=False):
    """A freshly initialised network's state dict; `constant` zeroes the last layer so every pair scores the same."""
    torch.manual_seed(seed)
    state = SiameseNetwork(SHAPE).state_dict()
    if constant:
        state["fully_connect2.weight"].zero_()
    torch.save(state, path)
    return str(path)


def predictor(path, **kwargs):
    return Siamese(model_path=str(path), input_shape=SHAPE, cuda=False, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_weights(tmp_path_factory.mktemp("weights") / "random.pth")


@pytest.fixture(scope="module")
def model(weights):
    return predictor(weights)


def make_lake_runs(alphabets_dir, target, runs=4, way=20, copy_query=False):
    """Lake's all_runs layout from real images: runNN/training/classYY.png, test/itemXX.png, class_labels.txt.

    Each run takes `way` characters of one alphabet, one drawer for training and another for test
    (or the same image, `copy_query`), both in shuffled order. Returns {run name: {test item: class}}.
    """
    alphabets = [a for a in sorted(alphabets_dir.iterdir()) if len(list(a.iterdir())) >= way]
    truth = {}
    for number in range(1, runs + 1):
        rng = random.Random(number)
        name = f"run{number:02d}"
        characters = rng.sample(sorted(alphabets[number % len(alphabets)].iterdir()), way)
        test_order = rng.sample(range(way), way)
        for sub in ("training", "test"):
            (target / name / sub).mkdir(parents=True)
        lines, truth[name] = [], {}
        for slot, character in enumerate(characters):
            train_image, test_image = rng.sample(sorted(character.glob("*.png")), 2)
            class_file = f"class{slot + 1:02d}.png"
            item_file = f"item{test_order[slot] + 1:02d}.png"
            shutil.copy(train_image, target / name / "training" / class_file)
            shutil.copy(train_image if copy_query else test_image, target / name / "test" / item_file)
            lines.append((item_file, f"{name}/test/{item_file} {name}/training/{class_file}\n"))
            truth[name][item_file] = class_file
        (target / name / "class_labels.txt").write_text("".join(line for _, line in sorted(lines)))
    return truth


def pixels(images):
    """Raw preprocessed pixels as the 'embedding' (no network)."""
    return torch.stack([preprocess(image, SHAPE).flatten() for image in images])


def negative_distance(emb1, emb2):
    return -(emb1 - emb2).abs().sum(1)


def equal_scores(emb1, emb2):
    return torch.zeros(len(emb1))


def test_lake_runs_parse_and_score_near_chance_with_random_weights(small2, tmp_path, model, capsys):
    truth = make_lake_runs(small2, tmp_path / "all_runs")
    runs = list_runs(tmp_path / "all_runs")
    assert [os.path.basename(r) for r in runs] == sorted(truth)
    for run in runs:
        test_paths, training_paths, answers = parse_run(run)
        assert len(test_paths) == len(training_paths) == 20
        assert {os.path.basename(t): os.path.basename(training_paths[a]) for t, a in zip(test_paths, answers)} == \
            truth[os.path.basename(run)]

    result = evaluate_runs(model, tmp_path / "all_runs", progress=False)
    assert len(result["errors"]) == 4
    assert result["error"] == pytest.approx(np.mean(result["errors"]))
    assert result["error"] >= 75.0, result  # chance is 95%; random weights know nothing about characters

    eval_oneshot.main(["--runs", str(tmp_path / "all_runs"), "--model_path", model.model_path,
                       "--input_shape", "32", "32", "--cuda", "False"])
    out = capsys.readouterr().out
    assert "run04: error" in out and f"mean error over 4 runs: {result['error']:.1f}%" in out


def test_lake_runs_plumbing_with_pixel_distance_and_exact_copies(small2, tmp_path):
    make_lake_runs(small2, tmp_path / "all_runs", runs=3, copy_query=True)
    runs = list_runs(tmp_path / "all_runs")
    assert evaluate_runs_embedded(runs, pixels, negative_distance)["errors"] == [0.0, 0.0, 0.0]
    chance = evaluate_runs_embedded(runs, pixels, equal_scores)  # ties at random: about 95% error, not 0%
    assert chance["error"] > 80.0


def duplicated_folder(small2, target, copies):
    """A 3-level folder whose every class holds `copies` identical copies of one real image."""
    subset = make_subset(small2, target, alphabets=2, characters=8, drawers=1) / "images_background"
    for image in subset.glob("*/*/*.png"):
        for n in range(1, copies):
            shutil.copy(image, image.with_name(f"copy{n}_{image.name}"))
    return subset


@pytest.mark.parametrize("way,shot,within_alphabet", [(5, 1, False), (8, 2, True)])
def test_nway_kshot_plumbing_with_pixel_distance(small2, tmp_path, way, shot, within_alphabet):
    folder = duplicated_folder(small2, tmp_path, copies=shot + 1)
    paths, labels, _, groups = list_classes(folder)
    result = evaluate_embedded(paths, labels, groups, pixels, negative_distance, way=way, shot=shot, trials=100,
                               within_alphabet=within_alphabet)
    assert result["accuracy"] == 1.0 and result["chance"] == 1 / way
    result = evaluate_embedded(paths, labels, groups, pixels, equal_scores, way=way, shot=shot, trials=400)
    assert abs(result["accuracy"] - 1 / way) < 3 * result["ci95"]


def test_too_few_classes_is_a_clear_error(small2, tmp_path):
    folder = make_subset(small2, tmp_path, alphabets=2, characters=6, drawers=2) / "images_background"
    _, labels, _, groups = list_classes(folder)
    assert len(sample_tasks(labels, groups, way=12, trials=3)) == 3
    with pytest.raises(DataError, match="12 classes with at least 2 images in one alphabet; found 6"):
        sample_tasks(labels, groups, way=12, within_alphabet=True)
    with pytest.raises(DataError, match="12 classes with at least 3 images in the folder; found 0"):
        sample_tasks(labels, groups, way=12, shot=2)


def test_ties_are_broken_at_random_not_by_position():
    generator = torch.Generator().manual_seed(0)
    picks = np.bincount([pick_best(torch.zeros(4), generator) for _ in range(400)], minlength=4)
    assert picks.min() > 60  # about 100 each; first-index tie-breaking would give [400, 0, 0, 0]
    assert pick_best(torch.tensor([0.1, 0.9, 0.9, 0.2]), generator) in (1, 2)


def test_constant_score_model_gets_chance(small2, tmp_path):
    flat = predictor(save_random_weights(tmp_path / "constant.pth", constant=True))
    folder = make_subset(small2, tmp_path / "data", alphabets=2, characters=6, drawers=4) / "images_background"
    result = evaluate_folder(flat, folder, way=5, shot=1, trials=400, progress=False)
    assert result["chance"] == 0.2 and result["trials"] == 400 and result["images"] <= 48
    assert abs(result["accuracy"] - 0.2) < 0.07, result  # argmax == 0 style scoring would give 100%


def test_two_level_folder_is_detected(small2, tmp_path, model):
    three = make_subset(small2, tmp_path / "data", alphabets=1, characters=6, drawers=3) / "images_background"
    two = tmp_path / "own"
    for character in three.glob("*/*"):
        shutil.copytree(character, two / character.name)
    first = evaluate_folder(model, three, way=4, trials=20, progress=False)
    second = evaluate_folder(model, two, way=4, trials=20, progress=False)
    assert first == second  # same classes, same seed: same tasks and scores


def test_verification_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + labels * 0.3, 2)  # rounded: plenty of ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(brute)
    threshold = best_threshold(scores, labels)
    best = max(metrics_at(scores, labels, t)["accuracy"] for t in np.append(np.unique(scores), 2.0))
    assert metrics_at(scores, labels, threshold)["accuracy"] == best
    assert roc_auc(np.ones(10), np.arange(10) % 2) == 0.5
    at = metrics_at([0.9, 0.8, 0.3, 0.6], [1, 0, 1, 0], 0.5)
    assert (at["accuracy"], at["precision"], at["recall"]) == (0.25, 1 / 3, 0.5)


def test_recorded_threshold_is_half_unless_the_pairs_clearly_need_another():
    sure = [0.9] * 100 + [0.1] * 100
    # three positives at 0.3: the best cut moves there, but a gain of 3 of 3 differing pairs is under 3 sqrt(3)
    scores, labels = np.array(sure + [0.3] * 3), np.array([1] * 100 + [0] * 100 + [1] * 3)
    assert best_threshold(scores, labels) == pytest.approx(0.3)
    assert threshold_to_record(scores, labels) == 0.5
    # every positive at 0.3 (a similarity far too low): 100 of 100 differing pairs gained, the best cut is kept
    scores = np.array([0.3] * 100 + [0.1] * 100)
    assert threshold_to_record(scores, labels[:200]) == pytest.approx(0.3)
    # 50 negatives at 0.7 above 0.5 and the positives at 0.9: a cut above 0.7 gains all 50
    scores, labels = np.array(sure + [0.7] * 50), np.array([1] * 100 + [0] * 150)
    assert 0.7 < threshold_to_record(scores, labels) <= 0.9
    assert metrics_at(scores, labels, threshold_to_record(scores, labels))["accuracy"] == 1.0


def test_verify_cli(small2, tmp_path, model, capsys):
    folder = make_subset(small2, tmp_path / "data", alphabets=2, characters=5, drawers=4) / "images_background"
    result = evaluate_verification(model, folder, pairs=200, progress=False)
    assert result["pairs"] == 200 and result["positives"] == 100 and 0.0 <= result["auc"] <= 1.0
    assert result["best"]["accuracy"] >= result["at_0.5"]["accuracy"]
    common = ["--model_path", model.model_path, "--input_shape", "32", "32", "--cuda", "False",
              "--dataset", str(folder)]
    eval_oneshot.main(common + ["--verify", "--pairs", "200"])
    out = capsys.readouterr().out
    assert f"ROC AUC {result['auc']:.4f}" in out and "best threshold" in out and "threshold 0.5" in out


def test_bench_times_a_oneshot_task_three_ways(small2):
    paths = sorted(str(p) for p in small2.glob("Greek/character0[1-4]/*_0[12].png"))
    labels = [path.split("/")[-2] for path in paths]
    times = bench.time_oneshot_task(paths, labels, SHAPE, way=4, repeats=1, device=torch.device("cpu"))
    assert times["pairs"] == 16
    assert 0 < times["cached"] < times["full_network"]


def gallery_folder(small2, target):
    return make_subset(small2, target, alphabets=2, characters=3, drawers=3) / "images_background"


def test_gallery_cache_matches_uncached_and_is_reused(small2, tmp_path, model):
    folder = gallery_folder(small2, tmp_path)
    names, uncached, embedded = gallery_embeddings(model, folder, use_cache=False, progress=False)
    assert embedded == len(names) == 18 and not (folder / CACHE_NAME).exists()
    direct = model.embed([str(folder / name) for name in names])
    assert torch.equal(uncached, direct)

    _, first, embedded = gallery_embeddings(model, folder, progress=False)
    assert embedded == 18 and (folder / CACHE_NAME).is_file()
    names_again, second, embedded = gallery_embeddings(model, folder, progress=False)
    assert embedded == 0 and names_again == names  # the second query does not re-embed
    assert torch.equal(first, uncached) and torch.equal(second, uncached)

    query = small2 / "Latin" / "character01" / sorted(os.listdir(small2 / "Latin" / "character01"))[0]
    cached_rank = rank_gallery(model, folder, str(query), top=4, progress=False)
    assert cached_rank == rank_gallery(model, folder, str(query), top=4, use_cache=False, progress=False)
    images, classes = cached_rank
    scores = model.score_pairs(model.embed([str(query)]), direct)
    assert [s for s, _ in images] == sorted(scores.tolist(), reverse=True)[:4]
    assert len(classes) == 4 and all(cls == os.path.dirname(name) for _, cls, name in classes)


def test_gallery_embeds_ink_crops_as_prediction_does(small2, tmp_path, weights):
    cropping = predictor(weights, crop_to_ink=True)
    folder = gallery_folder(small2, tmp_path)
    names, embedded, _ = gallery_embeddings(cropping, folder, use_cache=False, progress=False)
    paths = [str(folder / name) for name in names]
    assert torch.equal(embedded, cropping.embed(paths))  # a square framed by its ink is not framed again
    once = torch.stack([cropping.preprocess(path) for path in paths])
    assert all(torch.equal(cropping.preprocess(image), image) for image in once)
    with pytest.raises(ValueError, match=r"must be \(3, 32, 32\), not \(3, 48, 48\)"):
        cropping.preprocess(torch.zeros(3, 48, 48))


def test_gallery_cache_invalidation(small2, tmp_path, model, weights):
    folder = gallery_folder(small2, tmp_path)
    names, before, _ = gallery_embeddings(model, folder, progress=False)

    changed = folder / names[0]
    replacement = small2 / "Latin" / "character05" / sorted(os.listdir(small2 / "Latin" / "character05"))[0]
    shutil.copy(replacement, changed)
    _, after, embedded = gallery_embeddings(model, folder, progress=False)
    assert embedded == 1
    assert torch.equal(after[0], model.embed([str(replacement)])[0]) and not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:])

    shutil.copy(replacement, folder / os.path.dirname(names[1]) / "added.png")
    names_added, _, embedded = gallery_embeddings(model, folder, progress=False)
    assert embedded == 1 and len(names_added) == 19

    other = predictor(save_random_weights(tmp_path / "other.pth", seed=1))
    _, other_rows, embedded = gallery_embeddings(other, folder, progress=False)
    assert embedded == 19 and not torch.equal(other_rows[0], after[0])
    _, _, embedded = gallery_embeddings(predictor(weights, letterbox_image=True), folder, progress=False)
    assert embedded == 19


def test_predict_gallery_cli(small2, tmp_path, model, capsys):
    folder = gallery_folder(small2, tmp_path)
    query = next(iter(sorted(folder.glob("*/*/*.png"))))
    predict.main(["--gallery", str(folder), str(query), "--top", "3", "--model_path", model.model_path,
                  "--input_shape", "32", "32", "--cuda", "False"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Top 3 images") and out[4].startswith("Top 3 classes") and len(out) == 8
    with pytest.raises(SystemExit, match="no such file"):
        predict.main(["--gallery", str(folder), str(tmp_path / "missing.png"), "--model_path", model.model_path,
                      "--input_shape", "32", "32", "--cuda", "False"])


def test_the_embedding_index_scores_as_the_head_does(model):
    torch.manual_seed(0)
    embeddings, query = torch.rand(300, 512), torch.rand(1, 512)  # backbone features are non-negative
    index = model.index(embeddings)
    direct = model.score_pairs(query, embeddings, logits=True)
    fast = index.scores(query, logits=True)
    assert len(index) == 300 and (fast - direct).abs().max() <= 1e-4 * direct.abs().max()
    torch.testing.assert_close(index.scores(query), torch.sigmoid(fast))
    assert torch.equal(fast.argsort(descending=True)[:10], direct.argsort(descending=True)[:10])

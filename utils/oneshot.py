"""One-shot evaluation: N-way k-shot tasks, Lake's official runs and pair verification.

Every image is embedded once (batched, through the predictor's `embed`); pairs are scored with the
head alone. Ties are broken at random with a seeded generator, so a model that scores every pair
the same gets chance accuracy, never credit for the right answer's position.
"""
import math
import os
import random
from collections import defaultdict

import numpy as np
import torch

from utils.dataloader import class_groups, indices_by_class, list_images
from utils.errors import DataError
from utils.images import is_image_file
from utils.loop import embed_images

Z95 = 1.959964  # two-sided 95% normal quantile


def detect_own_data(folder):
    """True when `folder` is <class>/<image> (two levels), False for <alphabet>/<character>/<image>."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    for group in sorted(e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")):
        entries = list(os.scandir(group))
        if any(e.is_file() and is_image_file(e.name) for e in entries):
            return True
        if any(e.is_dir() and not e.name.startswith(".") for e in entries):
            return False
    raise DataError(f"{folder}: no class folders found (expected <class>/<image> or <alphabet>/<character>/<image>)")


def list_classes(folder, own_data=None):
    """Images of `folder` grouped by class -> (paths, labels, class_names, groups).

    `groups[c]` is the alphabet of class c (3-level layout), or "" for own data (2-level).
    `own_data=None` detects the layout.
    """
    if own_data is None:
        own_data = detect_own_data(folder)
    paths, labels, class_names, _ = list_images(folder, own_data, "")
    return paths, labels, class_names, class_groups(class_names)


def sample_tasks(labels, groups, way=20, shot=1, trials=400, within_alphabet=False, seed=0):
    """Draw `trials` N-way k-shot tasks as image indices.

    Each task is (query, supports, answer): `supports` is a way x shot list of image indices, one row
    per class in random order, `answer` the row of the query's class; the query is an image of that
    class not among its supports. `within_alphabet` draws all classes of a task from one alphabet.
    """
    rng = random.Random(seed)
    by_class = indices_by_class(labels)
    usable = [c for c in sorted(by_class) if len(by_class[c]) >= shot + 1]
    pools = defaultdict(list)
    for c in usable:
        pools[groups[c] if within_alphabet else ""].append(c)
    largest = max((len(pool) for pool in pools.values()), default=0)
    pools = [pool for _, pool in sorted(pools.items()) if len(pool) >= way]
    if not pools:
        where = "one alphabet" if within_alphabet else "the folder"
        raise DataError(f"a {way}-way {shot}-shot task needs {way} classes with at least {shot + 1} images "
                        f"in {where}; found {largest}")
    tasks = []
    for _ in range(trials):
        classes = rng.sample(rng.choice(pools), way)
        answer = rng.randrange(way)
        supports = []
        for row, c in enumerate(classes):
            drawn = rng.sample(by_class[c], shot + 1 if row == answer else shot)
            if row == answer:
                query = drawn.pop()
            supports.append(drawn)
        tasks.append((query, supports, answer))
    return tasks


def pick_best(scores, generator):
    """Index of the highest score; ties broken uniformly at random with `generator` (a torch.Generator)."""
    best = torch.nonzero(scores == scores.max()).flatten()
    if len(best) == 1:
        return int(best[0])
    return int(best[torch.randint(len(best), (1,), generator=generator)])


def run_tasks(tasks, embeddings, score_fn, seed=0):
    """Score each task and return a list of 0/1 outcomes (1 = the query's class ranked first).

    `score_fn(query_rows, candidate_rows)` -> (M,) similarities for M (query, candidate) pairs; a
    class's score is the mean over its k shots.
    """
    generator = torch.Generator().manual_seed(seed)
    outcomes = []
    for query, supports, answer in tasks:
        way, shot = len(supports), len(supports[0])
        candidates = embeddings[torch.tensor(supports).flatten()]
        scores = score_fn(embeddings[query].expand_as(candidates), candidates).float().reshape(way, shot).mean(1)
        outcomes.append(int(pick_best(scores, generator) == answer))
    return outcomes


def mean_ci(outcomes):
    """(mean, 95% confidence half-width) of a list of numbers (normal approximation)."""
    values = np.asarray(outcomes, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(Z95 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluate_embedded(paths, labels, groups, embed_fn, score_fn, way=20, shot=1, trials=400,
                      within_alphabet=False, seed=0):
    """N-way k-shot accuracy with any `embed_fn(paths) -> (N, D)` and `score_fn` (see `run_tasks`).

    Only the images the tasks use are embedded, each once. Returns a dict: accuracy, ci95 (half-width),
    chance, trials, way, shot, within_alphabet, images (number embedded).
    """
    tasks = sample_tasks(labels, groups, way, shot, trials, within_alphabet, seed)
    used = sorted({q for q, _, _ in tasks} | {i for _, s, _ in tasks for row in s for i in row})
    position = {index: row for row, index in enumerate(used)}
    embeddings = embed_fn([paths[i] for i in used])
    tasks = [(position[q], [[position[i] for i in row] for row in s], a) for q, s, a in tasks]
    accuracy, ci95 = mean_ci(run_tasks(tasks, embeddings, score_fn, seed))
    return {"accuracy": accuracy, "ci95": ci95, "chance": 1.0 / way, "trials": trials, "way": way,
            "shot": shot, "within_alphabet": within_alphabet, "images": len(used)}


def evaluate_split(net, paths, labels, input_shape, device, way=20, trials=400, seed=0):
    """`way`-way one-shot accuracy of a training network on labelled image paths (the unseen validation
    classes), across all of them; `way` is capped at the number of classes with 2 images or more.

    Returns (accuracy, way), or (None, way) when fewer than 2 classes can take part. Leaves `net` in eval mode.
    """
    way = min(way, sum(1 for rows in indices_by_class(labels).values() if len(rows) >= 2))
    if way < 2:
        return None, way
    net.eval()

    def score(emb1, emb2):  # logits rank the candidates as the probabilities do
        return net.score(emb1.to(device), emb2.to(device)).squeeze(1).float().cpu()

    with torch.inference_mode():
        result = evaluate_embedded(paths, labels, [""] * (max(labels) + 1),
                                   lambda images: embed_images(net, images, input_shape, device),
                                   score, way, 1, trials, False, seed)
    return result["accuracy"], way


def evaluate_folder(predictor, folder, way=20, shot=1, trials=400, within_alphabet=False, seed=0, own_data=None,
                    progress=True):
    """N-way k-shot one-shot accuracy of a `siamese.Siamese` predictor on an image folder.

    `folder` holds <alphabet>/<character>/<image> or, for own data, <class>/<image> (`own_data=None`
    detects which). Returns a dict with accuracy and ci95 (95% half-width) as fractions, chance (1/way),
    trials, way, shot, within_alphabet and images (how many were embedded).
    """
    paths, labels, _, groups = list_classes(folder, own_data)
    return evaluate_embedded(
        paths, labels, groups,
        lambda images: predictor.embed(images, progress=progress),
        predictor.score_pairs, way, shot, trials, within_alphabet, seed,
    )


def parse_run(run_dir):
    """One run of Lake's `all_runs` -> (test_paths, training_paths, answers).

    `answers[i]` is the index in `training_paths` of test item i's class, read from `class_labels.txt`
    (lines `runNN/test/itemXX.png runNN/training/classYY.png`).
    """
    labels_file = os.path.join(run_dir, "class_labels.txt")
    if not os.path.isfile(labels_file):
        raise DataError(f"{labels_file}: no such file (expected Lake's run layout: training/, test/, class_labels.txt)")
    training_dir = os.path.join(run_dir, "training")
    names = os.listdir(training_dir) if os.path.isdir(training_dir) else []
    training_paths = sorted(os.path.join(training_dir, name) for name in names if is_image_file(name))
    if len(training_paths) < 2:
        raise DataError(f"{training_dir}: {len(training_paths)} training image(s); a one-shot run needs at least 2 "
                        f"to choose between")
    try:
        with open(labels_file, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{labels_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    test_paths, answers = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{labels_file}:{number}: expected 'test/itemXX.png training/classYY.png', "
                            f"got {line.strip()!r}")
        # the last two path parts locate the file inside this run, whatever the runs folder is called
        test, train = (os.path.join(run_dir, *field.replace("\\", "/").split("/")[-2:]) for field in fields)
        if not os.path.isfile(test):
            raise DataError(f"{labels_file}:{number}: test image {test} does not exist")
        if train not in training_paths:
            raise DataError(f"{labels_file}:{number}: {train} is not one of the run's training images")
        test_paths.append(test)
        answers.append(training_paths.index(train))
    if not test_paths:
        raise DataError(f"{labels_file}: no test items listed")
    return test_paths, training_paths, answers


def list_runs(runs_dir):
    """The run folders of Lake's `all_runs` (those holding class_labels.txt), sorted; `runs_dir` may be one run."""
    if os.path.isfile(os.path.join(runs_dir, "class_labels.txt")):
        return [runs_dir]
    if not os.path.isdir(runs_dir):
        raise DataError(f"{runs_dir}: no such folder")
    runs = sorted(e.path for e in os.scandir(runs_dir) if os.path.isfile(os.path.join(e.path, "class_labels.txt")))
    if not runs:
        raise DataError(f"{runs_dir}: no run folders with class_labels.txt (expected run01 ... run20)")
    return runs


def evaluate_runs_embedded(runs, embed_fn, score_fn, seed=0):
    """Lake's protocol with any `embed_fn`/`score_fn` (see `run_tasks`) on a list of run folders.

    All images of all runs are embedded in one batched pass. Returns a dict: runs (folder names),
    errors (per-run error, percent), error (mean over runs, percent), ci95 (half-width over runs, percent).
    """
    parsed = [parse_run(run) for run in runs]
    paths, tasks_by_run = [], []
    for test_paths, training_paths, answers in parsed:
        first = len(paths)
        paths += training_paths + test_paths
        candidates = [[first + j] for j in range(len(training_paths))]
        queries = range(first + len(training_paths), len(paths))
        tasks_by_run.append([(q, candidates, a) for q, a in zip(queries, answers)])
    embeddings = embed_fn(paths)
    errors = [100.0 * (1 - np.mean(run_tasks(tasks, embeddings, score_fn, seed + n)))
              for n, tasks in enumerate(tasks_by_run)]
    error, ci95 = mean_ci(errors)
    names = [os.path.basename(os.path.normpath(run)) for run in runs]
    return {"runs": names, "errors": errors, "error": error, "ci95": ci95}


def evaluate_runs(predictor, runs_dir, seed=0, progress=True):
    """Lake's official one-shot protocol for a `siamese.Siamese` predictor on `runs_dir` (all_runs); see above."""
    return evaluate_runs_embedded(
        list_runs(runs_dir), lambda images: predictor.embed(images, progress=progress),
        predictor.score_pairs, seed,
    )


def sample_verification_pairs(labels, pairs=1000, seed=0):
    """`pairs` labelled index pairs (a, b, label), half same-class (label 1) and half different-class (label 0)."""
    rng = random.Random(seed)
    by_class = indices_by_class(labels)
    classes = sorted(by_class)
    positive_classes = [c for c in classes if len(by_class[c]) >= 2]
    if len(classes) < 2 or not positive_classes:
        raise DataError(f"verification needs at least 2 classes and one class with 2 images; "
                        f"found {len(classes)} classes")
    sampled = []
    for n in range(pairs):
        if n % 2 == 0:
            a, b = rng.sample(by_class[rng.choice(positive_classes)], 2)
            sampled.append((a, b, 1))
        else:
            c, d = rng.sample(classes, 2)
            sampled.append((rng.choice(by_class[c]), rng.choice(by_class[d]), 0))
    return sampled


def roc_auc(scores, labels):
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based rank within ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def metrics_at(scores, labels, threshold):
    """Accuracy, precision and recall when pairs scoring >= `threshold` are called the same class."""
    predicted, labels = np.asarray(scores) >= threshold, np.asarray(labels).astype(bool)
    true_positives = int((predicted & labels).sum())
    return {
        "threshold": float(threshold),
        "accuracy": float((predicted == labels).mean()),
        "precision": true_positives / int(predicted.sum()) if predicted.any() else 0.0,
        "recall": true_positives / int(labels.sum()) if labels.any() else 0.0,
    }


def best_threshold(scores, labels):
    """The score threshold (predict same when score >= it) with the highest accuracy on these pairs."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    true_positives, false_positives = np.cumsum(hits), np.cumsum(~hits)
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)  # cut only between different scores
    correct = true_positives + (~labels).sum() - false_positives
    correct = np.where(last_of_tie, correct, -1)
    if correct.max() < (~labels).sum():  # calling nothing "same" is better
        return float(np.nextafter(ranked[0], np.inf)) if len(ranked) else 0.5
    return float(ranked[int(np.argmax(correct))])


def verification_metrics(scores, labels):
    """ROC AUC, the best-accuracy threshold with its accuracy/precision/recall, and the same at 0.5."""
    threshold = best_threshold(scores, labels)
    return {"auc": roc_auc(scores, labels), "best": metrics_at(scores, labels, threshold),
            "at_0.5": metrics_at(scores, labels, 0.5), "pairs": len(labels), "positives": int(np.sum(labels))}


def evaluate_verification(predictor, folder, pairs=1000, seed=0, own_data=None, progress=True):
    """Verification metrics of a predictor on `pairs` labelled pairs sampled from `folder`; see verification_metrics."""
    paths, labels, _, _ = list_classes(folder, own_data)
    sampled = sample_verification_pairs(labels, pairs, seed)
    used = sorted({i for a, b, _ in sampled for i in (a, b)})
    position = {index: row for row, index in enumerate(used)}
    embeddings = predictor.embed([paths[i] for i in used], progress=progress)
    first = embeddings[[position[a] for a, _, _ in sampled]]
    second = embeddings[[position[b] for _, b, _ in sampled]]
    scores = torch.cat([predictor.score_pairs(x, y) for x, y in zip(first.split(1024), second.split(1024))])
    return verification_metrics(scores.numpy(), [label for _, _, label in sampled])

"""One-shot evaluation: N-way k-shot tasks, Lake's official runs and pair verification.

Every image is embedded once (batched, through the predictor's `embed`); pairs are scored by the head alone,
on logits where only the ranking counts (a probability saturates at 1 and would tie). Ties are broken at random
with a seeded generator, so a model that scores every pair the same gets chance accuracy, never credit for the
right answer's position. A predictor here is anything with `embed(images, progress=...)` and
`score_pairs(emb1, emb2, logits=...)`, as `siamese.Siamese` has.
"""
import os
import random
from collections import defaultdict

import numpy as np
import torch

from utils.dataloader import class_groups, indices_by_class, list_images
from utils.errors import DataError
from utils.files import MAX_TEXT_BYTES, read_regular
from utils.images import is_image_file
from utils.metrics import mean_ci, verification_metrics

TASKS_AT_ONCE = 64  # tasks whose pairs are scored in one call: bounds the gathered embeddings

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
    for start in range(0, len(tasks), TASKS_AT_ONCE):
        chunk = tasks[start:start + TASKS_AT_ONCE]
        queries = torch.tensor([query for query, supports, _ in chunk for row in supports for _ in row])
        candidates = torch.tensor([index for _, supports, _ in chunk for row in supports for index in row])
        scores = score_fn(embeddings[queries], embeddings[candidates]).float()
        for query, supports, answer in chunk:
            way, shot = len(supports), len(supports[0])
            task_scores, scores = scores[:way * shot].reshape(way, shot).mean(1), scores[way * shot:]
            outcomes.append(int(pick_best(task_scores, generator) == answer))
    return outcomes


class EmbeddedImages:
    """A predictor's embeddings of a fixed set of image paths, each embedded once: `embed(paths)` gives their rows
    (any of the paths given at construction), `score_pairs` is the predictor's. One epoch's validation loss, one-shot
    check and verification pairs share one embedding of the validation images this way."""

    def __init__(self, predictor, paths, progress=False, desc="embedding"):
        self.score_pairs = predictor.score_pairs
        self.row = {path: index for index, path in enumerate(dict.fromkeys(paths))}
        self.embeddings = predictor.embed(list(self.row), progress=progress, desc=desc)

    def embed(self, paths):
        """Paths among those embedded -> their (N, flat) embeddings."""
        return self.embeddings[[self.row[path] for path in paths]]


def embed_used(embed_fn, paths, indices):
    """Embed only the images `indices` names (each once) -> (embeddings, {index in paths: row of embeddings})."""
    used = sorted(set(indices))
    return embed_fn([paths[i] for i in used]), {index: row for row, index in enumerate(used)}


def ranking_scores(predictor):
    """The predictor's pair logits, for ranking."""
    return lambda emb1, emb2: predictor.score_pairs(emb1, emb2, logits=True)


def evaluate_embedded(paths, labels, groups, embed_fn, score_fn, way=20, shot=1, trials=400,
                      within_alphabet=False, seed=0):
    """N-way k-shot accuracy with any `embed_fn(paths) -> (N, D)` and `score_fn` (see `run_tasks`).

    Only the images the tasks use are embedded, each once. Returns a dict: accuracy, ci95 (half-width),
    chance, trials, way, shot, within_alphabet, images (number embedded).
    """
    tasks = sample_tasks(labels, groups, way, shot, trials, within_alphabet, seed)
    embeddings, row = embed_used(embed_fn, paths, [i for q, s, _ in tasks for i in [q] + sum(s, [])])
    tasks = [(row[q], [[row[i] for i in support] for support in s], a) for q, s, a in tasks]
    accuracy, ci95 = mean_ci(run_tasks(tasks, embeddings, score_fn, seed))
    return {"accuracy": accuracy, "ci95": ci95, "chance": 1.0 / way, "trials": trials, "way": way,
            "shot": shot, "within_alphabet": within_alphabet, "images": len(row)}


def evaluate_split(predictor, paths, labels, way=20, trials=400, seed=0):
    """`way`-way one-shot accuracy of a predictor on labelled image paths (a run's unseen validation classes),
    across all of them; `way` is capped at the number of classes with 2 images or more.

    Returns (accuracy, way), or (None, way) when fewer than 2 classes can take part.
    """
    way = oneshot_way(labels, way)
    if way < 2:
        return None, way
    result = evaluate_embedded(paths, labels, [""] * (max(labels) + 1), predictor.embed, ranking_scores(predictor),
                               way, 1, trials, False, seed)
    return result["accuracy"], way


def oneshot_way(labels, way):
    """The way a one-shot check on these labels can reach: `way` at most, the classes with 2 images or more."""
    return min(way, sum(1 for rows in indices_by_class(labels).values() if len(rows) >= 2))


def evaluate_folder(predictor, folder, way=20, shot=1, trials=400, within_alphabet=False, seed=0, own_data=None,
                    progress=True):
    """N-way k-shot one-shot accuracy of a `siamese.Siamese` predictor on an image folder.

    `folder` holds <alphabet>/<character>/<image> or, for own data, <class>/<image> (`own_data=None`
    detects which). Returns a dict with accuracy and ci95 (95% half-width) as fractions, chance (1/way),
    trials, way, shot, within_alphabet and images (how many were embedded).
    """
    paths, labels, _, groups = list_classes(folder, own_data)
    return evaluate_embedded(paths, labels, groups, lambda images: predictor.embed(images, progress=progress),
                             ranking_scores(predictor), way, shot, trials, within_alphabet, seed)


def parse_run(run_dir):
    """One run of Lake's `all_runs` -> (test_paths, training_paths, answers).

    `answers[i]` is the index in `training_paths` of test item i's class, read from `class_labels.txt`
    (lines `runNN/test/itemXX.png runNN/training/classYY.png`), a regular file of at most MAX_TEXT_BYTES; every
    image must be a regular file. Raises DataError naming the file (and line) at fault.
    """
    labels_file = os.path.join(run_dir, "class_labels.txt")
    if not os.path.lexists(labels_file):
        raise DataError(f"{labels_file}: no such file (expected Lake's run layout: training/, test/, class_labels.txt)")
    training_dir = os.path.join(run_dir, "training")
    names = os.listdir(training_dir) if os.path.isdir(training_dir) else []
    training_paths = sorted(os.path.join(training_dir, name) for name in names if is_image_file(name))
    if len(training_paths) < 2:
        raise DataError(f"{training_dir}: {len(training_paths)} training image(s); a one-shot run needs at least 2 "
                        f"to choose between")
    irregular = [path for path in training_paths if not os.path.isfile(path)]
    if irregular:
        raise DataError(f"{irregular[0]}: not a regular file (a device, a FIFO, a socket or a dangling link)")
    data = read_regular(labels_file, MAX_TEXT_BYTES, DataError, "a class_labels.txt")
    try:
        lines = data.decode("utf-8").splitlines()
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
            what = "is not a regular file" if os.path.lexists(test) else "does not exist"
            raise DataError(f"{labels_file}:{number}: test image {test} {what}")
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
    return evaluate_runs_embedded(list_runs(runs_dir), lambda images: predictor.embed(images, progress=progress),
                                  ranking_scores(predictor), seed)


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


def verification_logits(predictor, paths, labels, pairs=1000, seed=0):
    """(logits, labels) of `pairs` verification pairs sampled from labelled image paths as `evaluate_verification`
    samples them (half same class, the other half any two classes); (None, None) when no such pairs exist."""
    try:
        sampled = sample_verification_pairs(labels, pairs, seed)
    except DataError:
        return None, None
    embeddings, row = embed_used(predictor.embed, paths, [i for a, b, _ in sampled for i in (a, b)])
    first, second = (torch.tensor([row[pair[k]] for pair in sampled]) for k in (0, 1))
    logits = predictor.score_pairs(embeddings[first], embeddings[second], logits=True).numpy()
    return logits, np.array([label for _, _, label in sampled], dtype=np.float64)


def evaluate_verification(predictor, folder, pairs=1000, seed=0, own_data=None, progress=True, threshold=None):
    """Verification metrics of a predictor on `pairs` labelled pairs sampled from `folder` (`verification_metrics`,
    with `threshold` the weights' recorded one), plus "scores", "logits" and "labels" of every pair."""
    paths, labels, _, _ = list_classes(folder, own_data)
    sampled = sample_verification_pairs(labels, pairs, seed)
    embeddings, row = embed_used(lambda images: predictor.embed(images, progress=progress), paths,
                                 [i for a, b, _ in sampled for i in (a, b)])
    first, second = (torch.tensor([row[pair[k]] for pair in sampled]) for k in (0, 1))
    logits = predictor.score_pairs(embeddings[first], embeddings[second], logits=True)
    scores, truth = torch.sigmoid(logits).numpy(), [label for _, _, label in sampled]
    return {**verification_metrics(scores, truth, threshold), "scores": scores, "logits": logits.numpy(),
            "labels": np.asarray(truth)}

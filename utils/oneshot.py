"""One-shot evaluation: N-way k-shot tasks, Lake's official runs, and pair verification metrics.

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
from tqdm import tqdm

from utils.dataloader import DataError, list_images
from utils.utils import is_image_file

Z95 = 1.959964  # two-sided 95% normal quantile


def embed_images(predictor, images, batch_size=64, desc="embedding", progress=True):
    """Embed a list of paths/PIL images with `predictor.embed`, in batches, with a tqdm bar -> (N, flat)."""
    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            chunks.append(predictor.embed(chunk, batch_size=batch_size).cpu())
            bar.update(len(chunk))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


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
    groups = ["" if own_data else name.split("/")[0] for name in class_names]
    return paths, labels, class_names, groups


def sample_tasks(labels, groups, way=20, shot=1, trials=400, within_alphabet=False, seed=0):
    """Draw `trials` N-way k-shot tasks as image indices.

    Each task is (query, supports, answer): `supports` is a way x shot list of image indices, one row
    per class in random order, `answer` the row of the query's class; the query is an image of that
    class not among its supports. `within_alphabet` draws all classes of a task from one alphabet.
    """
    rng = random.Random(seed)
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    usable = [c for c in sorted(by_class) if len(by_class[c]) >= shot + 1]
    pools = defaultdict(list)
    for c in usable:
        pools[groups[c] if within_alphabet else ""].append(c)
    pools = [pool for _, pool in sorted(pools.items()) if len(pool) >= way]
    if not pools:
        where = "one alphabet" if within_alphabet else "the folder"
        raise DataError(f"a {way}-way {shot}-shot task needs {way} classes with at least {shot + 1} images "
                        f"in {where}; found {max((len(p) for p in pools), default=len(usable))}")
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
        lambda images: embed_images(predictor, images, progress=progress),
        predictor.score_pairs, way, shot, trials, within_alphabet, seed,
    )

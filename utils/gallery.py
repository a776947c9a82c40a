"""Gallery search: rank a folder's images (and classes) by similarity to a query, with an embedding cache.

The cache lives in the gallery as `.siamese_embeddings.pth`. It is keyed by the weights file (path,
size, mtime) and the input settings, and holds one entry per image keyed by (size, mtime): a changed
or added image is embedded again, the others are reused; other weights or settings re-embed all.
"""
import os

import torch

from utils.checkpoint import atomic_save, safe_load
from utils.errors import DataError, WeightsError
from utils.images import is_image_file

CACHE_NAME = ".siamese_embeddings.pth"


def list_gallery(folder):
    """Image paths under `folder` (any depth, hidden files and folders skipped), relative and sorted."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such gallery folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files if is_image_file(f)]
    if not found:
        raise DataError(f"{folder}: no images in the gallery")
    return sorted(found)


def file_stamp(path):
    """(size, mtime in ns) of a file: what changes when the file does."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def cache_key(predictor):
    """What the embeddings depend on besides the images: the weights file and the input settings."""
    return {
        "weights": [os.path.abspath(predictor.model_path)] + file_stamp(predictor.model_path),
        "input_shape": list(predictor.input_shape),
        "letterbox_image": bool(predictor.letterbox_image),
    }


def load_cache(path, key):
    """The cached {relative path: (stamp, embedding)} for `key`, or {} when absent, stale or unreadable."""
    if not os.path.isfile(path):
        return {}
    try:
        cache = safe_load(path)
    except WeightsError as e:
        print(f"warning: ignoring the embedding cache: {e}")
        return {}
    if not isinstance(cache, dict) or cache.get("key") != key:
        return {}
    return {name: (stamp, row) for name, stamp, row in zip(cache["names"], cache["stamps"], cache["embeddings"])}


def gallery_embeddings(predictor, folder, use_cache=True, progress=True):
    """Embeddings of every gallery image -> (relative paths, (N, flat) tensor, number embedded now).

    Images whose (size, mtime) match the cache are not embedded again; the cache is rewritten when
    anything changed (a read-only gallery just goes uncached, with a warning).
    """
    names = list_gallery(folder)
    stamps = [file_stamp(os.path.join(folder, name)) for name in names]
    cache_path, key = os.path.join(folder, CACHE_NAME), cache_key(predictor)
    cached = load_cache(cache_path, key) if use_cache else {}
    missing = [i for i, (name, stamp) in enumerate(zip(names, stamps)) if cached.get(name, (None,))[0] != stamp]
    fresh = predictor.embed([os.path.join(folder, names[i]) for i in missing], progress=progress,
                            desc="embedding gallery")
    rows = {i: fresh[n] for n, i in enumerate(missing)}
    embeddings = torch.stack([rows[i] if i in rows else cached[name][1] for i, name in enumerate(names)])
    if use_cache and (missing or len(cached) != len(names)):
        try:
            atomic_save({"key": key, "names": names, "stamps": stamps, "embeddings": embeddings}, cache_path)
        except OSError as e:
            print(f"warning: could not write the embedding cache {cache_path}: {e}")
    return names, embeddings, len(missing)


def rank_gallery(predictor, folder, query, top=5, use_cache=True, progress=True):
    """Rank the gallery's images, and its class subfolders by their best image, by similarity to `query`.

    `query` is a path or PIL image. Returns (images, classes): lists of (score, relative path) and
    (score, class folder, best image) sorted best first, at most `top` each; classes is empty when
    every image sits directly in `folder`.
    """
    names, embeddings, _ = gallery_embeddings(predictor, folder, use_cache, progress)
    query_embedding = predictor.embed([query])
    scores = torch.cat([predictor.score_pairs(query_embedding, chunk) for chunk in embeddings.split(4096)]).tolist()
    ranked = sorted(zip(scores, names), key=lambda item: -item[0])
    best_by_class = {}
    for score, name in ranked:
        best_by_class.setdefault(os.path.dirname(name), (score, name))
    classes = [(score, cls, name) for cls, (score, name) in best_by_class.items() if cls]
    return ranked[:top], classes[:top]

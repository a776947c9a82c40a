"""Gallery search: rank a folder's images (and classes) by similarity to a query, with an embedding cache.

The cache lives in the gallery as `.siamese_embeddings.pth`. It is keyed by a digest of the loaded
weights and by the input settings, and holds one embedding per image keyed by its path and a blake2b digest
of its bytes: an image whose bytes changed is embedded again even when its size and modification time did
not (`cp -p`, `rsync -a` and `tar x` keep both), the others are reused; other weights or settings re-embed
all. Files that cannot be read or decoded are skipped with a warning naming each.
"""
import hashlib
import os
import stat
import sys

import torch
from tqdm import tqdm

from utils.errors import DataError, ImageError, WeightsError, printable
from utils.files import atomic_save, warn_skipped
from utils.images import image_file, is_image_file
from utils.weights import safe_load

CACHE_NAME = ".siamese_embeddings.pth"
CACHE_VERSION = 2  # a cache of another version is rebuilt
CHUNK = 256  # images held at a time, at the input size: a multiple of the predictor's batch (64), which then stays
DIGEST_BLOCK = 1 << 20  # bytes hashed at a time: a large image is never held whole to be hashed


def list_gallery(folder):
    """Image paths under `folder` (any depth, hidden files and folders skipped) -> relative paths, sorted.

    Symlinked folders are not followed (no loops); image names that are dangling or looping symlinks,
    or not regular files, are skipped with a warning naming each. Raises DataError when none is left.
    """
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such gallery folder")
    found, broken, linked = [], [], []
    for root, dirs, files in os.walk(folder, onerror=lambda e: broken.append(f"{e.filename} ({e.strerror})")):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        linked += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in (f for f in files if is_image_file(f)):
            path = os.path.join(root, name)
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
                    broken.append(f"{path} (not a regular file)")
                    continue
            except OSError as e:
                dangling = isinstance(e, FileNotFoundError) and os.path.islink(path)
                broken.append(f"{path} ({'dangling symlink' if dangling else e.strerror})")
                continue
            found.append(os.path.relpath(path, folder))
    warn_skipped("gallery file(s) or folder(s) that cannot be read", broken)
    warn_skipped("symlinked folder(s), not followed", linked)
    if not found:
        raise DataError(f"{folder}: no images in the gallery")
    return sorted(found)


def file_digest(path):
    """A blake2b digest (hex) of an image file's bytes: what changes whenever its content does. Raises ImageError
    naming the file when it is not a regular file of bounded size (`image_file`) or cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    with image_file(path) as file:
        try:
            while block := file.read(DIGEST_BLOCK):
                digest.update(block)
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror or e}") from None
    return digest.hexdigest()


def weights_digest(net):
    """A blake2b digest (hex) of a network's parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in net.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {list(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_key(predictor):
    """What the embeddings depend on besides the images: the loaded weights and the input settings."""
    return {
        "version": CACHE_VERSION,
        "weights": weights_digest(predictor.net),
        "input_shape": list(predictor.input_shape),
        "letterbox_image": bool(predictor.letterbox_image),
        "crop_to_ink": bool(predictor.crop_to_ink),
    }


def load_cache(path, key, width):
    """The cached {relative path: (content digest, embedding)} for `key`, or {} when absent, stale or unreadable.

    A cache that loads but does not hold together (lists of other lengths or types, embeddings not `width` wide or
    not finite) is stale too, with a warning: it is rebuilt.
    """
    if not os.path.isfile(path):
        return {}
    try:
        cache = safe_load(path)
    except WeightsError as e:
        print(f"warning: ignoring the embedding cache: {printable(e)}", file=sys.stderr)
        return {}
    if not isinstance(cache, dict) or cache.get("key") != key:
        return {}
    problem = cache_problem(cache, width)
    if problem:
        print(f"warning: ignoring the embedding cache {printable(path)}: {problem}; rebuilding it", file=sys.stderr)
        return {}
    return {name: (digest, row) for name, digest, row in zip(cache["names"], cache["digests"], cache["embeddings"])}


def cache_problem(cache, width):
    """What does not hold together in a loaded cache of the current key, in words; "" when nothing."""
    names, digests, embeddings = cache.get("names"), cache.get("digests"), cache.get("embeddings")
    if not all(isinstance(items, list) and all(isinstance(item, str) for item in items) for items in (names, digests)):
        return "its names and digests are not lists of text"
    if not torch.is_tensor(embeddings) or not embeddings.is_floating_point() or embeddings.dim() != 2:
        return "its embeddings are not a table of numbers"
    if not len(names) == len(digests) == len(embeddings):
        return f"{len(names)} names, {len(digests)} digests and {len(embeddings)} embeddings"
    if embeddings.shape[1] != width:
        return f"embeddings {embeddings.shape[1]} wide, these weights give {width}"
    if not torch.isfinite(embeddings).all():
        return "embeddings hold NaN or infinite values"
    return ""


def embed_files(predictor, paths, progress=True, desc="embedding gallery"):
    """Embed image files, skipping the unreadable -> ({index in paths: embedding}, {index: one error line}).

    Each image is preprocessed as soon as it is decoded (fitted to the input size while it is read), so CHUNK images
    at the input size are held at a time, never CHUNK full-size photos.
    """
    rows, errors = {}, {}
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), CHUNK):
            images = {}
            for i in range(start, min(start + CHUNK, len(paths))):
                try:
                    images[i] = predictor.preprocess(paths[i])
                except ImageError as e:
                    errors[i] = str(e)
            if images:
                rows.update(zip(images, predictor.embed(list(images.values()))))
            bar.update(min(CHUNK, len(paths) - start))
    return rows, errors


def gallery_embeddings(predictor, folder, use_cache=True, progress=True):
    """Embeddings of every readable gallery image -> (relative paths, (N, flat) tensor, number embedded now).

    Images whose path and content digest match the cache are not embedded again; files that cannot be read or
    decoded are left out with a warning. The cache is rewritten when anything changed (a read-only
    gallery just goes uncached, with a warning). Raises DataError when no image is readable.
    """
    names, unreadable, digests = list_gallery(folder), [], {}
    if use_cache:  # every file is read: size and mtime can stay the same while the content changes
        for name in names:
            try:
                digests[name] = file_digest(os.path.join(folder, name))
            except ImageError as e:
                unreadable.append(str(e))
        names = [name for name in names if name in digests]
    cache_path, key = os.path.join(folder, CACHE_NAME), cache_key(predictor) if use_cache else None
    width = predictor.net.fully_connect1.in_features  # the embedding's width: what the head takes
    cached = load_cache(cache_path, key, width) if use_cache else {}
    missing = [name for name in names if name not in digests or cached.get(name, (None,))[0] != digests[name]]
    fresh, errors = embed_files(predictor, [os.path.join(folder, name) for name in missing], progress)
    unreadable += errors.values()
    warn_skipped("unreadable image(s)", unreadable)
    embedded, reused = {missing[i]: row for i, row in fresh.items()}, set(names) - set(missing)
    names = [name for name in names if name in embedded or name in reused]
    if not names:
        raise DataError(f"{folder}: no readable images in the gallery ({len(unreadable)} unreadable)")
    embeddings = torch.stack([embedded[name] if name in embedded else cached[name][1] for name in names])
    if use_cache and (embedded or set(names) != set(cached)):
        try:
            kept = [digests[name] for name in names]
            atomic_save({"key": key, "names": names, "digests": kept, "embeddings": embeddings}, cache_path)
        except OSError as e:
            print(f"warning: could not write the embedding cache {printable(cache_path)}: {printable(e)}",
                  file=sys.stderr)
    return names, embeddings, len(embedded)


def rank_gallery(predictor, folder, query, top=5, use_cache=True, progress=True):
    """Rank the gallery's images, and its class subfolders by their best image, by similarity to `query`.

    `query` is a path or PIL image. Returns (images, classes): lists of (score, relative path) and
    (score, class folder, best image) sorted best first, at most `top` each; classes is empty when
    every image sits directly in `folder`.
    """
    names, embeddings, _ = gallery_embeddings(predictor, folder, use_cache, progress)
    index = predictor.index(embeddings)
    del embeddings  # the index holds what scoring needs
    scores = index.scores(predictor.embed([query])).tolist()
    ranked = sorted(zip(scores, names), key=lambda item: -item[0])
    best_by_class = {}
    for score, name in ranked:
        best_by_class.setdefault(os.path.dirname(name), (score, name))
    classes = [(score, cls, name) for cls, (score, name) in best_by_class.items() if cls]
    return ranked[:top], classes[:top]

"""The official Omniglot zips: download (or take from a local folder), verify and unpack them.

    python -m tools.datasets omniglot [--out dataset] [--from DIR] [--zips NAME ...]
"""
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from utils.errors import DataError

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# zip name -> (folder it fills, alphabets, characters); every character has 20 drawings
OMNIGLOT_ZIPS = {
    "images_background": ("images_background", 30, 964),
    "images_evaluation": ("images_evaluation", 20, 659),
    "images_background_small1": ("images_background", 5, 136),
    "images_background_small2": ("images_background", 5, 156),
}


def download(url, path):
    """Fetch `url` (http(s) or file://) to `path` with a progress bar; a partial file never keeps the final name."""
    partial = Path(str(path) + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(path).name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:  # URLError, HTTPError and socket timeouts are all OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {e}") from None
    os.replace(partial, path)
    return Path(path)


def verify_omniglot_zip(path, name):
    """Check that `path` is an intact zip (CRCs) holding `name`/<alphabet>/<character>/<image>.png with the
    alphabet and character counts the official `name`.zip has; raises DataError naming the file and the problem."""
    _, alphabets_expected, characters_expected = OMNIGLOT_ZIPS[name]
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip ({e})") from None
    if broken:
        raise DataError(f"{path}: corrupt member {broken} (CRC mismatch)")
    files = [n for n in names if not n.endswith("/")]
    parts = [n.split("/") for n in files]
    bad = [n for n, p in zip(files, parts) if len(p) != 4 or p[0] != name or ".." in p or not n.endswith(".png")]
    if bad or not files:
        found = bad[0] if bad else "no files"
        raise DataError(f"{path}: expected only {name}/<alphabet>/<character>/<image>.png, found {found}")
    alphabets, characters = {p[1] for p in parts}, {(p[1], p[2]) for p in parts}
    if (len(alphabets), len(characters)) != (alphabets_expected, characters_expected):
        raise DataError(
            f"{path}: {len(alphabets)} alphabets and {len(characters)} characters, expected "
            f"{alphabets_expected} and {characters_expected} for {name}.zip"
        )
    return len(alphabets), len(characters), len(files)


def unpack_omniglot_zip(path, name, out):
    """Unzip `name`.zip at `path` into `out`/<images_background|images_evaluation>/<alphabet>/<character>/.

    Character folders already there are replaced. Returns the folder filled."""
    target = Path(out) / OMNIGLOT_ZIPS[name][0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".unzip-") as tmp:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        for alphabet in sorted((Path(tmp) / name).iterdir()):
            for character in sorted(alphabet.iterdir()):
                dest = target / alphabet.name / character.name
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(exist_ok=True)
                os.replace(character, dest)
    return target


def get_omniglot(out="dataset", zips=("images_background", "images_evaluation"), source=None, url=OMNIGLOT_URL):
    """Fetch (or take from the folder `source`), verify and unpack the named Omniglot zips into `out`.

    Downloads from `url` + name + ".zip" into `out` first (kept there, so a rerun skips the download).
    Returns [(folder filled, alphabets, characters, images)].
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for name in zips:
        if source is not None:
            path = Path(source) / f"{name}.zip"
            if not path.is_file():
                raise DataError(f"{path}: no such file (--from expects the official {name}.zip there)")
        else:
            path = out / f"{name}.zip"
            if not path.is_file():
                download(f"{url.rstrip('/')}/{name}.zip", path)
        try:
            counts = verify_omniglot_zip(path, name)
        except DataError:
            if source is None:  # a damaged download must not be trusted on the next run either
                path.unlink()
            raise
        done.append((unpack_omniglot_zip(path, name, out), *counts))
    return done

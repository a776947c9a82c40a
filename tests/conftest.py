"""Shared fixtures: real Omniglot zips from OMNIGLOT_DIR (default ../shared/omniglot), unpacked once."""
import os
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OMNIGLOT_DIR = ROOT.parent / "shared" / "omniglot"


def omniglot_zip(name):
    """Path of an Omniglot zip; skips when the data is absent, fails when OMNIGLOT_DIR names a folder without it."""
    folder = Path(os.environ.get("OMNIGLOT_DIR", DEFAULT_OMNIGLOT_DIR))
    path = folder / name
    if path.is_file():
        return path
    if "OMNIGLOT_DIR" in os.environ:
        pytest.fail(f"OMNIGLOT_DIR={folder} has no {name}")
    pytest.skip(f"real Omniglot data not found: {path} (set OMNIGLOT_DIR to a folder with the zips)")


def unpack(zip_name, target):
    """Unzip `zip_name` into `target`; returns the folder of alphabets inside it."""
    with zipfile.ZipFile(omniglot_zip(zip_name)) as archive:
        archive.extractall(target)
    return target / Path(zip_name).stem


@pytest.fixture(scope="session")
def small1(tmp_path_factory):
    """images_background_small1 unpacked: <alphabet>/<character>/<drawer>.png (5 alphabets)."""
    return unpack("images_background_small1.zip", tmp_path_factory.mktemp("small1"))


@pytest.fixture(scope="session")
def small2(tmp_path_factory):
    """images_background_small2 unpacked (5 other alphabets)."""
    return unpack("images_background_small2.zip", tmp_path_factory.mktemp("small2"))


def make_subset(alphabets_dir, target, alphabets=2, characters=6, drawers=20):
    """Copy a few alphabets/characters/drawers into `target/images_background/` (Omniglot layout)."""
    import shutil

    out = target / "images_background"
    for alphabet in sorted(p for p in alphabets_dir.iterdir() if p.is_dir())[:alphabets]:
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir())[:characters]:
            dest = out / alphabet.name / character.name
            dest.mkdir(parents=True)
            for image in sorted(character.glob("*.png"))[:drawers]:
                shutil.copy(image, dest / image.name)
    return target


@pytest.fixture
def omniglot_subset(small1, tmp_path):
    """A small real Omniglot dataset folder: 2 alphabets x 6 characters x 20 drawers."""
    return make_subset(small1, tmp_path / "dataset")

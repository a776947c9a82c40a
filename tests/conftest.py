"""Shared fixtures: real Omniglot zips from OMNIGLOT_DIR (default ../shared/omniglot), unpacked once."""
import pytest

from helpers import make_subset, unpack


@pytest.fixture(scope="session")
def small1(tmp_path_factory):
    """images_background_small1 unpacked: <alphabet>/<character>/<drawer>.png (5 alphabets)."""
    return unpack("images_background_small1.zip", tmp_path_factory.mktemp("small1"))


@pytest.fixture(scope="session")
def small2(tmp_path_factory):
    """images_background_small2 unpacked (5 other alphabets)."""
    return unpack("images_background_small2.zip", tmp_path_factory.mktemp("small2"))


@pytest.fixture
def omniglot_subset(small1, tmp_path):
    """A small real Omniglot dataset folder: 2 alphabets x 6 characters x 20 drawers."""
    return make_subset(small1, tmp_path / "dataset")

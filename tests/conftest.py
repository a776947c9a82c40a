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


@pytest.fixture(scope="session")
def trained_run(small1, tmp_path_factory):
    """One finished in-process run of ResNet18 at 32x32 on class batches of 2 real alphabets (3 epochs, split by
    class, calibrated), shared by the tests that need trained weights: (dataset folder, save_dir)."""
    import train

    root = tmp_path_factory.mktemp("trained")
    data = make_subset(small1, root / "dataset", alphabets=2, characters=6, drawers=6)
    config, _ = train.parse_train_config([
        "--dataset_path", str(data), "--save_dir", str(root / "logs"), "--input_shape", "32", "32",
        "--pretrained", "False", "--backbone", "resnet18", "--pairing", "batch", "--batch_size", "8",
        "--images_per_class", "2", "--split_by", "class", "--train_ratio", "0.67", "--Epoch", "3",
        "--num_workers", "0", "--Cuda", "False", "--calibrate", "True", "--save_period", "1", "--bf16", "False"])
    train.main(config)
    return data, root / "logs"

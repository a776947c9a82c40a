"""Speed and scale: fast image decoding, batched augmentation, worker seeding, mixed precision, torchrun DDP, bench."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

from helpers import ROOT, make_subset
from nets.siamese import SiameseNetwork
from utils.dataloader import SiameseDataset, list_images
from utils.errors import ImageError
from utils.images import load_image, open_image
from utils.loop import split_pairs


def saved_modes(folder):
    """One small PNG per PIL mode (the fast decoder and PIL must agree on all of them)."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    images = {
        "1": rgba.convert("1"), "L": rgba.convert("L"), "LA": rgba.convert("LA"), "RGB": rgba.convert("RGB"),
        "RGBA": rgba, "P": rgba.convert("RGB").convert("P", palette=Image.ADAPTIVE),
        "I16": Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)),
    }
    paths = {}
    for mode, image in images.items():
        paths[mode] = folder / f"{mode}.png"
        image.save(paths[mode])
    image.convert("RGB").save(folder / "rgb.jpg")
    paths["JPEG"] = folder / "rgb.jpg"
    return paths


def test_load_image_matches_pil_for_every_mode(tmp_path):
    for mode, path in saved_modes(tmp_path).items():
        expected = v2.functional.pil_to_tensor(open_image(path))
        assert torch.equal(load_image(path), expected), mode
        grey = load_image(path, keep_grey=True)
        assert grey.shape[0] == (1 if mode in ("1", "L", "LA") else 3), mode
        assert torch.equal(grey.expand(3, -1, -1), expected), mode


def test_load_image_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing sensible
    cases = [(broken, "not a readable image"), (tmp_path / "missing.png", "no such file"), (tmp_path, "directory")]
    for path, message in cases:
        with pytest.raises(ImageError, match=re.escape(str(path)) + ".*" + message):
            load_image(path)


def test_dataset_items_and_seeding(omniglot_subset):
    """Workers and ranks (torch seeded with seed + rank, as train.py does) draw different pairs."""
    paths, labels, _, _ = list_images(omniglot_subset)
    dataset = SiameseDataset(paths, labels, [32, 32], train=True)
    images, pair_labels = dataset[0]
    assert images.shape == (2, 2, 3, 32, 32) and sorted(pair_labels.tolist()) == [0.0, 1.0]

    def first_batches(rank):
        torch.manual_seed(rank)
        batches = iter(DataLoader(dataset, batch_size=2, num_workers=2, shuffle=True))
        return [next(batches)[0] for _ in range(2)]  # worker 0 makes the first batch, worker 1 the second

    rank0, rank1 = first_batches(0), first_batches(1)
    assert not torch.equal(rank0[0], rank0[1])  # the two workers differ
    assert not torch.equal(rank0[0], rank1[0])  # the two ranks differ
    assert torch.equal(rank0[0], first_batches(0)[0])  # and a seed repeats its draws


def test_bf16_and_fp32_losses_close(omniglot_subset):
    paths, labels, _, _ = list_images(omniglot_subset)
    torch.manual_seed(0)
    batch = default_collate(SiameseDataset(paths, labels, [64, 64], train=False).__getitems__(range(4)))
    model = SiameseNetwork([64, 64]).eval()
    losses = {}
    for name, dtype, channels_last in [("fp32", None, False), ("bf16", torch.bfloat16, True)]:
        first, second, targets = split_pairs(*batch, torch.device("cpu"), channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
            logits = model(first, second).squeeze(1)
        losses[name] = F.binary_cross_entropy_with_logits(logits.float(), targets).item()
    assert np.isfinite(losses["fp32"])
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * max(1.0, losses["fp32"]), losses


def test_torchrun_two_processes(small1, tmp_path):
    dataset = make_subset(small1, tmp_path / "dataset", alphabets=2, characters=6, drawers=10)
    save_dir = tmp_path / "logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
        "--dataset_path", str(dataset), "--input_shape", "32", "32", "--pretrained", "False", "--Cuda", "False",
        "--Epoch", "1", "--batch_size", "4", "--train_ratio", "0.6", "--num_workers", "0", "--save_dir", str(save_dir),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "x 2" in result.stdout  # the config table shows 2 processes
    names = sorted(p.name for p in save_dir.iterdir())
    weights = [n for n in names if n.endswith(".pth")]
    assert len(weights) == 3 and "best_epoch_weights.pth" in weights and "last_epoch_weights.pth" in weights, names
    assert names.count("last.ckpt") == 1 and len([n for n in names if n.startswith("loss_")]) == 1, names
    epoch_file = next(n for n in weights if n.startswith("ep001-"))
    loss = float(re.search(r"loss(\d+\.\d+)-val_loss", epoch_file).group(1))
    assert np.isfinite(loss) and loss > 0
    assert result.stdout.count("Epoch 1/1: loss") == 1  # only rank 0 talks


def test_bench_quick_prints_every_figure(omniglot_subset):
    command = [sys.executable, "bench.py", "--quick", "--dataset", str(omniglot_subset), "--input_shape", "32", "32",
               "--batch_size", "2", "--steps", "1", "--loader_images", "32", "--workers", "1", "--threads", "1",
               "--way", "5"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    number = r"(\d+(?:\.\d+)?)"
    loader = rf"loader images/s per worker: {number} \(PIL image by image: {number}; ratio {number}x\)"
    assert re.search(loader, out), out
    for setting in ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last"):
        line = re.search(rf"^{re.escape(setting)} +training pairs/s +{number} +inference pairs/s +{number} +"
                         rf"peak memory \(training\) {number} MiB", out, re.M)
        assert line and all(float(x) > 0 for x in line.groups()), (setting, out)
    for setting in ("fp32+channels_last", "bf16", "bf16+channels_last"):
        assert re.search(rf"ratio {re.escape(setting)} / fp32: training {number}x, inference {number}x", out), out
    assert re.search(rf"DataLoader with 1 workers: {number} images/s", out), out
    assert re.search(rf"one 5-way task \(25 pairs, .*head only {number} ms; .*network {number} ms", out), out


def test_bench_defaults_to_the_embedded_glyphs(tmp_path, monkeypatch):
    import functools

    import bench
    from tools.glyphs import make_glyphs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "make_glyphs", functools.partial(make_glyphs, max_characters=3))
    assert bench.default_dataset() == "dataset/glyphs"  # no dataset/: the glyphs are built
    assert (tmp_path / "dataset" / "glyphs" / "images_background").is_dir()
    (tmp_path / "dataset" / "images_background").mkdir()
    assert bench.default_dataset() == "dataset"  # the user's own data wins once it is there

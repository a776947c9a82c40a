"""Speed and scale: fast image decoding, batched augmentation, worker seeding, mixed precision, torchrun DDP, bench."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from helpers import ROOT, make_subset, run
from nets.siamese import SiameseNetwork
from utils.dataloader import PairItems, list_images
from utils.engine import pair_sides
from utils.errors import ImageError
from utils.images import load_image, open_image


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


def test_each_step_is_drawn_by_its_seed_and_number_alone(omniglot_subset):
    """Workers draw the very batches the main process would, ranks (seed + rank, as train.py gives) draw others."""
    paths, labels, _, _ = list_images(omniglot_subset)
    dataset = PairItems(paths, labels, [32, 32], items=2, train=True, seed=0)
    batch = dataset[0]
    assert batch.images.shape == (2, 2, 2, 3, 32, 32)
    assert all(sorted(row) == [0.0, 1.0] for row in batch.labels.tolist())
    in_process = [dataset[step].images for step in range(4)]
    from_workers = [b.images for b in DataLoader(dataset, batch_size=None, sampler=range(4), num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(in_process, from_workers))  # whichever worker draws a step
    assert not torch.equal(in_process[0], in_process[1])  # steps differ
    other_rank = PairItems(paths, labels, [32, 32], items=2, train=True, seed=1)
    assert not torch.equal(in_process[0], other_rank[0].images)  # the ranks differ
    torch.manual_seed(123)
    before = torch.get_rng_state()
    dataset[5]
    assert torch.equal(torch.get_rng_state(), before)  # drawing leaves the caller's generator alone


def test_bf16_and_fp32_losses_close(omniglot_subset):
    paths, labels, _, _ = list_images(omniglot_subset)
    torch.manual_seed(0)
    batch = PairItems(paths, labels, [64, 64], items=4, train=False)[0]
    model = SiameseNetwork([64, 64]).eval()
    losses = {}
    for name, dtype, channels_last in [("fp32", None, False), ("bf16", torch.bfloat16, True)]:
        first, second, targets = pair_sides(batch, torch.device("cpu"), channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
            logits = model(first, second).squeeze(1)
        losses[name] = F.binary_cross_entropy_with_logits(logits.float(), targets).item()
    assert np.isfinite(losses["fp32"])
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * max(1.0, losses["fp32"]), losses


@pytest.mark.slow
def test_torchrun_two_processes_stop_together_on_sigterm_and_resume(small1, tmp_path):
    dataset = make_subset(small1, tmp_path / "dataset", alphabets=2, characters=6, drawers=10)
    save_dir = tmp_path / "logs"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    command = launch + ["--dataset_path", str(dataset), "--input_shape", "32", "32", "--pretrained", "False",
                        "--Cuda", "False", "--Epoch", "40", "--batch_size", "4", "--train_ratio", "0.6",
                        "--num_workers", "0", "--save_dir", str(save_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        deadline = time.time() + 240
        while not (save_dir / "last_epoch_weights.json").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)  # torchrun passes it to every rank, as SLURM and Kubernetes stop jobs
        process.wait(timeout=120)
    stdout = (tmp_path / "out").read_text()
    assert "x 2" in stdout  # the config table shows 2 processes
    assert stdout.count("Stopped ") == 1 and "continue with: python train.py --resume" in stdout  # only rank 0
    stopped_at = torch.load(save_dir / "last.ckpt", weights_only=True)["epoch"]
    assert 1 <= stopped_at < 40
    result = subprocess.run(launch + ["--resume", str(save_dir / "last.ckpt"), "--Epoch", str(stopped_at + 1)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    names = sorted(p.name for p in save_dir.iterdir())
    weights = [n for n in names if n.endswith(".pth")]
    assert len(weights) == 3 and "best_epoch_weights.pth" in weights and "last_epoch_weights.pth" in weights, names
    assert names.count("last.ckpt") == 1 and len([n for n in names if n.startswith("loss_")]) == 1, names
    epoch_file = next(n for n in weights if n.startswith(f"ep{stopped_at + 1:03d}-"))
    loss = float(re.search(r"loss(\d+\.\d+)-val_loss", epoch_file).group(1))
    assert np.isfinite(loss) and loss > 0
    assert result.stdout.count(f"Epoch {stopped_at + 1}/{stopped_at + 1}: loss") == 1  # only rank 0 talks


def run_bench(*args):
    result = run("bench.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


NUMBER = r"(\d+(?:\.\d+)?)"


def test_bench_quick_prints_every_figure(omniglot_subset):
    out = run_bench("--quick", "--dataset", omniglot_subset, "--input_shape", 32, 32, "--batch_size", 2, "--steps", 1,
                    "--loader_images", 32, "--workers", 1, "--threads", 1, "--way", 5)
    loader = rf"loader images/s per worker: {NUMBER} \(PIL image by image: {NUMBER}; ratio {NUMBER}x\)"
    assert re.search(loader, out), out
    line = re.search(rf"^fp32 +training pairs/s +{NUMBER} +inference pairs/s +{NUMBER} +"
                     rf"peak memory \(training\) {NUMBER} MiB", out, re.M)
    assert line and all(float(x) > 0 for x in line.groups()), out
    assert "--quick: fp32 alone" in out and "bf16 " not in out  # quick on any CPU: nothing emulated
    assert re.search(r"^fp32\+channels_last +training pairs/s", out, re.M), out  # what train.py runs on a CPU
    peak = re.search(rf"fp32 step: {NUMBER} GFLOP in {NUMBER} s = {NUMBER} GFLOP/s; peak .* {NUMBER} GFLOP/s: "
                     rf"{NUMBER}% of it", out)
    assert peak and 0 < float(peak.group(5)) <= 100 * 1.5, out  # a step's FLOPs over the measured peak
    assert re.search(rf"DataLoader with 1 workers: {NUMBER} images/s", out), out
    assert re.search(rf"one 5-way task \(25 pairs, .*head only {NUMBER} ms; .*once \+ head {NUMBER} ms; "
                     rf"every pair through the network: not timed with --quick", out), out


def test_the_one_shot_task_is_timed_three_ways_and_the_full_network_is_the_slowest(omniglot_subset):
    import bench

    paths, labels, _, _ = list_images(omniglot_subset)
    times = bench.time_oneshot_task(paths, labels, [32, 32], way=3, repeats=1, device=torch.device("cpu"))
    assert times["pairs"] == 9 and 0 < times["cached"] < times["full_network"]
    assert bench.time_oneshot_task(paths, labels, [32, 32], 3, 1, torch.device("cpu"), full_network=False)[
        "full_network"] is None


def test_bench_times_the_recipes_step_and_skips_what_this_cpu_emulates(omniglot_subset):
    from utils.precision import native_bf16

    out = run_bench("--pairing", "batch", "--dataset", omniglot_subset, "--input_shape", 32, 32, "--batch_size", 8,
                    "--steps", 1, "--workers", 1, "--threads", 1)
    assert "the recipe's step: conv4_96 at 32x32, 8 images of 4 per class, 28 pairs, BCE + ranking term" in out
    resnet18 = run_bench("--pairing", "batch", "--preset", "config/omniglot_resnet18.py", "--dataset", omniglot_subset,
                         "--input_shape", 32, 32, "--batch_size", 8, "--steps", 1, "--workers", 0, "--threads", 1,
                         "--quick")
    assert "the step of config/omniglot_resnet18.py: resnet18 at 32x32, 8 images" in resnet18
    assert re.search(rf"fp32 model step \(fp32\+channels_last, as train.py trains\) {NUMBER} s: {NUMBER} steps/s, "
                     rf"{NUMBER} pairs/s", out), out
    assert re.search(rf"{NUMBER}% of it", out) and re.search(rf"drawn and augmented .*: {NUMBER} s decoding its "
                                                              rf"drawings, {NUMBER} s once they are kept", out), out
    for workers in (0, 1):
        assert re.search(rf"whole step, {workers} loader workers \(fp32\+channels_last\): {NUMBER} s = {NUMBER} "
                         rf"steps/s", out), out
    timed_bf16 = re.search(r"^bf16 +training pairs/s", out, re.M) is not None
    assert timed_bf16 == native_bf16() and ("bf16 skipped" in out) == (not native_bf16()), out


def test_bench_times_the_step_of_the_preset_it_is_given(capsys):
    import bench

    recipe = bench.parse_args(["--pairing", "batch"])
    assert (recipe.input_shape, recipe.batch_size) == ([48, 48], 64)  # config/omniglot_scratch.py's
    resnet18 = bench.parse_args(["--pairing", "batch", "--preset", str(ROOT / "config" / "omniglot_resnet18.py")])
    assert bench.read_preset_values(resnet18.preset)["backbone"] == "resnet18" and resnet18.input_shape == [64, 64]
    with pytest.raises(SystemExit):
        bench.parse_args(["--pairing", "batch", "--preset", "config/missing.py"])
    assert "preset config/missing.py: cannot be read" in capsys.readouterr().err


def test_bench_times_a_gallery_query():
    out = run_bench("--gallery", 5000, "--input_shape", 64, 64, "--steps", 1, "--threads", 1)
    match = re.search(rf"gallery query: 5000 cached embeddings of 2048 features .*: {NUMBER} ms a query", out)
    assert match and float(match.group(1)) > 0, out


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

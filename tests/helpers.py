"""Code the tests share: real Omniglot data, weights in the original format and a functional forward pass."""
import contextlib
import io
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OMNIGLOT_DIR = ROOT.parent / "shared" / "omniglot"
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}  # 2 shared cores: one thread each is fastest
TRAIN = ["--input_shape", "32", "32", "--pretrained", "False", "--num_workers", "0", "--Cuda", "False",
         "--batch_size", "4", "--deterministic", "True"]


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


def make_subset(alphabets_dir, target, alphabets=2, characters=6, drawers=20):
    """Copy a few alphabets/characters/drawers into `target/images_background/` (Omniglot layout)."""
    out = target / "images_background"
    for alphabet in sorted(p for p in alphabets_dir.iterdir() if p.is_dir())[:alphabets]:
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir())[:characters]:
            dest = out / alphabet.name / character.name
            dest.mkdir(parents=True)
            for image in sorted(character.glob("*.png"))[:drawers]:
                shutil.copy(image, dest / image.name)
    return target


def original_format_state_dict(input_shape, seed=0):
    """Random weights under exactly the original repository's keys, built without our classes."""
    generator = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
            continue
        weight = torch.randn(item, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
        state[f"vgg.features.{index}.weight"] = weight
        state[f"vgg.features.{index}.bias"] = torch.randn(item, generator=generator) * 0.01
        channels, index = item, index + 2  # conv then ReLU
    flat = 512 * (input_shape[0] // 32) * (input_shape[1] // 32)
    state["fully_connect1.weight"] = torch.randn(512, flat, generator=generator) / flat**0.5
    state["fully_connect1.bias"] = torch.randn(512, generator=generator) * 0.01
    state["fully_connect2.weight"] = torch.randn(1, 512, generator=generator) / 512**0.5
    state["fully_connect2.bias"] = torch.randn(1, generator=generator) * 0.01
    return state


def resnet18_features(state, prefix="resnet18"):
    """torchvision's resnet18 up to layer4 (up to layer3 for `prefix` "resnet18_layer3") with the `prefix.*` tensors
    of `state`: (N, 3, H, W) -> flat features."""
    from torchvision.models import resnet18
    full = resnet18(weights=None).eval()
    trunk = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    missing, unexpected = full.load_state_dict(trunk, strict=False)
    dropped = ("fc.",) if prefix == "resnet18" else ("fc.", "layer4.")
    assert not unexpected and all(k.startswith(dropped) for k in missing), (missing, unexpected)
    layers = torch.nn.Sequential(*list(full.children())[:-2 if prefix == "resnet18" else -3])  # no avgpool, fc
    return lambda x: torch.flatten(layers(x), 1)


def direct_probability(state, image_1, image_2):
    """Similarity computed from the raw tensors (VGG16 with functional ops, or torchvision's resnet18, whole or to
    layer3): the reference for compatibility."""
    def vgg_features(x):
        index = 0
        for item in VGG16_CONFIG:
            if item == "M":
                x, index = F.max_pool2d(x, 2, 2), index + 1
            else:
                weight, bias = state[f"vgg.features.{index}.weight"], state[f"vgg.features.{index}.bias"]
                x = F.conv2d(x, weight, bias, padding=1)
                norm = f"vgg.features.{index + 1}."
                if norm + "running_mean" in state:  # vgg16_bn: conv, batch norm, relu
                    x = F.batch_norm(x, state[norm + "running_mean"], state[norm + "running_var"],
                                     state[norm + "weight"], state[norm + "bias"], training=False, eps=1e-5)
                    index += 1
                x = F.relu(x)
                index += 2
        return torch.flatten(x, 1)

    resnet = next((name for name in ("resnet18", "resnet18_layer3") if f"{name}.conv1.weight" in state), None)
    features = resnet18_features(state, resnet) if resnet else vgg_features
    with torch.no_grad():
        x = torch.abs(features(image_1) - features(image_2))
    x = F.linear(x, state["fully_connect1.weight"], state["fully_connect1.bias"])
    x = F.linear(x, state["fully_connect2.weight"], state["fully_connect2.bias"])
    return torch.sigmoid(x)


def run(script, *args, stdin=None, timeout=120, cwd=ROOT):
    """Run a top-level script of the repository as `python script args` would, but inside this process (a new
    Python with torch costs seconds of start-up a call); returns a CompletedProcess (text) with the exit code, the
    output and a traceback as the interpreter prints them. Use `run_subprocess` where the process itself matters
    (signals, resource limits, environment)."""
    argv = [str(ROOT / script), *map(str, args)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with isolated_state(argv, stdin, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def isolated_state(argv, stdin, cwd=ROOT):
    """argv, the working folder, stdin, torch's threads, random states and deterministic mode, and the signal
    handlers as a fresh process would have them; all restored afterwards."""
    saved = (sys.argv, sys.stdin, os.getcwd(), torch.get_num_threads(), torch.get_rng_state(), random.getstate(),
             torch.are_deterministic_algorithms_enabled(), signal.getsignal(signal.SIGINT),
             signal.getsignal(signal.SIGTERM))
    sys.argv, sys.stdin = argv, io.StringIO(stdin or "")
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv, sys.stdin = saved[0], saved[1]
        os.chdir(saved[2])
        torch.set_num_threads(saved[3])
        torch.set_rng_state(saved[4])
        random.setstate(saved[5])
        torch.use_deterministic_algorithms(saved[6])
        signal.signal(signal.SIGINT, saved[7])
        signal.signal(signal.SIGTERM, saved[8])


def run_subprocess(script, *args, stdin=None, timeout=120, env=None):
    """Run a top-level script of the repository in a new Python process; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env or ENV,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *fragments, rc=1):
    """The run failed with exit code `rc` and a last stderr line `error: ...` holding every fragment, no traceback."""
    assert result.returncode == rc, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last, last
    for fragment in fragments:
        assert fragment in last, last


def png(path, size=(40, 40), seed=0):
    """Write a small random greyscale PNG (made here, not taken from any data set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)
    return path

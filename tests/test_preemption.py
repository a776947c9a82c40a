"""Training that survives the way clusters stop it: SIGTERM saves like Ctrl-C, checkpoints inside an epoch resume at
their very step, and a resume, a best_by or a batch that cannot do what it says is told before any work."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ENV, ROOT, TRAIN, assert_one_line_error, make_subset, png, run, run_subprocess

from utils.checkpoint import load_checkpoint
from utils.weights import safe_load

SMALL = ["--train_ratio", "0.5", *TRAIN]  # 4 characters x 8 drawers: 4 training steps of 4 items an epoch


@pytest.fixture(scope="module")
def eight_drawers(small1, tmp_path_factory):
    return make_subset(small1, tmp_path_factory.mktemp("preempt") / "dataset", alphabets=1, characters=4, drawers=8)


def start(args, log):
    """train.py started in the background, its output going to the files `log`.out and `log`.err."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=out, stderr=err, start_new_session=True)


def wait_for(condition, process, seconds=120):
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert condition(), "the run ended or timed out before the condition held"


def mid_epoch_checkpoint(path):
    """True when `path` holds a checkpoint written inside an epoch (training steps done, the epoch not finished)."""
    try:
        return bool(os.path.isfile(path) and load_checkpoint(str(path)).get("meter"))
    except Exception:  # being renamed into place
        return False


def test_sigterm_stops_at_a_step_boundary_and_saves_a_resumable_checkpoint(eight_drawers, tmp_path):
    save_dir = tmp_path / "logs"
    process = start(["--dataset_path", eight_drawers, *SMALL, "--Epoch", 40, "--save_dir", save_dir], tmp_path / "run")
    wait_for(lambda: "Epoch 2/40 train" in (tmp_path / "run.err").read_text(), process)
    process.send_signal(signal.SIGTERM)
    rc = process.wait(timeout=120)
    out, err = (tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text()
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "SIGTERM: stopping after this step" in out
    assert f"continue with: python train.py --resume {save_dir / 'last.ckpt'}" in out
    checkpoint = load_checkpoint(str(save_dir / "last.ckpt"))
    assert checkpoint["epoch"] >= 1 and len(checkpoint["losses"]) == checkpoint["epoch"]
    assert not list(save_dir.glob(".tmp-*")) and not (save_dir / ".lock").exists()


@pytest.mark.slow
def test_a_run_killed_inside_an_epoch_resumes_at_its_last_step_exactly(eight_drawers, tmp_path):
    common = ["--dataset_path", eight_drawers, *SMALL, "--Epoch", 3]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # all three runs in processes of one thread: the same sums in the same order, so equal weights are exact
    assert run_subprocess("train.py", *common, "--save_dir", whole, timeout=300).returncode == 0
    process = start([*common, "--save_dir", killed, "--checkpoint_minutes", 0.0001], tmp_path / "killed")
    wait_for(lambda: mid_epoch_checkpoint(killed / "last.ckpt"), process)
    os.killpg(process.pid, signal.SIGKILL)  # preempted without warning: no handler runs
    process.wait(timeout=60)
    halfway = load_checkpoint(str(killed / "last.ckpt"))
    if not halfway.get("meter"):
        pytest.skip("the run wrote an epoch's end after the mid-epoch checkpoint was seen")  # a rare race
    epoch, steps = halfway["epoch"], halfway["meter"]["steps"]
    assert 1 <= steps < 4 and len(halfway["losses"]) == epoch
    result = run_subprocess("train.py", "--resume", killed / "last.ckpt", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"at epoch {epoch + 1}/3, step {steps + 1}/4" in result.stdout
    single, resumed = load_checkpoint(str(whole / "last.ckpt")), load_checkpoint(str(killed / "last.ckpt"))
    assert single["losses"] == resumed["losses"] and single["val_losses"] == resumed["val_losses"]
    a, b = safe_load(str(whole / "last_epoch_weights.pth")), safe_load(str(killed / "last_epoch_weights.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_changed_data_is_refused(eight_drawers, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(eight_drawers, data)
    save_dir = tmp_path / "logs"
    assert run("train.py", "--dataset_path", data, *SMALL, "--Epoch", 1, "--save_dir", save_dir).returncode == 0
    character = next((data / "images_background").glob("*/*"))
    shutil.copytree(character, character.with_name("character99"))  # a class added since
    result = run("train.py", "--resume", save_dir / "last.ckpt", "--Epoch", 2)
    assert_one_line_error(result, "the classes or images differ from those", "--model_path")


def test_best_by_oneshot_that_could_never_measure_is_refused_before_training(tmp_path):
    # classes c3 and c5 validate (split_by class, seed 0): c5's one image can be a negative, never a one-shot query
    for name, count in {"c0": 6, "c1": 6, "c2": 6, "c3": 6, "c4": 6, "c5": 1}.items():
        for i in range(count):
            png(tmp_path / "data" / "images_background" / name / f"{i}.png", seed=10 * int(name[1]) + i)
    result = run("train.py", "--dataset_path", tmp_path / "data", "--train_own_data", "True", *TRAIN,
                 "--split_by", "class", "--train_ratio", 0.67, "--best_by", "oneshot", "--save_dir", tmp_path / "logs")
    assert_one_line_error(result, "best_by oneshot: the validation split has 1 class(es)", "best_by val_loss", rc=2)
    assert not (tmp_path / "logs" / "last.ckpt").exists()


def test_class_batches_smaller_than_batch_size_are_told_once(eight_drawers, tmp_path):
    result = run("train.py", "--dataset_path", eight_drawers, *SMALL, "--Epoch", 1, "--pairing", "batch",
                 "--batch_size", 16, "--images_per_class", 2, "--save_dir", tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("a batch may hold as few as 8 images") == 1  # 4 classes of 2: 16 asked for

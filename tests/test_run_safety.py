"""A run never destroys another run's files, settings that cannot work stop before any work, faults are one line."""
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ENV, ROOT, TRAIN, assert_one_line_error, make_subset, run

import train
from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.checkpoint import load_checkpoint
from utils.dataloader import list_images
from utils.errors import ConfigError, DataError, WeightsError
from utils.files import atomic_save
from utils.oneshot import parse_run
from utils.rundir import claim_save_dir, release


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(small1, tmp_path_factory):
    """One finished 1-epoch run of 4 real characters x 4 drawers: (dataset folder, save_dir)."""
    root = tmp_path_factory.mktemp("run")
    data = make_subset(small1, root / "dataset", alphabets=1, characters=4, drawers=4)
    save_dir = root / "logs"
    result = run("train.py", "--dataset_path", data, "--train_ratio", 0.5, "--Epoch", 1, "--save_dir", save_dir, *TRAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    return data, save_dir


def test_a_new_run_never_replaces_an_earlier_run(finished_run, tmp_path):
    data, save_dir = finished_run
    before = {p.name: digest(p) for p in save_dir.glob("*.pth")} | {"last.ckpt": digest(save_dir / "last.ckpt")}
    again = run("train.py", "--dataset_path", data, "--train_ratio", 0.5, "--Epoch", 1, "--save_dir", save_dir, *TRAIN)
    assert_one_line_error(again, "already holds a run", f"--resume {save_dir / 'last.ckpt'}", "--overwrite True", rc=2)
    after = {p.name: digest(p) for p in save_dir.glob("*.pth")} | {"last.ckpt": digest(save_dir / "last.ckpt")}
    assert after == before and not (save_dir / ".lock").exists()


def test_resume_writes_beside_the_checkpoint_it_was_given(finished_run, tmp_path):
    _, save_dir = finished_run
    copy = tmp_path / "logs2"
    shutil.copytree(save_dir, copy)
    original = digest(save_dir / "last.ckpt")
    result = run("train.py", "--resume", copy / "last.ckpt", "--Epoch", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert digest(save_dir / "last.ckpt") == original
    resumed = load_checkpoint(str(copy / "last.ckpt"))
    assert resumed["epoch"] == 2 and os.path.dirname(resumed["log_dir"]) == str(copy)
    assert len((copy / os.path.basename(resumed["log_dir"]) / "epoch_loss.txt").read_text().split()) == 2
    elsewhere = tmp_path / "elsewhere"
    result = run("train.py", "--resume", copy / "last.ckpt", "--Epoch", 3, "--save_dir", elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    (history,) = elsewhere.glob("loss_*/epoch_loss.txt")
    assert len(history.read_text().split()) == 3 and load_checkpoint(str(copy / "last.ckpt"))["epoch"] == 2


def test_the_lock_stops_a_second_run_and_stale_leftovers_are_cleared(tmp_path):
    save_dir = tmp_path / "logs"
    save_dir.mkdir()
    (save_dir / ".lock").write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()}\)"):
        claim_save_dir(str(save_dir))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (save_dir / ".lock").write_text(str(gone.pid))  # its process has ended
    stale, live = save_dir / f".tmp-{gone.pid}-abc.pth", save_dir / f".tmp-{os.getpid()}-def.pth"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    lock = claim_save_dir(str(save_dir))
    assert (save_dir / ".lock").read_text() == str(os.getpid())
    assert not stale.exists() and live.exists()
    release(lock)
    assert not (save_dir / ".lock").exists()


def test_save_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim_save_dir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="cannot create save_dir"):
        claim_save_dir(str(tmp_path / "file" / "logs"))


def test_saved_files_get_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_save({"x": torch.zeros(1)}, str(tmp_path / "w.pth"))
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "w.pth").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o640


def limit_file_size():
    """In a child process: files may grow to 1 MB only, and writing past that fails instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_earlier_file(finished_run, tmp_path):
    data, _ = finished_run
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"the earlier weights")
    code = ("import torch; from utils.files import atomic_save; "
            f"atomic_save({{'x': torch.zeros(2**20)}}, {str(weights)!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            preexec_fn=limit_file_size, timeout=120)
    assert result.returncode == 1 and f"SaveError: cannot write {weights}" in result.stderr
    assert weights.read_bytes() == b"the earlier weights" and list(tmp_path.iterdir()) == [weights]
    command = [sys.executable, str(ROOT / "train.py"), "--dataset_path", str(data), "--train_ratio", "0.5",
               "--Epoch", "1", "--save_dir", str(tmp_path / "logs"), *TRAIN]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, preexec_fn=limit_file_size,
                            timeout=300)
    assert_one_line_error(result, "cannot write", "File too large")
    assert not list((tmp_path / "logs").glob(".tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["--Init_lr", "nan"], "Init_lr nan: settings must be finite numbers"),
    (["--Min_lr", "inf"], "Min_lr inf: settings must be finite numbers"),
    (["--optimizer_type", "adam", "--momentum", "1.5"], "momentum 1.5 must be in [0, 1)"),
    (["--weight_decay", "-1"], "weight_decay -1.0 must not be negative"),
    (["--distributed", "True"], "needs a launcher: torchrun --nproc_per_node=N"),
    (["--input_shape", "100000", "32"], "lower input_shape or batch_size"),
    (["--pairing", "batch", "--batch_size", "6", "--images_per_class", "4"], "batch_size at least twice it"),
    (["--class_rotations", "True"], "class_rotations needs pairing batch"),
    (["--loss", "bce_ranking"], "loss bce_ranking needs pairing batch"),
    (["--loss", "bce_ranking_cosine"], "loss bce_ranking_cosine needs pairing batch"),
    (["--class_blends", "0.5"], "class_blends needs pairing batch"),
    (["--pairing", "batch", "--class_blends", "1.5"], "class_blends 1.5 must be in [0, 1]"),
    (["--class_squash", "0.6"], "class_squash needs pairing batch"),
    (["--pairing", "batch", "--class_squash", "1"], "class_squash 1.0 must be in [0, 1)"),
    (["--class_slant", "30"], "class_slant needs pairing batch"),
    (["--pairing", "batch", "--class_slant", "60"], "class_slant 60.0 must be in [0, 60)"),
    (["--class_cut", "0.6"], "class_cut needs pairing batch"),
    (["--pairing", "batch", "--class_cut", "1"], "class_cut 1.0 must be in [0, 1)"),
    (["--best_by", "oneshot", "--split_by", "image"], "best_by oneshot needs split_by class"),
    (["--oneshot_way", "1"], "oneshot_way must be 0 (off) or at least 2"),
    (["--label_smoothing", "1"], "label_smoothing 1.0 must be in [0, 1)"),
    (["--feature_dropout", "-0.1"], "feature_dropout -0.1 must be in [0, 1)"),
])
def test_settings_that_cannot_work_stop_before_any_work(args, message, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stop:
        train.parse_train_config(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--input_shape", "64", "64"], "--input_shape [64, 64] differs from [32, 32]"),
    (["--backbone", "vgg16_bn"], "--model_path"),
    (["--backbone", "resnet18"], "--backbone resnet18 differs from vgg16"),
    (["--optimizer_type", "sgd"], "--optimizer_type sgd differs from adam"),
    (["--Init_Epoch", "1"], "--Init_Epoch does not apply with --resume"),
])
def test_resume_refuses_settings_that_change_the_run(finished_run, args, message, capsys):
    _, save_dir = finished_run
    with pytest.raises(SystemExit) as stop:
        train.parse_train_config(["--resume", str(save_dir / "last.ckpt"), "--Epoch", "3", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_wrong_file_at_the_imagenet_weights_path_is_named(finished_run, tmp_path):
    data, _ = finished_run
    (tmp_path / "model_data").mkdir()
    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp_path / "model_data" / "vgg16-397923af.pth")
    result = run("train.py", "--dataset_path", data, "--train_ratio", "0.5", "--save_dir", tmp_path / "logs", *TRAIN,
                 "--pretrained", "True", cwd=tmp_path)
    assert_one_line_error(result, "model_data/vgg16-397923af.pth: not torchvision's ImageNet vgg16 weights")


def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path):
    state = SiameseNetwork((32, 32)).state_dict()
    state["fully_connect1.bias"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"nan.pth: fully_connect1.bias holds NaN or infinite values"):
        Siamese(model_path=str(tmp_path / "nan.pth"), input_shape=[32, 32], cuda=False, verbose=False)
    result = run("predict.py", "a.png", "b.png", "--model_path", tmp_path / "nan.pth", "--input_shape", 32, 32)
    assert_one_line_error(result, "fully_connect1.bias holds NaN")


def test_glyphs_refuses_no_characters():
    command = [sys.executable, "-m", "tools.datasets", "glyphs", "--max_characters", "0"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "--max_characters 0", rc=2)


def test_lake_run_files_that_cannot_be_used_are_named(tmp_path):
    run_dir = tmp_path / "run01"
    for folder, names in (("training", ["class01.png"]), ("test", ["item01.png"])):
        (run_dir / folder).mkdir(parents=True)
        for name in names:
            (run_dir / folder / name).write_bytes(b"")
    (run_dir / "class_labels.txt").write_text("run01/test/item01.png run01/training/class01.png\n")
    with pytest.raises(DataError, match="1 training image.*at least 2"):
        parse_run(str(run_dir))
    (run_dir / "training" / "class02.png").write_bytes(b"")
    latin1 = "run01/test/item01.png run01/training/cl\xe4ss01.png\n".encode("latin-1")
    (run_dir / "class_labels.txt").write_bytes(latin1)
    with pytest.raises(DataError, match="class_labels.txt: not UTF-8 text"):
        parse_run(str(run_dir))


def test_symlink_loops_and_dangling_links_in_a_dataset_are_skipped(finished_run, tmp_path, capsys):
    data, _ = finished_run
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    character = next((copy / "images_background").glob("*/*"))
    (character / "dangling.png").symlink_to(character / "nowhere.png")
    (character / "loop.png").symlink_to(character / "loop.png")
    paths, _, _, skipped = list_images(str(copy))
    assert len(paths) == 16 and skipped == 2
    err = capsys.readouterr().err
    assert "skipped 2 broken symlink(s)" in err and "loop.png" in err and "dangling.png (dangling symlink)" in err

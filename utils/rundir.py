"""The folder a run writes into: created, locked while the run writes, never silently taken over; and the weight
files written into it, each with the settings file that says how to use it."""
import os

from utils.errors import ConfigError
from utils.files import atomic_save, process_alive, remove_stale_temporaries
from utils.weights import fold_calibration, write_settings

LOCK_NAME = ".lock"
RUN_FILES = ("last.ckpt", "best_epoch_weights.pth", "last_epoch_weights.pth")


def claim_save_dir(save_dir, resume="", overwrite=False):
    """Make `save_dir` ready for a run and lock it; returns the lock's path (remove it with `release`).

    Raises ConfigError, one line naming the folder, when it is a file or cannot be created, when
    another live run holds its lock, or when it holds an earlier run's files and this run neither
    resumes (`resume`, a checkpoint in it) nor may `overwrite` them. Removes stale temporaries.
    """
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ConfigError(f"save_dir {save_dir} is a file, not a folder; pick another --save_dir")
    try:
        os.makedirs(save_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create save_dir {save_dir}: {e.strerror}") from None
    lock = take_lock(save_dir)
    earlier = [name for name in RUN_FILES if os.path.isfile(os.path.join(save_dir, name))]
    resuming_here = bool(resume) and os.path.samefile(os.path.dirname(os.path.abspath(resume)), save_dir)
    if earlier and not resuming_here and not overwrite:
        release(lock)
        raise ConfigError(
            f"save_dir {save_dir} already holds a run ({', '.join(earlier)}): continue it with "
            f"--resume {os.path.join(save_dir, 'last.ckpt')}, pick another --save_dir, or pass --overwrite True"
        )
    remove_stale_temporaries(save_dir)
    return lock


def take_lock(save_dir):
    """Create `save_dir`/.lock holding this pid; a lock whose process is gone is taken over."""
    lock = os.path.join(save_dir, LOCK_NAME)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_pid(lock)
            if owner is not None and process_alive(owner):
                raise ConfigError(f"save_dir {save_dir} is in use by another run (pid {owner}); wait for it to end "
                                  f"or pick another --save_dir") from None
            os.remove(lock)  # left by a run that died
            continue
        except OSError as e:
            raise ConfigError(f"cannot write in save_dir {save_dir}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise ConfigError(f"save_dir {save_dir}: another run took its lock at the same moment; try again")


def read_pid(lock):
    """The pid written in a lock file, or None when it is unreadable or half-written."""
    try:
        with open(lock) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def release(lock):
    """Remove a lock taken by `claim_save_dir`, if it is still ours."""
    if lock and read_pid(lock) == os.getpid():
        os.remove(lock)


def save_epoch_weights(c, model, epoch, train, val, history, figures, trained_on, say, calibration=None):
    """Write the epoch's weight files as the original names them, each with its settings file (.json): every
    `save_period` epochs and the last `ep###-loss...-val_loss....pth`, `best_epoch_weights.pth` when this epoch is
    the best by `c.best_by` so far (`history` holds it), and `last_epoch_weights.pth`.

    The settings record the backbone, input size, preprocessing, the validation pairs' best threshold and the
    epoch's figures (`figures`), and what the weights were trained on (`trained_on`). `calibration` (scale, shift),
    when given, is folded into the saved head (`fold_calibration`).
    """
    weights = model.state_dict()
    if calibration is not None:
        weights = fold_calibration(weights, *calibration)
    settings = {"backbone": c.backbone, "input_shape": list(c.input_shape), "letterbox_image": False,
                "crop_to_ink": c.crop_to_ink,
                **figures, "trained_on": trained_on}
    names = []
    if (epoch + 1) % c.save_period == 0 or epoch + 1 == c.Epoch:
        names.append(f"ep{epoch + 1:03d}-loss{train['loss']:.3f}-val_loss{val['loss']:.3f}.pth")
    if history.is_best(c.best_by):
        what = "validation loss" if c.best_by == "val_loss" else "validation one-shot accuracy"
        say(f"Best {what} so far: saving {os.path.join(c.save_dir, 'best_epoch_weights.pth')}")
        names.append("best_epoch_weights.pth")
    for name in names + ["last_epoch_weights.pth"]:
        path = os.path.join(c.save_dir, name)
        atomic_save(weights, path)
        write_settings(path, settings)

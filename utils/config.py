"""A training run's settings: train.py's config block, presets and the command line, checked and decided once.

`parse_train_config` is the one place where settings are read, checked (`config_problem`, `resume_problem`) and
where every "auto" is decided (`resolve`); the rest of the run reads the `TrainConfig` it returns.
"""
import argparse
import importlib.util
import math
import os

import torch

from nets.siamese import BACKBONES, check_input_shape, flat_features
from utils import distributed as ddp
from utils.augment import AUGMENTATIONS
from utils.checkpoint import load_checkpoint
from utils.configurator import parse_auto_float, parse_config
from utils.dataloader import NEGATIVES, PAIRINGS, SPLITS
from utils.losses import LOSSES
from utils.precision import native_bf16
from utils.schedule import OPTIMIZERS, SCHEDULES
from utils.weights import IMAGENET_WEIGHTS_URLS

BEST_BY = ("val_loss", "oneshot")
CHOICES = {"optimizer_type": OPTIMIZERS + ("auto",), "lr_decay_type": SCHEDULES, "split_by": SPLITS,
           "augmentation": AUGMENTATIONS + ("auto",), "negatives": NEGATIVES, "backbone": BACKBONES,
           "pairing": PAIRINGS, "best_by": BEST_BY, "loss": LOSSES}
TYPES = {"Min_lr": parse_auto_float, "weight_decay": parse_auto_float}  # numbers whose default is "auto"
PER_RUN = ("resume", "stop_after", "model_path", "save_dir", "overwrite")  # not taken from a resumed checkpoint
HARDWARE = ("bf16", "channels_last")  # "auto" decided anew on the machine that runs, a resumed run too
KEPT_ON_RESUME = ("input_shape", "backbone", "optimizer_type")  # what makes the network and optimiser state
# floats saved for backward per input pixel in a training step: the most saved_tensors_hooks saw at sides 32, 96, 105
SAVED_PER_PIXEL = {"vgg16": 430, "vgg16_bn": 710, "resnet18": 220, "resnet18_layer3": 210, "resnet50": 860,
                   "mobilenet_v3_large": 430, "conv4": 400, "conv4_96": 630,
                   "conv4_128": 870}  # the conv4s: 400 scaled by what the hooks saw against conv4's


class TrainConfig(argparse.Namespace):
    """The settings of one run: every config-block name in `names` as an attribute with "auto" decided, plus
    `device` (this process's), `amp_dtype` (None: float32) and `auto` (the names that were "auto")."""

    def saved(self):
        """{name: value} as a checkpoint keeps them: decided, but for the hardware's "auto" (`HARDWARE`)."""
        return {name: "auto" if name in HARDWARE and name in self.auto else getattr(self, name) for name in self.names}

    def table(self):
        """{name: text} for the settings table, a decided "auto" shown as `value (auto)`."""
        return {name: f"{getattr(self, name)} (auto)" if name in self.auto else getattr(self, name)
                for name in self.names}


def parse_train_config(defaults, argv, helps=None, extra=None):
    """`defaults` (the config block) overridden by presets and `argv`, checked and decided -> (TrainConfig,
    the loaded checkpoint of `--resume` or None, the extra flags' namespace).

    With `--resume`, the checkpoint's config replaces the defaults (but `PER_RUN`), so `--resume logs/last.ckpt`
    alone continues the same run, writing beside the checkpoint unless --save_dir says otherwise. Settings that
    cannot work end the program with argparse's one-line message (exit code 2); a checkpoint that cannot be loaded
    raises WeightsError.
    """
    defaults, checkpoint = dict(defaults), None
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--resume", default=defaults["resume"])
    resume = first.parse_known_args(argv)[0].resume
    if resume:
        checkpoint = load_checkpoint(resume)
        defaults.update((k, v) for k, v in checkpoint.get("config", {}).items() if k in defaults and k not in PER_RUN)
        defaults["save_dir"] = os.path.dirname(resume) or "."
    parsed, given = parse_config(defaults, argv, description="Train the Siamese network.", choices=CHOICES,
                                 extra=extra, helps=helps, types=TYPES, epilog="Presets: config/*.py")
    extras = argparse.Namespace(**{name: getattr(parsed, name) for name in (extra or {})})
    config = TrainConfig(**{name: getattr(parsed, name) for name in defaults})
    config.names, config.presets = tuple(defaults), parsed.presets
    problem = config_problem(config) or (resume_problem(config, checkpoint, given) if checkpoint else None)
    if problem:
        first.prog = "train.py"
        first.error(problem)
    resolve(config, given, checkpoint)
    problem = memory_problem(config)
    if problem:
        first.error(problem)
    return config, checkpoint, extras


def resolve(c, given, checkpoint=None):
    """Decide every "auto" of config `c` once, recording which in `c.auto`, and set `c.device` and `c.amp_dtype`.

    From ImageNet or `model_path` weights, optimizer_type and augmentation are the original's sgd and autoaugment;
    from scratch adam and none. weight_decay follows the optimiser (Adam's L2 penalty is not decoupled, so 0 with
    adam; 1e-2, torch's default, with adamw); Min_lr is Init_lr * 0.01; bf16 is on where the device does it
    natively, channels_last on a CPU and when a 16-bit format is on.
    """
    from_weights = c.pretrained or c.model_path
    decided = {
        "optimizer_type": lambda: "sgd" if from_weights else "adam",
        "augmentation": lambda: "autoaugment" if from_weights else "none",
        "weight_decay": lambda: {"sgd": 5e-4, "adamw": 1e-2}.get(c.optimizer_type, 0.0),
        "Min_lr": lambda: c.Init_lr * 0.01,
    }
    c.auto = {}
    for name, decide in decided.items():  # in order: weight_decay follows the decided optimizer_type
        if getattr(c, name) == "auto":
            c.auto[name] = True
            setattr(c, name, decide())
    use_cuda = c.Cuda and torch.cuda.is_available()
    c.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if c.bf16 == "auto":
        c.auto["bf16"], c.bf16 = True, native_bf16(c.device)
    c.amp_dtype = torch.float16 if (c.fp16 and use_cuda) else torch.bfloat16 if c.bf16 else None
    if c.channels_last == "auto":
        c.auto["channels_last"], c.channels_last = True, c.amp_dtype is not None or c.device.type == "cpu"
    return c


def config_problem(c):
    """The first problem with config `c` as one line, or None."""
    try:
        check_input_shape(c.input_shape, c.backbone)
    except ValueError as e:
        return str(e)
    if c.pretrained and not c.model_path and not c.resume and c.backbone not in IMAGENET_WEIGHTS_URLS:
        return f"backbone {c.backbone} has no ImageNet weights: set pretrained = False to train it from scratch"
    numbers = {name: getattr(c, name) for name in ("Init_lr", "Min_lr", "momentum", "weight_decay", "train_ratio")}
    bad = [f"{name} {value}" for name, value in numbers.items() if value != "auto" and not math.isfinite(value)]
    if bad:
        return f"{', '.join(bad)}: settings must be finite numbers"
    return (count_problem(c) or rate_problem(c) or pairing_problem(c)
            or ("tensorboard = True needs the tensorboard package: pip install -r requirements-extras.txt"
                if c.tensorboard and importlib.util.find_spec("tensorboard") is None else None)
            or ("distributed = True needs a launcher: torchrun --nproc_per_node=N train.py ..."
                if c.distributed and not ddp.launched_by_torchrun() else None))


def count_problem(c):
    """Epochs, batch size, workers and periods that cannot work, in one line; or None."""
    if c.Epoch < 1 or c.Init_Epoch < 0:
        return "Epoch must be at least 1 and Init_Epoch at least 0"
    if c.Init_Epoch >= c.Epoch:
        return f"Init_Epoch {c.Init_Epoch} must be below Epoch {c.Epoch}"
    if c.batch_size < 1:
        return "batch_size must be at least 1"
    if not 0 < c.train_ratio < 1:
        return "train_ratio must be between 0 and 1"
    if c.num_workers < 0 or c.save_period < 1 or c.log_interval < 1:
        return "num_workers must be >= 0, save_period and log_interval >= 1"
    if c.stop_after < 0:
        return "stop_after must be 0 (no stop) or a number of epochs"
    if c.checkpoint_minutes < 0 or not math.isfinite(c.checkpoint_minutes):
        return f"checkpoint_minutes {c.checkpoint_minutes} must be 0 (only at epoch ends) or a number of minutes"
    return None


def rate_problem(c):
    """Learning-rate and optimiser settings that cannot work, in one line; or None."""
    if not 0 <= c.feature_dropout < 1:
        return f"feature_dropout {c.feature_dropout} must be in [0, 1) (0: off)"
    if not 0 <= c.label_smoothing < 1:
        return f"label_smoothing {c.label_smoothing} must be in [0, 1) (0: hard targets)"
    if not 0 <= c.class_blends <= 1:
        return f"class_blends {c.class_blends} must be in [0, 1] (the share of a batch's classes blended; 0: off)"
    if not 0 <= c.class_squash < 1:
        return f"class_squash {c.class_squash} must be in [0, 1) (the height a squashed class keeps; 0: off)"
    if not 0 <= c.class_slant < 60:
        return f"class_slant {c.class_slant} must be in [0, 60) (degrees of a slanted class's shear; 0: off)"
    if not 0 <= c.class_cut < 1:
        return f"class_cut {c.class_cut} must be in [0, 1) (the share of its ink's height a cut class keeps; 0: off)"
    if not 0 <= c.ema_decay < 1:
        return f"ema_decay {c.ema_decay} must be in [0, 1) (0: no average)"
    if c.Init_lr <= 0 or (c.Min_lr != "auto" and c.Min_lr < 0):
        return "Init_lr must be positive and Min_lr not negative"
    if not 0 <= c.momentum < 1:
        return f"momentum {c.momentum} must be in [0, 1) (SGD momentum, or Adam's first beta)"
    if c.weight_decay != "auto" and c.weight_decay < 0:
        return f"weight_decay {c.weight_decay} must not be negative"
    return None


def pairing_problem(c):
    """Pairing, loss and one-shot settings that do not go together, in one line; or None."""
    if c.pairing == "batch" and not 2 <= c.images_per_class <= c.batch_size // 2:
        return (f"pairing batch needs images_per_class of at least 2 and batch_size at least twice it "
                f"(images_per_class {c.images_per_class}, batch_size {c.batch_size})")
    for name in ("class_rotations", "class_mirrors", "class_blends", "class_squash", "class_slant", "class_cut"):
        if getattr(c, name) and c.pairing != "batch":
            return f"{name} needs pairing batch (the new classes it makes are drawn as whole classes)"
    if c.loss != "bce" and c.pairing != "batch":
        return f"loss {c.loss} needs pairing batch (it ranks each image's classmates above a batch's other classes)"
    if c.oneshot_way < 0 or c.oneshot_way == 1:
        return "oneshot_way must be 0 (off) or at least 2"
    if c.best_by == "oneshot" and (c.split_by != "class" or not c.oneshot_way):
        return "best_by oneshot needs split_by class and oneshot_way of at least 2 (one-shot on unseen classes)"
    return None


def memory_problem(c):
    """A one-line error when one training step of config `c` surely cannot fit in this machine's memory, or None."""
    height, width = c.input_shape
    images = c.batch_size * (1 if c.pairing == "batch" else 4)  # an item is 4 images; a class batch, batch_size
    # float32, the gradients about as large again; the head's first layer, its gradient and momentum
    needed = SAVED_PER_PIXEL[c.backbone] * height * width * 4 * 2 * images \
        + flat_features(c.input_shape, c.backbone) * 512 * 4 * 3
    use_cuda = c.device.type == "cuda"
    total = torch.cuda.mem_get_info()[1] if use_cuda else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > 2 * total:  # the estimate errs high: refuse only what surely cannot fit
        return (f"input_shape {c.input_shape} with batch_size {c.batch_size} needs about {needed / 2**30:.0f} GiB "
                f"for one training step, more than the {total / 2**30:.0f} GiB of this "
                f"{'GPU' if use_cuda else 'machine'}; lower input_shape or batch_size")
    return None


def resume_problem(c, checkpoint, given):
    """A one-line error when config `c` cannot continue `checkpoint`; `given` holds the names set by hand."""
    if checkpoint["epoch"] >= c.Epoch:
        return (f"{c.resume} has finished {checkpoint['epoch']} of Epoch {c.Epoch} epochs: "
                f"pass a larger --Epoch to train further")
    if "Init_Epoch" in given:
        return f"--Init_Epoch does not apply with --resume: {c.resume} continues at epoch {checkpoint['epoch'] + 1}"
    saved = checkpoint.get("config", {})
    for name in KEPT_ON_RESUME:
        if name in saved and saved[name] != getattr(c, name):
            return (f"--{name} {getattr(c, name)} differs from {saved[name]} in {c.resume}: a resumed run keeps its "
                    f"network and optimiser; drop --{name}, or start a new run from its weights with "
                    f"--model_path {c.resume}")
    return None

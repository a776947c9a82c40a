"""Train the Siamese network on Omniglot or on your own image folders.

Edit the config block below, or override any name on the command line with the same spelling:
    python train.py --Epoch 5 --batch_size 8 --input_shape 64 64 --pretrained False
    python train.py --demo    # offline: builds the embedded glyph set, trains on it, reports one-shot accuracy
Several GPUs (or CPU processes with gloo): torchrun --nproc_per_node=N train.py ...
"""
import argparse
import datetime
import importlib.util
import math
import os
import random
import signal
import sys
import time
from collections import Counter

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from nets.siamese import BACKBONES, SiameseNetwork, check_input_shape, flat_features
from utils import distributed as ddp
from utils.augment import AUGMENTATIONS
from utils.callbacks import LossHistory, TensorBoardLog
from utils.checkpoint import (IMAGENET_WEIGHTS_URLS, atomic_save, load_checkpoint, load_imagenet_weights,
                              load_matching, load_weights, save_checkpoint, set_rng_state, unwrap)
from utils.config import config_comments, parse_config, show_config
from utils.dataloader import (NEGATIVES, PAIRINGS, SPLITS, ClassBatches, SiameseDataset, class_groups, list_images,
                              split_indices)
from utils.distributed import native_bf16
from utils.errors import ConfigError, DataError, ImageError, NonFiniteLoss, SaveError, WeightsError
from utils.loop import run_epoch
from utils.oneshot import evaluate_split
from utils.rundir import claim_save_dir, release
from utils.schedule import MIN_STEPS, OPTIMIZERS, SCHEDULES, lr_at_epoch, make_optimizer, scaled_lr, set_lr

# config: edit here, or pass --name value on the command line
Cuda = True  # use a GPU when there is one; falls back to the CPU
distributed = False  # DDP; torchrun sets it up by itself, this only insists on a launcher
sync_bn = False  # convert batch norms to SyncBatchNorm under DDP (every backbone but vgg16 has them)
fp16 = False  # CUDA mixed precision: float16 autocast with a grad scaler
bf16 = "auto"  # bfloat16 autocast (no scaler needed); "auto": where the GPU or CPU does bf16 natively
channels_last = "auto"  # NHWC memory format, faster with bf16/fp16; "auto": when bf16 or fp16 is on
compile = False  # torch.compile the model
dataset_path = "dataset"  # folder holding images_background/
input_shape = [105, 105]  # [height, width]; multiples of 32 waste nothing
train_own_data = False  # False: images_background/<alphabet>/<character>/; True: images_background/<class>/
split_by = "image"  # "image": the original 90/10 split of images; "class": validation classes unseen in training
train_ratio = 0.9  # share of images (or classes) used for training; the rest validates
augmentation = "auto"  # "autoaugment" (the original), "affine" (drawings), "jitter", "none"; "auto": see README
negatives = "any"  # negative pairs: "any" other class (the original) or "same_group" (same alphabet: harder)
pairing = "items"  # "items": each item a positive and a negative pair (the original); "batch": see images_per_class
images_per_class = 4  # pairing "batch": a step is batch_size images, this many per class; every pair is scored
loss = "bce"  # "bce": the head's pair probabilities (the original); "bce_ranking": plus a one-shot softmax (README)
class_rotations = False  # pairing "batch": each class turned 90/180/270 degrees is 3 more classes (for drawings)
backbone = "vgg16"  # vgg16 (the original's), vgg16_bn, resnet18 (fastest from scratch), resnet50, mobilenet_v3_large
pretrained = True  # ImageNet weights from model_data/ (vgg16-397923af.pth; downloaded there if missing)
model_path = ""  # start from these weights: keys whose name and shape match are loaded
resume = ""  # a last.ckpt to continue exactly where it stopped; its config is the default, the command line overrides
stop_after = 0  # stop this run after this many epochs (0: run to Epoch); the schedule still spans Epoch
Init_Epoch = 0  # first epoch to run (0-based)
Epoch = 100  # total number of epochs
batch_size = 32  # items per step over all processes; each item is 2 pairs
Init_lr = 1e-2  # learning rate at the nominal batch of 64; scaled to batch_size and clamped
Min_lr = Init_lr * 0.01  # final learning rate; follows Init_lr unless given
optimizer_type = "auto"  # "sgd" or "adam"; "auto": sgd from ImageNet or model_path weights (the original), else adam
momentum = 0.9  # SGD momentum, or Adam's first beta
weight_decay = 5e-4  # L2 penalty of the optimiser; follows it unless given: 5e-4 with sgd, 0 with adam
lr_decay_type = "cos"  # "cos" or "step"
oneshot_way = 20  # split_by "class": N-way one-shot accuracy on the unseen validation classes each epoch (0: off)
best_by = "val_loss"  # what picks best_epoch_weights.pth: "val_loss" (the original) or "oneshot" (split_by "class")
tensorboard = False  # also write TensorBoard events to save_dir (pip install -r requirements-extras.txt)
save_period = 10  # write ep###-loss-val_loss.pth every this many epochs
save_dir = "logs"  # where weights, checkpoints and loss curves go (a resumed run: the checkpoint's folder)
overwrite = False  # let a new run replace the files of an earlier run in save_dir
num_workers = 4  # DataLoader worker processes (0: load in the main process)
seed = 0  # random seed; each process adds its rank
deterministic = False  # deterministic algorithms (for exact resume checks); slower
log_interval = 10  # read the loss on the host (progress bar, NaN check) every this many steps
CONFIG = {k: v for k, v in dict(globals()).items()
          if not k.startswith("_") and isinstance(v, (bool, int, float, str, list))}

BEST_BY = ("val_loss", "oneshot")
LOSSES = ("bce", "bce_ranking")
CHOICES = {"optimizer_type": OPTIMIZERS + ("auto",), "lr_decay_type": SCHEDULES, "split_by": SPLITS,
           "augmentation": AUGMENTATIONS + ("auto",), "negatives": NEGATIVES, "backbone": BACKBONES,
           "pairing": PAIRINGS, "best_by": BEST_BY, "loss": LOSSES}
PER_RUN = ("resume", "stop_after", "model_path", "save_dir", "overwrite")  # not taken from a resumed checkpoint


def config_error(c):
    """The first problem with config `c` as one line, or None."""
    try:
        check_input_shape(c.input_shape, c.backbone)
    except ValueError as e:
        return str(e)
    numbers = {name: getattr(c, name) for name in ("Init_lr", "Min_lr", "momentum", "weight_decay", "train_ratio")}
    bad = [f"{name} {value}" for name, value in numbers.items() if not math.isfinite(value)]
    if bad:
        return f"{', '.join(bad)}: settings must be finite numbers"
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
    if c.Init_lr <= 0 or c.Min_lr < 0:
        return "Init_lr must be positive and Min_lr not negative"
    if not 0 <= c.momentum < 1:
        return f"momentum {c.momentum} must be in [0, 1) (SGD momentum, or Adam's first beta)"
    if c.weight_decay < 0:
        return f"weight_decay {c.weight_decay} must not be negative"
    if c.stop_after < 0:
        return "stop_after must be 0 (no stop) or a number of epochs"
    if c.pairing == "batch" and not 2 <= c.images_per_class <= c.batch_size // 2:
        return (f"pairing batch needs images_per_class of at least 2 and batch_size at least twice it "
                f"(images_per_class {c.images_per_class}, batch_size {c.batch_size})")
    if c.class_rotations and c.pairing != "batch":
        return "class_rotations needs pairing batch (turned classes are drawn as whole classes)"
    if c.loss == "bce_ranking" and c.pairing != "batch":
        return "loss bce_ranking needs pairing batch (it ranks each image's classmates above a batch's other classes)"
    if c.oneshot_way < 0 or c.oneshot_way == 1:
        return "oneshot_way must be 0 (off) or at least 2"
    if c.best_by == "oneshot" and (c.split_by != "class" or not c.oneshot_way):
        return "best_by oneshot needs split_by class and oneshot_way of at least 2 (one-shot on unseen classes)"
    if c.tensorboard and importlib.util.find_spec("tensorboard") is None:
        return "tensorboard = True needs the tensorboard package: pip install -r requirements-extras.txt"
    if c.distributed and not ddp.launched_by_torchrun():
        return "distributed = True needs a launcher: torchrun --nproc_per_node=N train.py ..."
    return memory_error(c)


# floats saved for backward per input pixel in a training step: the most saved_tensors_hooks saw at sides 32, 96, 105
SAVED_PER_PIXEL = {"vgg16": 430, "vgg16_bn": 710, "resnet18": 220, "resnet50": 860, "mobilenet_v3_large": 430}


def memory_error(c):
    """A one-line error when one training step of config `c` surely cannot fit in this machine's memory."""
    height, width = c.input_shape
    images = c.batch_size * (1 if c.pairing == "batch" else 4)  # an item is 4 images; a class batch, batch_size
    # float32, the gradients about as large again; the head's first layer, its gradient and momentum
    needed = SAVED_PER_PIXEL[c.backbone] * height * width * 4 * 2 * images \
        + flat_features(c.input_shape, c.backbone) * 512 * 4 * 3
    use_cuda = c.Cuda and torch.cuda.is_available()
    total = torch.cuda.mem_get_info()[1] if use_cuda else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > 2 * total:  # errs high (VGG16: 3.0 GiB measured where it says 4.5): refuse only the hopeless
        return (f"input_shape {c.input_shape} with batch_size {c.batch_size} needs about {needed / 2**30:.0f} GiB "
                f"for one training step, more than the {total / 2**30:.0f} GiB of this "
                f"{'GPU' if use_cuda else 'machine'}; lower input_shape or batch_size")
    return None


def resume_error(c, checkpoint, given):
    """A one-line error when config `c` cannot continue `checkpoint`; `given` holds the names on the command line."""
    if checkpoint["epoch"] >= c.Epoch:
        return (f"{c.resume} has finished {checkpoint['epoch']} of Epoch {c.Epoch} epochs: "
                f"pass a larger --Epoch to train further")
    if "Init_Epoch" in given:
        return f"--Init_Epoch does not apply with --resume: {c.resume} continues at epoch {checkpoint['epoch'] + 1}"
    saved = checkpoint.get("config", {})
    for name in ("input_shape", "backbone", "optimizer_type"):
        if name in saved and saved[name] != getattr(c, name):
            return (f"--{name} {getattr(c, name)} differs from {saved[name]} in {c.resume}: a resumed run keeps its "
                    f"network and optimiser; drop --{name}, or start a new run from its weights with "
                    f"--model_path {c.resume}")
    return None


def parse_train_config(argv=None):
    """CONFIG overridden by the command line -> (config namespace, checkpoint dict or None).

    Min_lr follows Init_lr unless given itself; optimizer_type and augmentation "auto" become the original's
    sgd and autoaugment from weights, adam and none from scratch; weight_decay follows adam (0) unless given.
    With `--resume`, the checkpoint is loaded here, once, and its config replaces CONFIG as the defaults
    (except PER_RUN), so `python train.py --resume logs/last.ckpt` alone continues the same run, writing
    beside the checkpoint unless --save_dir says otherwise; raises WeightsError when it cannot be loaded.
    """
    argv = sys.argv[1:] if argv is None else argv
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    defaults, checkpoint = dict(CONFIG), None
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--resume", default=CONFIG["resume"])
    resume = first.parse_known_args(argv)[0].resume
    if resume:
        checkpoint = load_checkpoint(resume)
        defaults.update((k, v) for k, v in checkpoint.get("config", {}).items() if k in CONFIG and k not in PER_RUN)
        defaults["save_dir"] = os.path.dirname(resume) or "."
    demo = {"demo": dict(action="store_true", help="train the embedded glyph demo offline: builds dataset/glyphs, "
                         "trains on it with settings for a CPU, reports one-shot accuracy "
                         "(other names still override)")}
    validate = (lambda c: config_error(c) or (resume_error(c, checkpoint, given) if checkpoint else None))
    config = parse_config(defaults, argv, description="Train the Siamese network.", choices=CHOICES,
                          validate=validate, helps=config_comments(__file__), extra=demo)
    del config.demo
    if "Min_lr" not in given and defaults["Min_lr"] == defaults["Init_lr"] * 0.01:
        config.Min_lr = config.Init_lr * 0.01
    from_weights = config.pretrained or config.model_path
    if config.optimizer_type == "auto":  # from scratch, SGD and AutoAugment stay at ln 2: docs/results.md
        config.optimizer_type = "sgd" if from_weights else "adam"
    if config.augmentation == "auto":
        config.augmentation = "autoaugment" if from_weights else "none"
    if "weight_decay" not in given and not checkpoint and config.optimizer_type == "adam":
        config.weight_decay = 0.0  # Adam's L2 penalty is not decoupled: the original's 5e-4 holds it back
    return config, checkpoint


def make_loader(dataset, batch_size, num_workers, shuffle, use_cuda):
    """A DataLoader that splits `dataset` over ranks under DDP; every batch is full. `batch_size` None:
    each item is a batch already (`ClassBatches`)."""
    sampler = DistributedSampler(dataset, shuffle=shuffle) if ddp.is_distributed() else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, pin_memory=use_cuda, drop_last=batch_size is not None,
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
    )


def load_datasets(c, say, is_main, world_size=1):
    """List, split and wrap the data of config `c` (a `ClassBatches` per rank for pairing "batch");
    returns (train_set, val_set). Raises DataError when unusable."""
    root = os.path.join(c.dataset_path, "images_background")
    if not os.path.isdir(root):
        raise DataError(
            f"no dataset at {root}: make one with 'python -m tools.datasets glyphs' (embedded, offline) or "
            f"'python -m tools.datasets omniglot' (downloads Omniglot), or put your own class folders there "
            f"with --train_own_data True"
        )
    paths, labels, class_names, skipped = list_images(c.dataset_path, c.train_own_data, warn=is_main)
    say(f"{len(paths)} images in {len(class_names)} classes ({skipped} files skipped)")
    few = sum(1 for count in Counter(labels).values() if count < 3)
    if few:
        say(f"Note: {few} of {len(class_names)} classes have fewer than 3 images: they only appear in negative pairs")
    train_idx, val_idx = split_indices(labels, c.split_by, c.train_ratio, seed=0)
    groups = class_groups(class_names)
    train_paths, train_labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
    if c.pairing == "batch":
        train_set = ClassBatches(train_paths, train_labels, c.input_shape, c.batch_size // world_size,
                                 c.images_per_class, c.augmentation, groups, c.negatives,
                                 class_rotations=c.class_rotations)
    else:
        train_set = SiameseDataset(train_paths, train_labels, c.input_shape, train=True, augmentation=c.augmentation,
                                   name="training", groups=groups, negatives=c.negatives)
    val_set = SiameseDataset([paths[i] for i in val_idx], [labels[i] for i in val_idx], c.input_shape,
                             train=False, name="validation", groups=groups, negatives=c.negatives)
    if len(train_idx) < c.batch_size or len(val_idx) < c.batch_size:
        raise DataError(
            f"dataset too small: {len(train_idx)} training and {len(val_idx)} validation images for batch_size "
            f"{c.batch_size}; lower batch_size or add images"
        )
    return train_set, val_set


def choose_precision(c, device, use_cuda):
    """(autocast dtype or None, channels_last) for config `c` on `device`, deciding the "auto" settings."""
    bf16 = native_bf16(device) if c.bf16 == "auto" else c.bf16
    amp_dtype = torch.float16 if (c.fp16 and use_cuda) else torch.bfloat16 if bf16 else None
    channels_last = amp_dtype is not None if c.channels_last == "auto" else c.channels_last
    return amp_dtype, channels_last


def build_model(c, device, channels_last, say):
    """The Siamese network of config `c` on `device`, from ImageNet or `model_path` weights as asked."""
    model = SiameseNetwork(c.input_shape, c.backbone)
    if c.pretrained and not c.model_path and not c.resume:
        url = IMAGENET_WEIGHTS_URLS[c.backbone]
        try:
            model.encoder.load_imagenet(load_imagenet_weights(url=url))
        except RuntimeError as e:  # load_state_dict's missing keys or size mismatch
            reason = str(e).strip().splitlines()[0]
            raise WeightsError(f"model_data/{os.path.basename(url)}: not torchvision's ImageNet {c.backbone} "
                               f"weights ({reason}); delete it to download it again") from None
    if c.model_path and not c.resume:
        loaded, failed = load_matching(model, load_weights(c.model_path))
        say(f"Loaded {len(loaded)} keys from {c.model_path}; "
            f"not loaded ({len(failed)}): {', '.join(failed) or 'none'}")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def save_weights(c, model, epoch, train, val, history, say):
    """Write the epoch's weight files, named as the original names them; the best by `c.best_by` so far
    (from `history`, which holds this epoch) is best_epoch_weights.pth."""
    weights = unwrap(model).state_dict()
    if (epoch + 1) % c.save_period == 0 or epoch + 1 == c.Epoch:
        name = f"ep{epoch + 1:03d}-loss{train['loss']:.3f}-val_loss{val['loss']:.3f}.pth"
        atomic_save(weights, os.path.join(c.save_dir, name))
    if history.is_best(c.best_by):
        what = "validation loss" if c.best_by == "val_loss" else "validation one-shot accuracy"
        say(f"Best {what} so far: saving {os.path.join(c.save_dir, 'best_epoch_weights.pth')}")
        atomic_save(weights, os.path.join(c.save_dir, "best_epoch_weights.pth"))
    atomic_save(weights, os.path.join(c.save_dir, "last_epoch_weights.pth"))


def main(c, checkpoint=None):
    """Train with config `c` (from `parse_train_config`); `checkpoint` is the loaded `c.resume`, if any.

    Rank 0 holds `save_dir`'s lock for the whole run, so a second run on the same folder stops at once.
    """
    use_cuda = c.Cuda and torch.cuda.is_available()
    rank, local_rank, world_size, device = ddp.setup(c.distributed, use_cuda)
    lock = None
    try:
        lock = claim_save_dir(c.save_dir, c.resume, c.overwrite) if rank == 0 else None
        train(c, checkpoint, rank, local_rank, world_size, device, use_cuda)
    finally:
        release(lock)
        ddp.cleanup()


def train(c, checkpoint, rank, local_rank, world_size, device, use_cuda):
    """The training run of `main` on this process's `device`."""
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)
    if c.Cuda and not use_cuda:
        say("No CUDA device found: training on the CPU.")
    torch.manual_seed(c.seed + rank)  # DataLoader workers derive their seeds from this: ranks draw different pairs
    random.seed(c.seed + rank)
    if c.deterministic:
        torch.use_deterministic_algorithms(True)
    if use_cuda:
        torch.backends.cudnn.benchmark = not c.deterministic
    if c.batch_size % world_size:
        raise SystemExit(f"batch_size {c.batch_size} must divide evenly over {world_size} processes")

    train_set, val_set = load_datasets(c, say, is_main, world_size)
    amp_dtype, channels_last = choose_precision(c, device, use_cuda)
    if is_main:
        chosen = {"bf16": amp_dtype == torch.bfloat16, "channels_last": channels_last}
        shown = {k: f"{chosen[k]} ({v})" if v == "auto" else v for k, v in vars(c).items()}
        show_config(**shown, num_train=len(train_set.paths), num_val=len(val_set.paths),
                    device=f"{device} x {world_size}")
    per_rank_batch = c.batch_size // world_size
    train_loader = make_loader(train_set, None if c.pairing == "batch" else per_rank_batch, c.num_workers, True,
                               use_cuda)
    val_loader = make_loader(val_set, per_rank_batch, c.num_workers, False, use_cuda)
    epoch_step = len(train_loader)

    lr, min_lr = scaled_lr(c.batch_size, c.Init_lr, c.Min_lr, c.optimizer_type)
    total_steps = epoch_step * c.Epoch
    wanted = MIN_STEPS[c.optimizer_type]
    if total_steps < wanted:
        say(f"Warning: {total_steps} training steps is below the {wanted} recommended for {c.optimizer_type}; "
            f"about {wanted // epoch_step + 1} epochs would reach it.")

    model = build_model(c, device, channels_last, say)
    optimizer = make_optimizer(model.parameters(), c.optimizer_type, lr, c.momentum, c.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch = c.Init_Epoch
    log_dir = os.path.join(c.save_dir, "loss_" + datetime.datetime.now().strftime("%Y_%m_%d_%H_%M_%S"))
    losses, val_losses, oneshots = [], [], []
    if checkpoint:
        unwrap(model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"]
        losses, val_losses = checkpoint["losses"], checkpoint["val_losses"]
        oneshots = checkpoint.get("oneshots", [None] * len(losses))
        log_dir = os.path.join(c.save_dir, os.path.basename(checkpoint["log_dir"]))  # the history moves with the run
        if world_size == 1:  # the random states are rank 0's; other ranks keep their own seeds
            set_rng_state(checkpoint["rng"])
        say(f"Resuming from {c.resume} at epoch {start_epoch + 1}/{c.Epoch}")
    history = LossHistory(log_dir, losses, val_losses, oneshots) if is_main else None
    board = TensorBoardLog(log_dir, start_epoch + 1) if is_main and c.tensorboard else None

    if world_size > 1:
        if c.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    train_model = torch.compile(model) if c.compile else model

    checkpoint_path = os.path.join(c.save_dir, "last.ckpt")
    resume_command = f"python train.py --resume {checkpoint_path}"
    end_epoch = min(c.Epoch, start_epoch + c.stop_after) if c.stop_after else c.Epoch
    next_epoch = start_epoch  # the first epoch not yet finished: where a resumed run starts
    try:
        for epoch in range(start_epoch, end_epoch):
            epoch_lr = lr_at_epoch(epoch, lr, min_lr, c.Epoch, c.lr_decay_type)
            set_lr(optimizer, epoch_lr)
            for loader in (train_loader, val_loader):
                if isinstance(loader.sampler, DistributedSampler):
                    loader.sampler.set_epoch(epoch)
            tag = f"Epoch {epoch + 1}/{c.Epoch}"
            options = dict(amp_dtype=amp_dtype, channels_last=channels_last, show=is_main,
                           log_interval=c.log_interval)
            check_at = epoch_step // 2 if epoch == 0 else None  # "not learning" warning halfway through epoch 1
            train = run_epoch(train_model, train_loader, device, optimizer, scaler, desc=f"{tag} train", lr=epoch_lr,
                              check_learning_at=check_at, ranking=c.loss == "bce_ranking", **options)
            val = run_epoch(train_model, val_loader, device, desc=f"{tag} val", **options)
            if not is_main:
                continue
            oneshot, way = None, 0
            if c.split_by == "class" and c.oneshot_way:  # unseen classes: the accuracy users care about
                oneshot, way = evaluate_split(unwrap(model), val_set.paths, val_set.labels, c.input_shape, device,
                                              c.oneshot_way)
            say(f"{tag}: loss {train['loss']:.3f} acc {train['acc']:.3f} | "
                f"val_loss {val['loss']:.3f} val_acc {val['acc']:.3f}"
                + (f" | val {way}-way one-shot {100 * oneshot:.1f}%" if oneshot is not None else ""))
            history.append(train["loss"], val["loss"], oneshot)
            if board:
                board.write(epoch + 1, {"loss/train": train["loss"], "loss/val": val["loss"], "lr": epoch_lr,
                                        "accuracy/train": train["acc"], "accuracy/val": val["acc"],
                                        "oneshot/val": oneshot})
            save_weights(c, model, epoch, train, val, history, say)
            next_epoch = epoch + 1
            save_checkpoint(checkpoint_path, model, optimizer, scaler, next_epoch, history, log_dir, c)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the save below
        if is_main:  # the weights as they are now; the resumed run repeats the unfinished epoch from them
            save_checkpoint(checkpoint_path, model, optimizer, scaler, next_epoch, history, log_dir, c)
            print(f"\nInterrupted in epoch {next_epoch + 1}: saved {checkpoint_path}; continue with: {resume_command}",
                  flush=True)
        raise SystemExit(130)
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{e}; stopped without saving epoch {next_epoch + 1}'s weights") from None
    finally:
        if board:
            board.close()
    if end_epoch < c.Epoch:
        say(f"Stopped after epoch {end_epoch}/{c.Epoch} (stop_after {c.stop_after}); "
            f"continue with: {resume_command}")
    else:
        say(f"Done: weights in {c.save_dir}/, loss curves in {log_dir}/")


def one_line(error):
    """The message of `error` on one line; a DataLoader worker re-raises with the worker's traceback
    in the message, whose last line is `module.Class: message`."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def run_demo(argv, max_characters=None, **report_options):
    """`python train.py --demo`: build the glyph set if absent, train on it, then evaluate and draw (tools/demo.py)."""
    from tools.demo import DEMO_ARGS, build_glyphs, report

    start = time.time()
    c, checkpoint = parse_train_config(DEMO_ARGS + argv)  # the demo's settings go first: the command line wins
    build_glyphs(c.dataset_path, **({"max_characters": max_characters} if max_characters else {}))
    main(c, checkpoint)
    result = report(c, **report_options)
    print(f"The demo took {(time.time() - start) / 60:.1f} min")
    return result


if __name__ == "__main__":
    try:
        argv = sys.argv[1:]
        if "--demo" in argv:
            run_demo(argv)
        else:
            main(*parse_train_config(argv))
    except ConfigError as e:  # settings that cannot work: argparse's form and exit code
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (DataError, ImageError, WeightsError, NonFiniteLoss, SaveError) as e:
        raise SystemExit(f"error: {one_line(e)}")
    except KeyboardInterrupt:  # before training started: nothing to save
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit("\ninterrupted before training started; nothing saved")

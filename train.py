"""Train the Siamese network on Omniglot or on your own image folders.

Edit the config block below, start from a preset, and override any name on the command line:
    python train.py --Epoch 5 --batch_size 8 --input_shape 64 64 --pretrained False
    python train.py config/omniglot_scratch.py --Epoch 30   # the from-scratch recipe of the README
    python train.py --demo                                  # offline: the embedded glyphs, trained and evaluated
Several GPUs (or CPU processes with gloo): torchrun --nproc_per_node=N train.py ...
"""
import datetime
import os
import random
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils import distributed as ddp
from utils.checkpoint import save_checkpoint, set_rng_state
from utils.config import parse_train_config as parse_config
from utils.configurator import config_comments, show_config
from utils.dataloader import load_training_data
from utils.engine import Meter, StopSignals, evaluate_pairs, train_one_epoch
from utils.errors import ConfigError, DataError, ImageError, NonFiniteLoss, SaveError, WeightsError, one_line
from utils.history import LossHistory, TensorBoardLog
from utils.metrics import platt_scaling, threshold_to_record
from utils.oneshot import EmbeddedImages, evaluate_split, verification_logits
from utils.rundir import claim_save_dir, release, save_epoch_weights
from utils.schedule import MIN_STEPS, lr_at_epoch, lr_range_line, make_optimizer, scaled_lr, set_lr
from utils.weights import IMAGENET_WEIGHTS_URLS, load_imagenet_weights, load_matching, load_weights, unwrap

# config: edit here, or pass --name value on the command line (presets in config/ set several at once)
Cuda = True  # use a GPU when there is one; falls back to the CPU
distributed = False  # DDP; torchrun sets it up by itself, this only insists on a launcher
sync_bn = False  # convert batch norms to SyncBatchNorm under DDP (every backbone but vgg16 has them)
fp16 = False  # CUDA mixed precision: float16 autocast with a grad scaler
bf16 = "auto"  # bfloat16 autocast (no scaler needed); "auto": where the GPU or CPU does bf16 natively
channels_last = "auto"  # NHWC memory format, faster with bf16/fp16; "auto": when bf16 or fp16 is on
compile = False  # torch.compile the model (on a CPU it costs minutes to compile and does not pay: docs/results.md)
dataset_path = "dataset"  # folder holding images_background/
input_shape = [105, 105]  # [height, width]; multiples of 32 waste nothing
crop_to_ink = False  # drawings: fit the square around the ink of each image, not all of it (the weights record it)
train_own_data = False  # False: images_background/<alphabet>/<character>/; True: images_background/<class>/
split_by = "image"  # "image": the original 90/10 split of images; "class": validation classes unseen in training
train_ratio = 0.9  # share of images (or classes) used for training; the rest validates
augmentation = "auto"  # "autoaugment" (the original), "affine" (drawings), "jitter", "none"; "auto": see README
negatives = "any"  # negative pairs: "any" other class (the original) or "same_group" (same alphabet: harder)
pairing = "items"  # "items": each item a positive and a negative pair (the original); "batch": see images_per_class
images_per_class = 4  # pairing "batch": a step is batch_size images, this many per class; every pair is scored
loss = "bce"  # "bce": the head's pair probabilities (the original); "bce_ranking"(_cosine): plus one-shot softmaxes
feature_dropout = 0.0  # training only: zero this share of each pair's |f1 - f2| before the head (a regulariser)
label_smoothing = 0.0  # BCE targets 1 - s/2 and s/2 instead of 1 and 0: similarities less sure of themselves
class_rotations = False  # pairing "batch": each class turned 90/180/270 degrees is 3 more classes (for drawings)
class_mirrors = False  # pairing "batch": each class (and each turn of it) mirrored is one more class (for drawings)
class_blends = 0.0  # pairing "batch": this share of a batch's classes are two characters drawn over each other
class_squash = 0.0  # pairing "batch": each class squashed to this share of its height is one more class (0: off)
class_slant = 0.0  # pairing "batch": each class slanted this many degrees (italics) is one more class (0: off)
class_cut = 0.0  # pairing "batch": the top this share of each class's ink (a part of it) is one more class (0: off)
backbone = "vgg16"  # vgg16 (the original's), vgg16_bn, resnet18(_layer3), resnet50, mobilenet_v3_large, conv4(_96/_128)
pretrained = True  # ImageNet weights from model_data/ (vgg16-397923af.pth; downloaded there if missing)
model_path = ""  # start from these weights: keys whose name and shape match are loaded
resume = ""  # a last.ckpt to continue exactly where it stopped; its config is the default, the command line overrides
stop_after = 0  # stop this run after this many epochs (0: run to Epoch); the schedule still spans Epoch
Init_Epoch = 0  # first epoch to run (0-based)
Epoch = 100  # total number of epochs
batch_size = 32  # items per step over all processes; each item is 2 pairs
Init_lr = 1e-2  # learning rate at the nominal batch of 64; scaled to batch_size and clamped
Min_lr = "auto"  # final learning rate; "auto": Init_lr * 0.01
optimizer_type = "auto"  # "sgd", "adam" or "adamw"; "auto": sgd from ImageNet or model_path weights, else adam
momentum = 0.9  # SGD momentum, or Adam's first beta
weight_decay = "auto"  # L2 penalty (adamw: decoupled decay); "auto": 5e-4 with sgd (the original), 0 adam, 1e-2 adamw
lr_decay_type = "cos"  # "cos" or "step"
ema_decay = 0.0  # validate and save an exponential moving average of the weights, this decay a step (0: off)
calibrate = False  # fold a scale and shift fitted on each epoch's validation pairs into the saved head
oneshot_way = 20  # split_by "class": N-way one-shot accuracy on the unseen validation classes each epoch (0: off)
best_by = "val_loss"  # what picks best_epoch_weights.pth: "val_loss" (the original) or "oneshot" (split_by "class")
tensorboard = False  # also write TensorBoard events to save_dir (pip install -r requirements-extras.txt)
save_period = 10  # write ep###-loss-val_loss.pth every this many epochs
save_dir = "logs"  # where weights, checkpoints and loss curves go (a resumed run: the checkpoint's folder)
overwrite = False  # let a new run replace the files of an earlier run in save_dir
checkpoint_minutes = 5.0  # also save last.ckpt inside an epoch this often (0: at epoch ends only)
num_workers = 4  # DataLoader worker processes (0: load in the main process)
seed = 0  # random seed; each process adds its rank
deterministic = False  # deterministic algorithms (for exact resume checks); slower
log_interval = 10  # read the loss on the host (progress bar, NaN check) every this many steps
CONFIG = {k: v for k, v in dict(globals()).items()
          if not k.startswith("_") and isinstance(v, (bool, int, float, str, list))}
DEMO_FLAG = {"demo": dict(action="store_true", help="train the embedded glyph demo offline: config/demo.py, then "
                          "one-shot accuracy on unseen scripts and a figure (other names still override)")}


def parse_train_config(argv=None):
    """The config block overridden by presets and the command line -> (config, loaded `--resume` checkpoint or
    None); see `utils.config.parse_train_config`."""
    argv = sys.argv[1:] if argv is None else argv
    config, checkpoint, _ = parse_config(CONFIG, argv, config_comments(__file__), DEMO_FLAG)
    return config, checkpoint


def main(c, checkpoint=None):
    """Train with config `c` (`parse_train_config`); `checkpoint` is the loaded `c.resume`, if any.

    Rank 0 holds `save_dir`'s lock for the whole run, so a second run on the same folder stops at once.
    """
    rank, world_size = ddp.setup(c.distributed, c.device)
    lock = None
    try:
        lock = claim_save_dir(c.save_dir, c.resume, c.overwrite) if rank == 0 else None
        train(c, checkpoint, rank, world_size)
    finally:
        release(lock)
        ddp.cleanup()


def train(c, checkpoint, rank, world_size):
    """The training run of `main` on this process: build and restore, then the epoch loop."""
    run = build_run(c, checkpoint, rank, world_size)
    try:
        with StopSignals(show=rank == 0) as stop:
            for epoch in range(run.state["epoch"], run.end_epoch):
                if not run_epoch(run, epoch, stop):
                    return
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{e}; stopped without saving this epoch's weights") from None
    finally:
        if run.board:
            run.board.close()
    if run.end_epoch < c.Epoch:
        run.say(f"Stopped after epoch {run.end_epoch}/{c.Epoch} (stop_after {c.stop_after}); "
                f"continue with: python train.py --resume {run.saver.path}")
    else:
        run.say(f"Done: weights in {c.save_dir}/, loss curves in {run.state['log_dir']}/")


def run_epoch(run, epoch, stop):
    """One epoch: train (from the step an interrupted run stopped at), validate, report and save. False when a
    signal stopped the run, after saving where it stands."""
    c, optimizer, tag = run.config, run.optimizer, f"Epoch {epoch + 1}/{run.config.Epoch}"
    lr = lr_at_epoch(epoch, run.lr, run.min_lr, c.Epoch, c.lr_decay_type)
    set_lr(optimizer, lr)
    meter = Meter(c.device, run.state["meter"] if epoch == run.state["epoch"] else None)
    run.data.train_loader.sampler.set_epoch(epoch, meter.steps)
    finished = train_one_epoch(
        run.step_model, run.data.train_loader, optimizer, run.scaler, c.device, meter, amp_dtype=c.amp_dtype,
        channels_last=c.channels_last, loss=c.loss, smoothing=c.label_smoothing, desc=f"{tag} train", lr=lr,
        show=run.is_main, log_interval=c.log_interval, after_step=run.saver.after_step(stop, epoch, run),
        check_learning_at=run.data.steps // 2 if epoch == 0 else None, average=run.average)
    if not finished:
        return stopped(stop.requested(), run, f"in epoch {epoch + 1} at step {meter.steps}/{run.data.steps}")
    train_metrics = meter.means()
    predictor = Siamese.from_network(validated_model(run), c.input_shape, c.device, crop_to_ink=c.crop_to_ink)
    embedded = EmbeddedImages(predictor, run.data.val_paths,
                              progress=run.is_main, desc=f"{tag} val")
    val = evaluate_pairs(embedded, run.data.val_pairs, c.device, desc=f"{tag} val")
    if run.is_main:
        figures = end_epoch_report(run, epoch, lr, train_metrics, val, embedded)
        run.state.update(threshold=figures["threshold"], calibration=figures["calibration"])
    run.state.update(epoch=epoch + 1, meter=None)
    run.saver.save(run.state, run.history)
    return stopped(stop.requested(), run, f"after epoch {epoch + 1}") if stop.requested() else True


def build_run(c, checkpoint, rank, world_size):
    """Everything a run holds: data, model, optimiser, where it stands (`state`), history and checkpoint writer."""
    say = print if rank == 0 else (lambda *a, **k: None)
    if c.Cuda and c.device.type == "cpu":
        say("No CUDA device found: training on the CPU.")
    seed_everything(c, rank)
    data = load_training_data(c, rank, world_size, say)
    if rank == 0:
        show_config(**c.table(), num_train=data.num_train, num_val=data.num_val, device=f"{c.device} x {world_size}")
    lr, min_lr = scaled_lr(c.batch_size, c.Init_lr, c.Min_lr, c.optimizer_type)
    say(lr_range_line(c.batch_size, c.Init_lr, c.Min_lr, c.optimizer_type))
    warn_if_short(c, data.steps, say)
    model = build_model(c, say)
    optimizer = make_optimizer(model.parameters(), c.optimizer_type, lr, c.momentum, c.weight_decay)
    scaler = torch.amp.GradScaler(c.device.type, enabled=c.amp_dtype == torch.float16)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(c.ema_decay), use_buffers=True) \
        if c.ema_decay else None
    state = restore(c, checkpoint, model, optimizer, scaler, data, say) if checkpoint else new_run(c, data)
    if average is not None and checkpoint and "average" in checkpoint:
        average.load_state_dict(checkpoint["average"])
    is_main = rank == 0
    history = LossHistory(state["log_dir"], state["losses"], state["val_losses"], state["oneshots"]) \
        if is_main else None
    return SimpleNamespace(
        config=c, data=data, model=model, step_model=wrap(model, c, world_size), optimizer=optimizer,
        scaler=scaler, lr=lr, min_lr=min_lr, state=state, history=history, is_main=is_main, say=say, average=average,
        board=TensorBoardLog(state["log_dir"], state["epoch"] + 1) if is_main and c.tensorboard else None,
        saver=CheckpointSaver(os.path.join(c.save_dir, "last.ckpt"), model, optimizer, scaler, c, is_main, average),
        end_epoch=min(c.Epoch, state["epoch"] + c.stop_after) if c.stop_after else c.Epoch)


def validated_model(run):
    """The network validated and saved: the weights' average with `ema_decay`, else the model itself."""
    return run.average.module if run.average else unwrap(run.model)


def end_epoch_report(run, epoch, lr, train_metrics, val, embedded):
    """Rank 0 after an epoch's training and validation (`embedded`: the validation images' `EmbeddedImages`): the
    one-shot check, the epoch's line, the history, TensorBoard and the weight files; returns the figures recorded
    with them (threshold, calibration, ...).

    The threshold (and the calibration) are fitted on verification pairs of the validation images, sampled as
    `eval_oneshot.py --verify` samples them: half same class, half any two classes.
    """
    c, data, say, model = run.config, run.data, run.say, validated_model(run)
    oneshot, way = None, 0
    if c.split_by == "class" and c.oneshot_way:  # unseen classes: the accuracy users care about
        oneshot, way = evaluate_split(embedded, data.val_paths, data.val_labels, c.oneshot_way)
    say(f"Epoch {epoch + 1}/{c.Epoch}: loss {train_metrics['loss']:.3f} acc {train_metrics['acc']:.3f} | "
        f"val_loss {val['loss']:.3f} val_acc {val['acc']:.3f}"
        + (f" | val {way}-way one-shot {100 * oneshot:.1f}%" if oneshot is not None else ""))
    run.history.append(train_metrics["loss"], val["loss"], oneshot)
    if run.board:
        run.board.write(epoch + 1, {"loss/train": train_metrics["loss"], "loss/val": val["loss"], "lr": lr,
                                "accuracy/train": train_metrics["acc"], "accuracy/val": val["acc"],
                                "oneshot/val": oneshot})
    logits, targets = verification_logits(embedded, data.val_paths, data.val_labels)
    if logits is None:  # too few validation classes: the validation pass's own pairs
        logits, targets = val["logits"].numpy(), val["targets"].numpy()
    calibration = platt_scaling(logits, targets) if c.calibrate else None
    if calibration:
        logits = calibration[0] * logits + calibration[1]
    threshold = threshold_to_record(1 / (1 + np.exp(-logits)), targets)
    figures = {"epoch": epoch + 1, "val_loss": val["loss"], "val_acc": val["acc"], "val_oneshot": oneshot,
               "oneshot_way": way or None, "threshold": min(max(threshold, 0.0), 1.0),
               "calibration": dict(zip(("scale", "shift"), calibration)) if calibration else None}
    save_epoch_weights(c, model, epoch, train_metrics, val, run.history, figures, data.description, say, calibration)
    return figures


class CheckpointSaver:
    """Writes `last.ckpt` on rank 0: at each epoch's end, every `checkpoint_minutes` inside an epoch, and at the
    step where a stop was asked for."""

    def __init__(self, path, model, optimizer, scaler, config, is_main, average=None):
        self.path, self.model, self.optimizer, self.scaler, self.config = path, model, optimizer, scaler, config
        self.is_main, self.average, self.last = is_main, average, time.monotonic()

    def save(self, state, history):
        if self.is_main:
            progress = {**state, **history.state()}
            if self.average is not None:
                progress["average"] = self.average.state_dict()
            save_checkpoint(self.path, self.model, self.optimizer, self.scaler, progress, self.config.saved())
        self.last = time.monotonic()

    def after_step(self, stop, epoch, run):
        """The `after_step` of `train_one_epoch` in `epoch`: save when a stop is asked for or the time has come;
        True to stop."""
        every = self.config.checkpoint_minutes * 60

        def check(step, meter):
            asked = stop.requested()
            if asked or (every and time.monotonic() - self.last >= every):
                self.save({**run.state, "epoch": epoch, "meter": meter.state()}, run.history)
            return bool(asked)
        return check


def stopped(signal_number, run, where):
    """End a run stopped by a signal (its checkpoint saved): say where it stands and how to continue; exits with
    128 + the signal's number, as a shell reports a process the signal ended."""
    run.say(f"\nStopped {where}: saved {run.saver.path}; continue with: python train.py --resume {run.saver.path}",
            flush=True)
    raise SystemExit(128 + signal_number)


def seed_everything(c, rank):
    """Seed torch and Python with seed + rank (the data draws seed themselves: `utils.dataloader`)."""
    torch.manual_seed(c.seed + rank)
    random.seed(c.seed + rank)
    if c.deterministic:
        torch.use_deterministic_algorithms(True)
    if c.device.type == "cuda":
        torch.backends.cudnn.benchmark = not c.deterministic


def warn_if_short(c, steps, say):
    """Say when the run has fewer steps than the original recommends for its optimiser."""
    total, wanted = steps * c.Epoch, MIN_STEPS[c.optimizer_type]
    if total < wanted:
        say(f"Warning: {total} training steps is below the {wanted} recommended for {c.optimizer_type}; "
            f"about {wanted // steps + 1} epochs would reach it.")


def build_model(c, say):
    """The Siamese network of config `c` on its device, from ImageNet or `model_path` weights as asked."""
    model = SiameseNetwork(c.input_shape, c.backbone, c.feature_dropout)
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
    model.to(c.device)
    if c.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap(model, c, world_size):
    """The module the steps call: under DDP (with SyncBatchNorm if asked) and torch.compile as configured."""
    if world_size > 1:
        if c.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        devices = [c.device] if c.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=devices)
    return torch.compile(model) if c.compile else model


def new_run(c, data):
    """Where a new run starts: epoch `Init_Epoch`, an empty history in a new loss_<time> folder."""
    log_dir = os.path.join(c.save_dir, "loss_" + datetime.datetime.now().strftime("%Y_%m_%d_%H_%M_%S"))
    return {"epoch": c.Init_Epoch, "meter": None, "log_dir": log_dir, "losses": [], "val_losses": [],
            "oneshots": [], "data_digest": data.digest, "threshold": None}


def restore(c, checkpoint, model, optimizer, scaler, data, say):
    """Load a checkpoint's state into the run; returns where it stands. Refuses (DataError) data that changed."""
    if checkpoint.get("data_digest", data.digest) != data.digest:
        raise DataError(f"{c.dataset_path}: the classes or images differ from those {c.resume} was trained on, so "
                        f"its validation classes would no longer be unseen; restore the data, or start a new run "
                        f"from its weights with --model_path {c.resume}")
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if ddp.world_size() == 1:  # the random states are rank 0's; other ranks keep their own seeds
        set_rng_state(checkpoint["rng"])
    run = {**new_run(c, data), **{k: checkpoint[k] for k in ("epoch", "losses", "val_losses") if k in checkpoint}}
    run.update(meter=checkpoint.get("meter"), oneshots=checkpoint.get("oneshots", [None] * len(run["losses"])),
               threshold=checkpoint.get("threshold"),
               log_dir=os.path.join(c.save_dir, os.path.basename(checkpoint["log_dir"])))  # the history moves too
    step = f", step {run['meter']['steps'] + 1}/{data.steps}" if run["meter"] else ""
    say(f"Resuming from {c.resume} at epoch {run['epoch'] + 1}/{c.Epoch}{step}")
    return run


if __name__ == "__main__":
    try:
        argv = sys.argv[1:]
        if "--demo" in argv:
            from tools.demo import run_demo

            run_demo([a for a in argv if a != "--demo"])
        else:
            main(*parse_train_config(argv))
    except ConfigError as e:  # settings that cannot work: argparse's form and exit code
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (DataError, ImageError, WeightsError, NonFiniteLoss, SaveError) as e:
        raise SystemExit(f"error: {one_line(e)}")
    except KeyboardInterrupt:  # before or after the epochs: nothing half-done to save
        raise SystemExit("\ninterrupted; nothing saved since the last checkpoint")

"""The history of a run: per-epoch losses and one-shot accuracy as text files and a plot, and TensorBoard events."""
import os

from utils.figures import plot_losses
from utils.files import atomic_write


class LossHistory:
    """Keeps per-epoch train and validation losses, and the validation one-shot accuracy where it is
    measured, in `log_dir` as text files and a plot."""

    def __init__(self, log_dir, losses=(), val_losses=(), oneshots=()):
        self.log_dir = log_dir
        self.losses, self.val_losses, self.oneshots = list(losses), list(val_losses), list(oneshots)
        os.makedirs(log_dir, exist_ok=True)

    def append(self, loss, val_loss, oneshot=None):
        """Record one epoch's losses (and one-shot accuracy, or None), rewrite the text files and redraw the plot."""
        self.losses.append(float(loss))
        self.val_losses.append(float(val_loss))
        self.oneshots.append(oneshot)
        files = [("epoch_loss.txt", self.losses), ("epoch_val_loss.txt", self.val_losses)]
        if oneshot is not None:
            files.append(("epoch_val_oneshot.txt", self.oneshots))
        for name, values in files:
            atomic_write("".join(f"{v}\n" for v in values).encode(), os.path.join(self.log_dir, name))
        self.plot()

    def is_best(self, best_by):
        """True when the last epoch is the best so far by `best_by`: "val_loss" (lowest) or "oneshot" (highest)."""
        if best_by == "oneshot":
            measured = [v for v in self.oneshots if v is not None]
            return self.oneshots[-1] is not None and self.oneshots[-1] >= max(measured)
        return self.val_losses[-1] <= min(self.val_losses)

    def plot(self):
        """Write epoch_loss.png: train and validation curves, smoothed once there are 3 epochs."""
        plot_losses(self.losses, self.val_losses, self.oneshots, os.path.join(self.log_dir, "epoch_loss.png"))

    def state(self):
        """The history as plain lists, for a checkpoint."""
        return {"losses": list(self.losses), "val_losses": list(self.val_losses), "oneshots": list(self.oneshots)}


class TensorBoardLog:
    """Per-epoch scalars as TensorBoard events in `log_dir`; `tensorboard --logdir <save_dir>` shows them.

    `first_epoch` (1-based) drops events an interrupted run wrote from that epoch on, so a resumed run
    does not draw them twice. Needs the `tensorboard` package (requirements-extras.txt).
    """

    def __init__(self, log_dir, first_epoch=1):
        from torch.utils.tensorboard import SummaryWriter  # optional extra: imported only when asked for

        self.writer = SummaryWriter(log_dir, purge_step=first_epoch)

    def write(self, epoch, scalars):
        """Add each {tag: value} at 1-based `epoch`, skipping None, and flush to disk."""
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def close(self):
        self.writer.close()

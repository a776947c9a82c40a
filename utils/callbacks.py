"""What training leaves on disk besides weights: the loss history files, the loss plot, TensorBoard events."""
import os


def smooth(values, window=5):
    """Centred moving average (shorter window at the ends)."""
    half = window // 2
    return [sum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1])
            for i in range(len(values))]


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
            with open(os.path.join(self.log_dir, name), "w") as f:
                f.writelines(f"{v}\n" for v in values)
        self.plot()

    def is_best(self, best_by):
        """True when the last epoch is the best so far by `best_by`: "val_loss" (lowest) or "oneshot" (highest)."""
        if best_by == "oneshot":
            measured = [v for v in self.oneshots if v is not None]
            return self.oneshots[-1] is not None and self.oneshots[-1] >= max(measured)
        return self.val_losses[-1] <= min(self.val_losses)

    def plot(self):
        """Write epoch_loss.png: train and validation curves, smoothed once there are 3 epochs."""
        from matplotlib.figure import Figure  # a bare Figure renders to a file without pyplot or a GUI backend

        epochs = range(1, len(self.losses) + 1)
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        ax.plot(epochs, self.losses, "red", linewidth=2, label="train loss")
        ax.plot(epochs, self.val_losses, "coral", linewidth=2, label="val loss")
        if len(self.losses) >= 3:
            window = 5 if len(self.losses) < 25 else 15
            ax.plot(epochs, smooth(self.losses, window), "green", linestyle="--", linewidth=2,
                    label="smooth train loss")
            ax.plot(epochs, smooth(self.val_losses, window), "#8B4513", linestyle="--", linewidth=2,
                    label="smooth val loss")
        ax.grid(True)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend(loc="upper left")
        measured = [(epoch, v) for epoch, v in zip(epochs, self.oneshots) if v is not None]
        if measured:
            right = ax.twinx()
            right.plot(*zip(*measured), "navy", marker="o", linewidth=2, label="val one-shot accuracy")
            right.set_ylabel("One-shot accuracy")
            right.set_ylim(0, 1)
            right.legend(loc="upper right")
        fig.savefig(os.path.join(self.log_dir, "epoch_loss.png"))


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

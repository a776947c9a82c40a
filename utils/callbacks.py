"""What training leaves on disk: loss history files, the loss plot, weights and checkpoints."""
import os
import tempfile

import matplotlib

matplotlib.use("Agg")  # plots are written to files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def smooth(values, window=5):
    """Centred moving average (shorter window at the ends)."""
    half = window // 2
    return [sum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


class LossHistory:
    """Keeps per-epoch train and validation losses in `log_dir` as text files and a plot."""

    def __init__(self, log_dir, losses=(), val_losses=()):
        self.log_dir = log_dir
        self.losses, self.val_losses = list(losses), list(val_losses)
        os.makedirs(log_dir, exist_ok=True)

    def append(self, loss, val_loss):
        """Record one epoch's losses, rewrite the text files and redraw the plot."""
        self.losses.append(float(loss))
        self.val_losses.append(float(val_loss))
        for name, values in (("epoch_loss.txt", self.losses), ("epoch_val_loss.txt", self.val_losses)):
            with open(os.path.join(self.log_dir, name), "w") as f:
                f.writelines(f"{v}\n" for v in values)
        self.plot()

    def plot(self):
        epochs = range(1, len(self.losses) + 1)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(epochs, self.losses, "red", linewidth=2, label="train loss")
        ax.plot(epochs, self.val_losses, "coral", linewidth=2, label="val loss")
        if len(self.losses) >= 3:
            window = 5 if len(self.losses) < 25 else 15
            ax.plot(epochs, smooth(self.losses, window), "green", linestyle="--", linewidth=2, label="smooth train loss")
            ax.plot(epochs, smooth(self.val_losses, window), "#8B4513", linestyle="--", linewidth=2, label="smooth val loss")
        ax.grid(True)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend(loc="upper right")
        fig.savefig(os.path.join(self.log_dir, "epoch_loss.png"))
        plt.close(fig)

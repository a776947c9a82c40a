"""What training leaves on disk besides weights: the loss history files and the loss plot."""
import os


def smooth(values, window=5):
    """Centred moving average (shorter window at the ends)."""
    half = window // 2
    return [sum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1])
            for i in range(len(values))]


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
        ax.legend(loc="upper right")
        fig.savefig(os.path.join(self.log_dir, "epoch_loss.png"))

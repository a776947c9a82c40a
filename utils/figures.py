"""Every figure the project draws. matplotlib is imported inside each function: importing a module of this project
never sets its backend, and pyplot (a window) is used only where a figure is shown."""
import os

from utils.files import atomic_path


def smooth(values, window=5):
    """Centred moving average (shorter window at the ends)."""
    half = window // 2
    return [sum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1])
            for i in range(len(values))]


def plot_losses(losses, val_losses, oneshots, path):
    """Write the loss plot to `path`: train and validation curves, smoothed once there are 3 epochs, and the
    validation one-shot accuracy on a second axis where it was measured."""
    from matplotlib.figure import Figure  # a bare Figure renders to a file without pyplot or a GUI backend

    epochs = range(1, len(losses) + 1)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(epochs, losses, "red", linewidth=2, label="train loss")
    ax.plot(epochs, val_losses, "coral", linewidth=2, label="val loss")
    if len(losses) >= 3:
        window = 5 if len(losses) < 25 else 15
        ax.plot(epochs, smooth(losses, window), "green", linestyle="--", linewidth=2,
                label="smooth train loss")
        ax.plot(epochs, smooth(val_losses, window), "#8B4513", linestyle="--", linewidth=2,
                label="smooth val loss")
    ax.grid(True)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper left")
    measured = [(epoch, v) for epoch, v in zip(epochs, oneshots) if v is not None]
    if measured:
        right = ax.twinx()
        right.plot(*zip(*measured), "navy", marker="o", linewidth=2, label="val one-shot accuracy")
        right.set_ylabel("One-shot accuracy")
        right.set_ylim(0, 1)
        right.legend(loc="upper right")
    save_figure(fig, path)


def draw_pair(image_1, image_2, title, save_path=None, show=True):
    """Two PIL images side by side under `title`; saved and/or shown (never blocks without a display)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
    for ax, image in zip(axes, (image_1, image_2)):
        ax.imshow(image)
        ax.axis("off")
    fig.suptitle(title)
    finish(fig, save_path, show)


def finish(fig, save_path, show):
    """Save a pyplot figure to `save_path` (atomically) if given, show it where the backend is interactive, close it."""
    import matplotlib.pyplot as plt

    if save_path:
        save_figure(fig, save_path)
    if show and fig.canvas.required_interactive_framework:  # None for Agg and other file-only backends
        plt.show()
    plt.close(fig)


def save_figure(fig, path):
    """Write a figure to `path` through a temporary file, in the format its extension names."""
    with atomic_path(path, os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format=os.path.splitext(path)[1].lstrip(".").lower() or None)


def draw_predictions(pairs, scores, path):
    """Each pair side by side on its own row, titled with its label and similarity; written to `path`."""
    from matplotlib.figure import Figure  # a bare Figure renders to a file without pyplot or a GUI backend
    from PIL import Image

    fig = Figure(figsize=(5, 2.8 * len(pairs)))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for row, ((label, (a, b)), score) in enumerate(zip(pairs, scores)):
        for ax, image in zip(axes[row], (a, b)):
            ax.imshow(Image.open(image).convert("RGB"))
            ax.axis("off")
        axes[row][0].set_title(f"{label}: similarity {score:.3f}", loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path)


def draw_verification(scores, labels, threshold, path):
    """Two panels written to `path`: the ROC curve of the scored pairs with the point of `threshold` marked, and the
    reliability diagram (the fraction of same pairs against the mean similarity, in 10 equal-width bins)."""
    from matplotlib.figure import Figure

    from utils.metrics import expected_calibration_error, metrics_at, reliability_bins, roc_auc, roc_curve

    fig = Figure(figsize=(9, 4.2))
    roc, reliability = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(scores, labels)
    roc.plot(fpr, tpr, "navy", linewidth=2, label=f"ROC, AUC {roc_auc(scores, labels):.3f}")
    roc.plot([0, 1], [0, 1], "grey", linestyle=":", linewidth=1)
    at = metrics_at(scores, labels, threshold)
    negatives = max(len(labels) - int(sum(labels)), 1)
    false_positive_rate = float(((scores >= threshold) & (labels == 0)).sum()) / negatives
    roc.plot([false_positive_rate], [at["recall"]], "o", color="crimson",
             label=f"threshold {threshold:.3f}: accuracy {at['accuracy']:.1%}")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    roc.legend(loc="lower right")
    counts, confidence, frequency = reliability_bins(scores, labels)
    used = counts > 0
    centres = (range(len(counts)))
    reliability.bar([(i + 0.5) / len(counts) for i in centres], frequency, width=1 / len(counts), color="steelblue",
                    edgecolor="white", alpha=0.8, label="fraction of same pairs")
    reliability.plot(confidence[used], frequency[used], "o-", color="navy", label="at the bins' mean similarity")
    reliability.plot([0, 1], [0, 1], "grey", linestyle=":", linewidth=1, label="calibrated")
    reliability.set(xlabel="similarity", ylabel="fraction of same pairs", xlim=(0, 1), ylim=(0, 1),
                    title=f"expected calibration error {expected_calibration_error(scores, labels):.3f}")
    reliability.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def draw_matches(query, query_name, matches, threshold, save_path=None, show=False):
    """The query image and its best gallery matches side by side, each titled with its similarity (green when it
    reaches `threshold`, the weights' "same"); `matches` are (similarity, PIL image, name). Saved and/or shown;
    returns the titles of the panels drawn, query first."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matches) + 1, figsize=(2.2 * (len(matches) + 1), 2.8), squeeze=False)
    axes[0][0].imshow(query)
    axes[0][0].set_title(f"query\n{os.path.basename(str(query_name))}", fontsize=9)
    for ax, (score, image, name) in zip(axes[0][1:], matches):
        ax.imshow(image)
        ax.set_title(f"{score:.3f}\n{os.path.basename(name)}", fontsize=9,
                     color="darkgreen" if score >= threshold else "black")
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(f"best matches (green: at least the threshold {threshold:.3f})", fontsize=10)
    titles = [ax.get_title() for ax in axes[0]]
    finish(fig, save_path, show)
    return titles

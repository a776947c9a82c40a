"""`python train.py --demo`: the whole job on the embedded glyph set, offline, in minutes on a CPU.

Builds the glyph set if absent, trains with train.py's own loop on small inputs from scratch,
measures 20-way one-shot accuracy on scripts never seen in training, and draws a same pair and a
different pair with their scores.
"""
import os
import time
from pathlib import Path

import torch

from utils.datasets import MAX_CHARACTERS, make_glyphs
from utils.oneshot import evaluate_folder



def native_bf16():
    """True where bfloat16 autocast is fast: CUDA, or a CPU with AVX-512 BF16 or AMX (elsewhere it is emulated)."""
    if torch.cuda.is_available():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# train.py settings the demo starts from; any of them can still be overridden: python train.py --demo --Epoch 1.
# From scratch (no ImageNet weights offline), VGG16 without batch norm learns within minutes with Adam (5e-4 after
# batch scaling), no weight decay and no augmentation; SGD and augmented runs stay at loss 0.693 that long.
DEMO_ARGS = [
    "--dataset_path", "dataset/glyphs", "--save_dir", "logs/demo",
    "--input_shape", "32", "32", "--pretrained", "False",
    "--optimizer_type", "adam", "--Init_lr", "1e-3", "--weight_decay", "0",
    "--batch_size", "32", "--Epoch", "4", "--augmentation", "none", "--split_by", "class",
    "--num_workers", "0", "--save_period", "100", "--channels_last", "True", "--bf16", str(native_bf16()),
]
FIGURE_PATH = "logs/demo_predictions.png"


def glyphs_present(dataset_path):
    return all(os.path.isdir(os.path.join(dataset_path, split)) for split in ("images_background", "images_evaluation"))


def sample_pairs(alphabets_dir):
    """A same pair (two drawings of one character) and a different pair (two characters of one alphabet)."""
    alphabet = sorted(p for p in Path(alphabets_dir).iterdir() if p.is_dir())[0]
    first, second = sorted(p for p in alphabet.iterdir() if p.is_dir())[:2]
    drawings = sorted(first.glob("*.png"))
    return (drawings[0], drawings[1]), (drawings[0], sorted(second.glob("*.png"))[0])


def draw_predictions(pairs, scores, path):
    """Each pair side by side on its own row, titled with its label and similarity; written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(pairs), 2, figsize=(5, 2.8 * len(pairs)), squeeze=False)
    for row, ((label, (a, b)), score) in enumerate(zip(pairs, scores)):
        for ax, image in zip(axes[row], (a, b)):
            ax.imshow(Image.open(image).convert("RGB"))
            ax.axis("off")
        axes[row][0].set_title(f"{label}: similarity {score:.3f}", loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".part.png"
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)


def run_demo(train_main, config, figure_path=FIGURE_PATH, way=20, trials=400, max_characters=MAX_CHARACTERS):
    """Build the glyph set if absent, `train_main(config)`, then evaluate and draw the best weights.

    Returns the one-shot result of utils.oneshot.evaluate_folder plus the two pair scores and the seconds taken.
    """
    from siamese import Siamese  # the predictor class lives at the top level, next to train.py

    start = time.time()
    data = config["dataset_path"]
    if not glyphs_present(data):
        print(f"Building the embedded glyph set in {data}/ ...")
        make_glyphs(data, max_characters=max_characters)
    train_main(config)
    weights = os.path.join(config["save_dir"], "best_epoch_weights.pth")
    predictor = Siamese(model_path=weights, input_shape=config["input_shape"], cuda=config["Cuda"], verbose=False)
    evaluation = os.path.join(data, "images_evaluation")
    result = evaluate_folder(predictor, evaluation, way=way, shot=1, trials=trials, within_alphabet=True, seed=0)
    same, different = sample_pairs(evaluation)
    scores = [predictor.similarity(*same), predictor.similarity(*different)]
    draw_predictions([("same character", same), ("different characters", different)], scores, figure_path)
    result.update(same_score=scores[0], different_score=scores[1], seconds=time.time() - start)
    print(f"Demo one-shot accuracy, {way}-way within each unseen script, {trials} trials: "
          f"{result['accuracy']:.1%} +- {result['ci95']:.1%} (chance {result['chance']:.1%})")
    print(f"Same pair {scores[0]:.3f}, different pair {scores[1]:.3f}: {figure_path}; "
          f"weights {weights}; took {result['seconds'] / 60:.1f} min")
    return result

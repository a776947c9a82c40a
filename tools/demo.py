"""`python train.py --demo`: the whole job on the embedded glyph set, offline, in minutes on a CPU.

train.py builds the glyph set if absent (`build_glyphs`), trains with its own loop on small inputs
from scratch, then `report` measures 20-way one-shot accuracy on scripts never seen in training and
draws a same pair and a different pair with their scores.
"""
import os
from pathlib import Path

from siamese import Siamese
from tools.glyphs import MAX_CHARACTERS, glyphs_present, make_glyphs
from utils.oneshot import evaluate_folder


# train.py settings the demo starts from; any of them can still be overridden: python train.py --demo --Epoch 1.
# From scratch (no ImageNet weights offline): every pair of a batch of 16 characters of one script is scored, each
# character also turned by quarter turns as 3 more characters, with small stroke distortions and the one-shot
# ranking term. ResNet18: a step in a fifth of vgg16_bn's CPU time, and more learnt per step (docs/results.md#demo).
DEMO_ARGS = [
    "--dataset_path", "dataset/glyphs", "--save_dir", "logs/demo",
    "--input_shape", "32", "32", "--pretrained", "False", "--backbone", "resnet18",
    "--optimizer_type", "adam", "--Init_lr", "1e-3", "--weight_decay", "0",
    "--pairing", "batch", "--batch_size", "64", "--images_per_class", "4", "--class_rotations", "True",
    "--negatives", "same_group", "--augmentation", "affine", "--Epoch", "12", "--split_by", "class",
    "--loss", "bce_ranking", "--best_by", "oneshot", "--num_workers", "0", "--save_period", "100",
    "--overwrite", "True",  # a new demo replaces the last one
]
FIGURE_PATH = "logs/demo_predictions.png"


def build_glyphs(dataset_path, max_characters=MAX_CHARACTERS):
    """Write the embedded glyph set to `dataset_path` unless it is there already."""
    if not glyphs_present(dataset_path):
        print(f"Building the embedded glyph set in {dataset_path}/ ...")
        make_glyphs(dataset_path, max_characters=max_characters)


def example_pairs(alphabets_dir):
    """A same pair (two drawings of one character) and a different pair (two characters of one alphabet)."""
    alphabet = sorted(p for p in Path(alphabets_dir).iterdir() if p.is_dir())[0]
    first, second = sorted(p for p in alphabet.iterdir() if p.is_dir())[:2]
    drawings = sorted(first.glob("*.png"))
    return (drawings[0], drawings[1]), (drawings[0], sorted(second.glob("*.png"))[0])


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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".part.png"
    fig.savefig(partial)
    os.replace(partial, path)


def report(config, figure_path=FIGURE_PATH, way=20, trials=400):
    """Evaluate the best weights of the finished demo run `config`, draw its figure and print both.

    Returns the one-shot result of `utils.oneshot.evaluate_folder` plus `same_score` and
    `different_score`, the similarities of the two drawn pairs.
    """
    weights = os.path.join(config.save_dir, "best_epoch_weights.pth")
    predictor = Siamese(model_path=weights, input_shape=config.input_shape, cuda=config.Cuda, verbose=False)
    evaluation = os.path.join(config.dataset_path, "images_evaluation")
    result = evaluate_folder(predictor, evaluation, way=way, shot=1, trials=trials, within_alphabet=True, seed=0)
    same, different = example_pairs(evaluation)
    scores = [predictor.similarity(*same), predictor.similarity(*different)]
    draw_predictions([("same character", same), ("different characters", different)], scores, figure_path)
    result.update(same_score=scores[0], different_score=scores[1])
    print(f"Demo one-shot accuracy, {way}-way within each unseen script, {trials} trials: "
          f"{result['accuracy']:.1%} +- {result['ci95']:.1%} (chance {result['chance']:.1%})")
    print(f"Same pair {scores[0]:.3f}, different pair {scores[1]:.3f}: {figure_path}; weights {weights}")
    return result

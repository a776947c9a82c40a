"""`python train.py --demo`: the whole job on the embedded glyph set, offline, in minutes on a CPU.

It builds the glyph set if absent (`build_glyphs`), trains with the settings of config/demo.py from scratch, then
`report` measures 20-way one-shot accuracy on scripts never seen in training and draws a same pair and a
different pair with their scores.
"""
import os
import time
from pathlib import Path

import train
from siamese import Siamese
from tools.glyphs import MAX_CHARACTERS, glyphs_present, make_glyphs
from utils.figures import draw_predictions
from utils.oneshot import evaluate_folder

PRESET = Path(__file__).resolve().parent.parent / "config" / "demo.py"  # the demo's settings; the command line wins
FIGURE_PATH = "logs/demo_predictions.png"


def run_demo(argv, max_characters=None, **report_options):
    """`python train.py --demo ARGS`: build the glyph set if absent, train on it, then evaluate and draw (`report`)."""
    start = time.time()
    c, checkpoint = train.parse_train_config([str(PRESET)] + list(argv))
    build_glyphs(c.dataset_path, **({"max_characters": max_characters} if max_characters else {}))
    train.main(c, checkpoint)
    result = report(c, **report_options)
    print(f"The demo took {(time.time() - start) / 60:.1f} min")
    return result


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


def report(config, figure_path=FIGURE_PATH, way=20, trials=400):
    """Evaluate the best weights of the finished demo run `config`, draw its figure and print both.

    Returns the one-shot result of `utils.oneshot.evaluate_folder` plus `same_score` and
    `different_score`, the similarities of the two drawn pairs.
    """
    weights = os.path.join(config.save_dir, "best_epoch_weights.pth")
    predictor = Siamese(model_path=weights, cuda=config.device.type == "cuda", verbose=False)  # the rest: its settings
    evaluation = os.path.join(config.dataset_path, "images_evaluation")
    result = evaluate_folder(predictor, evaluation, way=way, shot=1, trials=trials, within_alphabet=True, seed=0)
    same, different = example_pairs(evaluation)
    scores = [predictor.similarity(*same), predictor.similarity(*different)]
    draw_predictions([("same character", same), ("different characters", different)], scores, figure_path)
    result.update(same_score=scores[0], different_score=scores[1])
    print(f"Demo one-shot accuracy, {way}-way within each unseen script, {trials} trials: "
          f"{result['accuracy']:.1%} +- {result['ci95']:.1%} (chance {result['chance']:.1%})")
    print(f"Same pair {scores[0]:.3f}, different pair {scores[1]:.3f}: {figure_path}; weights {weights}")
    print("Try next (the weights' settings file gives their input size and threshold):")
    for command in next_commands(weights, evaluation, way):
        print(f"  {command}")
    return result


def next_commands(weights, evaluation, way=20):
    """The commands that use the demo's weights next: two drawings of img/ (Hebrew, a script the demo never trains
    on), a gallery search of an unseen script for one of them, and the demo's `way`-way one-shot evaluation."""
    hebrew = os.path.join(evaluation, "Hebrew")
    gallery = hebrew if os.path.isdir(hebrew) else os.path.join(evaluation, sorted(os.listdir(evaluation))[0])
    return [f"python predict.py img/alef_1.png img/alef_2.png --model_path {weights}",
            f"python predict.py --gallery {gallery} img/alef_1.png --top 5 --model_path {weights} --save matches.png",
            f"python eval_oneshot.py --dataset {evaluation} --way {way} --within_alphabet True --model_path {weights}"]

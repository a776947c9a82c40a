"""One-shot evaluation of trained Siamese weights.

    python eval_oneshot.py --runs all_runs --model_path W.pth                   # Lake's 20 official runs
    python eval_oneshot.py --dataset dataset/images_evaluation --way 20 --shot 1 --trials 400 --within_alphabet True
    python eval_oneshot.py --verify --dataset DIR --pairs 2000 --save roc.png   # ROC AUC, where to cut, calibration
    python eval_oneshot.py --verify --dataset DIR --pairs 2000 --calibrate OUT.pth   # calibrated copy of the weights
The speed of a 20-way task (cached embeddings against every pair through the network) is in `python bench.py`.
"""
import argparse
import os
import sys

import numpy as np

from siamese import add_predictor_args, assumed_size_note, check_predictor_args, predictor_from_args
from utils.configurator import parse_bool
from utils.errors import DataError, ImageError, SaveError, WeightsError, printable
from utils.files import output_problem
from utils.interrupts import exit_on_interrupt
from utils.metrics import expected_calibration_error, platt_scaling, threshold_to_record
from utils.oneshot import evaluate_folder, evaluate_runs, evaluate_verification
from utils.weights import save_calibrated, settings_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="One-shot classification and verification of Siamese weights.")
    add_predictor_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", help="Lake's all_runs folder (run01 ... run20)")
    source.add_argument("--dataset", help="<alphabet>/<character>/<image> or <class>/<image> folder")
    parser.add_argument("--own_data", type=parse_bool, default=None, metavar="True|False",
                        help="two-level <class>/<image> layout (default: detected)")
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--within_alphabet", type=parse_bool, default=False, metavar="True|False",
                        help="draw all classes of a task from one alphabet (Lake's protocol does)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true", help="pair verification: ROC AUC and the best threshold")
    parser.add_argument("--pairs", type=int, default=1000, help="labelled pairs for --verify (half same class)")
    parser.add_argument("--save", default="", help="with --verify: draw the ROC curve (the threshold marked) and the "
                        "reliability diagram to this image file")
    parser.add_argument("--calibrate", default="", metavar="OUT.pth",
                        help="with --verify: fit a scale and shift of the logits on these pairs and write the weights "
                             "with them folded into the head (and its .json) to this file")
    args = parser.parse_args(argv)
    if args.verify and not args.dataset:
        parser.error("--verify needs --dataset")
    if (args.save or args.calibrate) and not args.verify:
        parser.error("--save and --calibrate go with --verify")
    problem = (args.save and output_problem(args.save, "--save")) or (
        args.calibrate and output_problem(args.calibrate, "--calibrate"))
    if problem:
        parser.error(printable(problem))
    if args.calibrate:
        check_calibrate_target(parser, args.calibrate, args.model_path)
    if min(args.way, args.shot, args.trials, args.pairs) < 1 or args.way < 2:
        parser.error("--way must be at least 2; --shot, --trials and --pairs at least 1")
    check_predictor_args(parser, args)
    return args


def check_calibrate_target(parser, target, source):
    """End with argparse's error when writing `target` and its settings file would replace `source` or its own."""
    written = {os.path.realpath(path) for path in (target, settings_path(target))}
    if written & {os.path.realpath(path) for path in (source, settings_path(source))}:
        parser.error(f"--calibrate {printable(target)} would replace the weights being calibrated or their settings "
                     f"file; name a new file")
    if len(written) == 1:
        parser.error(f"--calibrate {printable(target)} is a .json name; name the .pth file (its settings go beside it)")


def report_runs(model, args):
    result = evaluate_runs(model, args.runs, seed=args.seed)
    for name, error in zip(result["runs"], result["errors"]):
        print(f"{printable(name)}: error {error:5.1f}%")
    print(f"mean error over {len(result['runs'])} runs: {result['error']:.1f}% (+-{result['ci95']:.1f}%, 95% CI)  "
          f"[Lake et al.: humans 4.5%, Koch et al. Siamese 8.0%, Modified Hausdorff 38.8%]")


def report_folder(model, args):
    result = evaluate_folder(model, args.dataset, args.way, args.shot, args.trials, args.within_alphabet,
                             args.seed, args.own_data)
    where = "within alphabet" if args.within_alphabet else "across the folder"
    print(f"{args.way}-way {args.shot}-shot, {args.trials} trials ({where}, {result['images']} images embedded): "
          f"accuracy {100 * result['accuracy']:.1f}% +- {100 * result['ci95']:.1f}% (95% CI), "
          f"chance {100 * result['chance']:.1f}%")


def report_verify(model, args):
    recorded = model.settings["threshold"][1] != "default"
    result = evaluate_verification(model, args.dataset, args.pairs, args.seed, args.own_data,
                                   threshold=model.threshold if recorded else None)
    print(f"{result['pairs']} pairs ({result['positives']} same class): ROC AUC {result['auc']:.4f}, "
          f"expected calibration error {result['ece']:.4f} (10 bins)")
    lines = [("best threshold", result["best"]), ("threshold 0.5", result["at_0.5"])]
    if recorded:
        lines.append((f"recorded ({model.settings['threshold'][1]})", result["recorded"]))
    for name, at in lines:
        print(f"  {name:15s} {at['threshold']:.4f}: accuracy {100 * at['accuracy']:.1f}%, "
              f"precision {100 * at['precision']:.1f}%, recall {100 * at['recall']:.1f}%")
    if args.save:
        from utils.figures import draw_verification

        draw_verification(result["scores"], result["labels"], model.threshold, args.save)
        print(f"wrote {printable(args.save)}: ROC curve and reliability diagram")
    if args.calibrate:
        write_calibrated(model, args, result)


def write_calibrated(model, args, result):
    """Fit the calibration on the verified pairs, report it and write the calibrated copy of the weights."""
    scale, shift = platt_scaling(result["logits"], result["labels"])
    scores = 1 / (1 + np.exp(-(scale * result["logits"].astype(np.float64) + shift)))
    threshold = threshold_to_record(scores, result["labels"])
    fitted_on = {"scale": scale, "shift": shift, "dataset": args.dataset, "pairs": result["pairs"], "seed": args.seed,
                 "tta": model.tta}
    save_calibrated(model.model_path, args.calibrate, scale, shift,
                    {"backbone": model.net.backbone, "input_shape": model.input_shape,
                     "letterbox_image": model.letterbox_image, "crop_to_ink": model.crop_to_ink, "threshold": threshold,
                     "calibrated_on": fitted_on})
    print(f"calibrated on these pairs: logit x {scale:.4f} {shift:+.4f}; expected calibration error "
          f"{result['ece']:.4f} -> {expected_calibration_error(scores, result['labels']):.4f} here (check it on "
          f"pairs of other classes), threshold recorded {threshold:.4f}")
    print(f"wrote {printable(args.calibrate)} and its .json settings file")


def main(argv=None):
    """The command line (`argv`, default sys.argv); every problem ends in one line, Ctrl-C and SIGTERM too."""
    args = parse_args(argv)
    with exit_on_interrupt("eval_oneshot.py: interrupted; no file is left half-written"):
        try:
            model = predictor_from_args(args, verbose=False)
            note = assumed_size_note(model)
            if note:
                print(printable(note), file=sys.stderr)
            if args.verify:
                report_verify(model, args)
            elif args.runs:
                report_runs(model, args)
            else:
                report_folder(model, args)
        except (WeightsError, DataError, ImageError, SaveError) as e:
            raise SystemExit(f"error: {printable(e)}") from None


if __name__ == "__main__":
    sys.exit(main())

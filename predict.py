"""Score how similar two images are with trained weights.

    python predict.py                       # asks for two image paths, again and again
    python predict.py A.png B.png           # prints the probability and exits
    python predict.py A.png B.png --save out.png --model_path logs/best_epoch_weights.pth --input_shape 105 105
    python predict.py --gallery DIR QUERY.png --top 5   # rank DIR's images and classes by similarity
    python predict.py --pairs pairs.csv --out scores.csv  # score every pair a CSV lists
"""
import argparse
import os
import sys

import torch

from siamese import add_predictor_args, assumed_size_note, check_predictor_args, predictor_from_args
from utils.configurator import parse_bool
from utils.errors import DataError, ImageError, SaveError, WeightsError, printable
from utils.files import atomic_file, output_problem, remove_stale_temporaries, write_target
from utils.gallery import rank_gallery
from utils.images import open_image
from utils.interrupts import exit_on_interrupt
from utils.metrics import metrics_at, roc_auc
from utils.pairs import read_pairs, score_path_pairs, write_scores_csv

MAX_WARNINGS = 10  # unreadable images named on stderr; the rest only in the output's error column


def failure(error):
    """The SystemExit that ends the program with `error: <message>` on stderr, control characters escaped."""
    return SystemExit(f"error: {printable(error)}")


def at_least_one(text):
    """argparse type: an int of at least 1, else argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def probability(text):
    """argparse type: a number in [0, 1], else argparse's one-line error (nan is none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value <= 1:  # false for nan too
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text}")
    return value


def save_path_problem(path):
    """Why the figure cannot be saved to `path` (a message naming it), or "" when it can."""
    problem = output_problem(path, "--save")
    if problem:
        return problem
    from matplotlib.figure import Figure  # here: only --save pays for importing it

    extension, formats = os.path.splitext(path)[1].lower().lstrip("."), Figure().canvas.get_supported_filetypes()
    if extension not in formats:
        what = f"unknown extension .{extension}" if extension else "no extension"
        return f"--save {path}: {what}; matplotlib writes {', '.join(sorted(formats))}"
    return ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Similarity of two images (1 = same class, 0 = different).")
    parser.add_argument("images", nargs="*", help="two image paths; none for the interactive loop; one with --gallery")
    add_predictor_args(parser)
    parser.add_argument("--gallery", default="",
                        help="rank this folder's images (and class subfolders) by similarity to one query image")
    parser.add_argument("--top", type=at_least_one, default=5, help="how many gallery matches to print (1 or more)")
    parser.add_argument("--save", default="",
                        help="write the figure (the two images side by side; with --gallery the query and its top "
                             "matches) to this file (.png, .pdf, .svg, ...) in an existing folder")
    parser.add_argument("--show", type=parse_bool, default=None, metavar="True|False",
                        help="open a window with the figure (default: only in the interactive loop)")
    parser.add_argument("--pairs", default="",
                        help="score every pair this CSV lists (image_1,image_2[,label] per line; header optional)")
    parser.add_argument("--out", default="", help="with --pairs: the scores CSV (default: <pairs>_scores.csv)")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="a pair scoring at least this is called the same (default: the one recorded in the "
                             "weights' settings file, else 0.5)")
    args = parser.parse_args(argv)
    check_pairs_args(parser, args)
    if args.gallery and len(args.images) != 1:
        parser.error(f"--gallery takes one query image, not {len(args.images)}")
    if not args.gallery and len(args.images) not in (0, 2):
        parser.error(f"give two image paths or none, not {len(args.images)}")
    problem = args.save and save_path_problem(args.save)
    if problem:
        parser.error(printable(problem))
    check_predictor_args(parser, args)
    return args


def check_pairs_args(parser, args):
    """End with argparse's error when --pairs meets what scores one pair, or --out comes without --pairs."""
    if not args.pairs:
        if args.out:
            parser.error("--out goes with --pairs")
        return
    clashes = [name for name, given in (("image paths", args.images), ("--gallery", args.gallery),
                                        ("--save", args.save), ("--show", args.show)) if given]
    if clashes:
        parser.error(f"--pairs scores the pairs its file lists; it takes no {' or '.join(clashes)}")
    args.out = args.out or f"{os.path.splitext(args.pairs)[0]}_scores.csv"


def warn_unreadable(pairs_path, pairs, unreadable, out):
    """One stderr line per unreadable image (the first MAX_WARNINGS): the CSV line first using it and the problem."""
    first, second = (torch.frombuffer(images, dtype=torch.int64) for images in (pairs.first, pairs.second))
    for count, (image, message) in enumerate(unreadable.items()):
        if count == MAX_WARNINGS:
            print(f"warning: {len(unreadable) - count} more unreadable images; see the error column of "
                  f"{printable(out)}", file=sys.stderr)
            return
        lines = int(((first == image) | (second == image)).sum())
        print(f"warning: {printable(pairs_path)}:{pairs.first_lines[image]}: {printable(message)} ({lines} line(s) "
              f"not scored)", file=sys.stderr)


def report_labels(scores, labels, threshold):
    """Print ROC AUC and the accuracy at `threshold` of the scored labelled pairs (`scores` a tensor, NaN where not
    scored; `labels` 0/1 per pair)."""
    labels = torch.frombuffer(labels, dtype=torch.int8)
    scored = ~scores.isnan()
    if not scored.any():
        print("no labelled pair could be scored")
        return
    values, truth = scores[scored].numpy(), labels[scored].numpy()
    auc, accuracy = roc_auc(values, truth), metrics_at(values, truth, threshold)["accuracy"]
    auc_text = f"ROC AUC {auc:.4f}" if auc == auc else "ROC AUC undefined (needs both labels)"  # NaN != NaN
    left_out = f"; {len(labels) - len(values)} with unreadable images left out" if len(values) < len(labels) else ""
    print(f"{auc_text}, accuracy {accuracy:.4f} at threshold {threshold:g} on {len(values)} labelled pairs "
          f"({int(truth.sum())} same){left_out}")


def score_pairs_file(model, pairs_path, pairs, out):
    """Score every pair of a read pairs CSV (a PairList), write the scores CSV atomically, row by row, and print the
    summary."""
    scores, unreadable, embedded = score_path_pairs(model, pairs)
    warn_unreadable(pairs_path, pairs, unreadable, out)
    with atomic_file(out, "w", encoding="utf-8", newline="") as file:
        write_scores_csv(file, pairs_path, pairs, scores, unreadable, model.threshold)
    not_scored = int(scores.isnan().sum())
    print(f"{len(pairs)} pairs over {embedded + len(unreadable)} distinct images: embedded {embedded}, "
          f"{len(unreadable)} unreadable, {not_scored} pair(s) not scored; wrote {printable(out)}")
    if pairs.width == 3:
        report_labels(scores, pairs.labels, model.threshold)


def ask_image(prompt):
    """Ask for a path until it opens as an image; returns (path, PIL image) or None at end of input."""
    while True:
        try:
            path = input(prompt).strip().strip("'\"")
        except EOFError:
            return None
        try:
            return path, open_image(path)
        except ImageError as e:
            print(f"Open Error! {printable(e)}. Try again!")


def search_gallery(model, gallery, query, top, save_path=None, show=False):
    """Print the gallery's best-matching images and classes for `query`; draw them when `save_path` or `show`."""
    try:
        query_image = open_image(query)
        images, classes = rank_gallery(model, gallery, query_image, top)
        if save_path or show:
            from utils.figures import draw_matches

            matches = [(score, open_image(os.path.join(gallery, name)), name) for score, name in images]
            draw_matches(query_image, query, matches, model.threshold, save_path, show)
    except (ImageError, DataError, SaveError) as e:
        raise failure(e) from None
    print(f"Top {len(images)} images in {printable(gallery)} for {printable(query)}:")
    for score, name in images:
        print(f"  {score:.4f}  {printable(os.path.join(gallery, name))}")
    if classes:
        print(f"Top {len(classes)} classes (best image score):")
        for score, cls, name in classes:
            print(f"  {score:.4f}  {printable(cls)}  ({printable(os.path.basename(name))})")


def load_predictor(args):
    """The predictor the arguments name; ends with a one-line error when its weights cannot be used. Says on
    stderr when the input size is assumed, not known from the weights."""
    try:
        model = predictor_from_args(args, verbose=not (args.images or args.pairs), threshold=args.threshold)
    except WeightsError as e:
        hint = ("" if os.path.exists(args.model_path)
                else "; train first and pass --model_path logs/best_epoch_weights.pth")
        raise failure(f"{e}{hint}") from None
    note = assumed_size_note(model)
    if note:
        print(printable(note), file=sys.stderr)
    return model


def verdict(model, probability):
    """"same (threshold 0.500 from W.json)": the verdict on a similarity, and the threshold that gave it."""
    value, source = model.settings["threshold"]
    where = {"given": "given", "default": "default"}.get(source, source)
    return f"{model.verdict(probability)} (threshold {value:.3f}, {printable(where)})"


def main(argv=None):
    """The command line (`argv`, default sys.argv): Ctrl-C or SIGTERM ends it at once, a write half done deleted."""
    args = parse_args(argv)
    with exit_on_interrupt(""):  # Ctrl-C ends the loop like Ctrl-D
        return run_command(args)


def run_command(args):
    """What the parsed arguments ask for: a pairs CSV, a gallery search, two images or the interactive loop."""
    if args.pairs:
        return run_pairs(args)
    model = load_predictor(args)
    if args.gallery:
        return search_gallery(model, args.gallery, args.images[0], args.top, args.save or None, bool(args.show))
    if args.images:
        try:
            image_1, image_2 = (open_image(path) for path in args.images)
        except ImageError as e:
            raise failure(e) from None
        probability = detect(model, image_1, image_2, bool(args.show), args.save or None)
        print(f"{probability:.4f} {verdict(model, probability)}")
        return
    show = args.show is not False
    while True:
        first = ask_image("Input image_1 filename:")
        second = first and ask_image("Input image_2 filename:")
        if not second:
            print()
            return
        probability = detect(model, first[1], second[1], show, args.save or None)
        print(f"Similarity of {printable(os.path.basename(first[0]))} and {printable(os.path.basename(second[0]))}: "
              f"{probability:.4f} {verdict(model, probability)}")


def detect(model, image_1, image_2, show, save_path):
    """The similarity of two PIL images, drawn as asked; a figure that cannot be saved ends in one line."""
    try:
        return model.detect_image(image_1, image_2, show=show, save_path=save_path)
    except SaveError as e:
        raise failure(e) from None


def run_pairs(args):
    """--pairs: the CSV and --out are checked before the weights load, so that mistakes show in a second."""
    try:
        pairs = read_pairs(args.pairs)
    except DataError as e:
        raise failure(e) from None
    same = os.path.exists(args.out) and os.path.samefile(args.out, args.pairs)
    problem = f"--out {args.out}: is the pairs file itself; name another file" if same else \
        output_problem(args.out, "--out")
    if problem:
        raise failure(problem)
    remove_stale_temporaries(os.path.dirname(write_target(args.out)[0]))  # what killed runs left beside --out
    try:
        return score_pairs_file(load_predictor(args), args.pairs, pairs, args.out)
    except (DataError, SaveError) as e:
        raise failure(e) from None


if __name__ == "__main__":
    sys.exit(main())

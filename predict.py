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

from siamese import add_predictor_args, assumed_size_note, check_predictor_args, predictor_from_args
from utils.configurator import parse_bool
from utils.errors import DataError, ImageError, SaveError, WeightsError
from utils.files import atomic_write, output_problem
from utils.gallery import rank_gallery
from utils.images import open_image
from utils.metrics import metrics_at, roc_auc
from utils.pairs import read_pairs, resolve_pairs, score_path_pairs, scores_csv

MAX_WARNINGS = 10  # unreadable images named on stderr; the rest only in the output's error column


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
        parser.error(problem)
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


def warn_unreadable(pairs_path, rows, pairs, unreadable, out):
    """One stderr line per unreadable image (the first MAX_WARNINGS): the CSV line first using it and the problem."""
    for count, (path, message) in enumerate(unreadable.items()):
        if count == MAX_WARNINGS:
            print(f"warning: {len(unreadable) - count} more unreadable images; see the error column of {out}",
                  file=sys.stderr)
            return
        lines = [number for (number, _), pair in zip(rows, pairs) if path in pair]
        print(f"warning: {pairs_path}:{lines[0]}: {message} ({len(lines)} line(s) not scored)", file=sys.stderr)


def report_labels(scores, labels, threshold):
    """Print ROC AUC and the accuracy at `threshold` of the scored labelled pairs."""
    scored = [(score, int(label)) for score, label in zip(scores, labels) if score is not None]
    if not scored:
        print("no labelled pair could be scored")
        return
    values, truth = zip(*scored)
    auc, accuracy = roc_auc(values, truth), metrics_at(values, truth, threshold)["accuracy"]
    auc_text = f"ROC AUC {auc:.4f}" if auc == auc else "ROC AUC undefined (needs both labels)"  # NaN != NaN
    left_out = f"; {len(labels) - len(scored)} with unreadable images left out" if len(scored) < len(labels) else ""
    print(f"{auc_text}, accuracy {accuracy:.4f} at threshold {threshold:g} on {len(scored)} labelled pairs "
          f"({sum(truth)} same){left_out}")


def score_pairs_file(model, pairs_path, header, rows, out):
    """Score every pair of a read pairs CSV, write the scores CSV atomically and print the summary."""
    pairs = resolve_pairs(pairs_path, rows)
    scores, unreadable, embedded = score_path_pairs(model, pairs)
    warn_unreadable(pairs_path, rows, pairs, unreadable, out)
    atomic_write(scores_csv(header, rows, scores, pairs, unreadable, model.threshold).encode("utf-8"), out)
    print(f"{len(pairs)} pairs over {embedded + len(unreadable)} distinct images: embedded {embedded}, "
          f"{len(unreadable)} unreadable, {scores.count(None)} pair(s) not scored; wrote {out}")
    if len(rows[0][1]) == 3:
        report_labels(scores, [fields[2] for _, fields in rows], model.threshold)


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
            print(f"Open Error! {e}. Try again!")


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
        raise SystemExit(f"error: {e}")
    print(f"Top {len(images)} images in {gallery} for {query}:")
    for score, name in images:
        print(f"  {score:.4f}  {os.path.join(gallery, name)}")
    if classes:
        print(f"Top {len(classes)} classes (best image score):")
        for score, cls, name in classes:
            print(f"  {score:.4f}  {cls}  ({os.path.basename(name)})")


def load_predictor(args):
    """The predictor the arguments name; ends with a one-line error when its weights cannot be used. Says on
    stderr when the input size is assumed, not known from the weights."""
    try:
        model = predictor_from_args(args, verbose=not (args.images or args.pairs), threshold=args.threshold)
    except WeightsError as e:
        hint = ("" if os.path.exists(args.model_path)
                else "; train first and pass --model_path logs/best_epoch_weights.pth")
        raise SystemExit(f"error: {e}{hint}")
    note = assumed_size_note(model)
    if note:
        print(note, file=sys.stderr)
    return model


def verdict(model, probability):
    """"same (threshold 0.620 from W.json)": the verdict on a similarity, and the threshold that gave it."""
    value, source = model.settings["threshold"]
    where = {"given": "given", "default": "default"}.get(source, source)
    return f"{model.verdict(probability)} (threshold {value:.3f}, {where})"


def main(argv=None):
    args = parse_args(argv)
    if args.pairs:  # the CSV and --out are checked before the weights load: mistakes show in a second
        try:
            header, rows = read_pairs(args.pairs)
        except DataError as e:
            raise SystemExit(f"error: {e}")
        same = os.path.exists(args.out) and os.path.samefile(args.out, args.pairs)
        problem = f"--out {args.out}: is the pairs file itself; name another file" if same else \
            output_problem(args.out, "--out")
        if problem:
            raise SystemExit(f"error: {problem}")
        try:
            return score_pairs_file(load_predictor(args), args.pairs, header, rows, args.out)
        except SaveError as e:
            raise SystemExit(f"error: {e}")
    model = load_predictor(args)
    if args.gallery:
        return search_gallery(model, args.gallery, args.images[0], args.top, args.save or None, bool(args.show))
    if args.images:
        try:
            image_1, image_2 = (open_image(path) for path in args.images)
        except ImageError as e:
            raise SystemExit(f"error: {e}")
        probability = model.detect_image(image_1, image_2, show=bool(args.show), save_path=args.save or None)
        print(f"{probability:.4f} {verdict(model, probability)}")
        return
    show = args.show is not False
    while True:
        first = ask_image("Input image_1 filename:")
        second = first and ask_image("Input image_2 filename:")
        if not second:
            print()
            return
        save_path = args.save or None
        probability = model.detect_image(first[1], second[1], show=show, save_path=save_path)
        print(f"Similarity of {os.path.basename(first[0])} and {os.path.basename(second[0])}: {probability:.4f} "
              f"{verdict(model, probability)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C ends the loop like Ctrl-D, without a traceback
        print()
        sys.exit(130)

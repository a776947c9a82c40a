"""Score how similar two images are with trained weights.

    python predict.py                       # asks for two image paths, again and again
    python predict.py A.png B.png           # prints the probability and exits
    python predict.py A.png B.png --save out.png --model_path logs/best_epoch_weights.pth --input_shape 105 105
    python predict.py --gallery DIR QUERY.png --top 5   # rank DIR's images and classes by similarity
"""
import argparse
import os
import sys

from siamese import add_predictor_args, check_predictor_args, predictor_from_args
from utils.config import parse_bool
from utils.errors import DataError, ImageError, WeightsError
from utils.gallery import rank_gallery
from utils.images import open_image


def at_least_one(text):
    """argparse type: an int of at least 1, else argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def save_path_problem(path):
    """Why the figure cannot be saved to `path` (a message naming it), or "" when it can."""
    if os.path.isdir(path):
        return f"--save {path}: is a directory; name a file in it, such as {os.path.join(path, 'pair.png')}"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--save {path}: no such folder {folder}"
    from matplotlib.figure import Figure  # here: only --save pays for importing it

    extension, formats = os.path.splitext(path)[1].lower().lstrip("."), Figure().canvas.get_supported_filetypes()
    if extension not in formats:
        what = f"unknown extension .{extension}" if extension else "no extension"
        return f"--save {path}: {what}; matplotlib writes {', '.join(sorted(formats))}"
    if not os.access(folder, os.W_OK):
        return f"--save {path}: folder {folder} is not writable"
    return ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Similarity of two images (1 = same class, 0 = different).")
    parser.add_argument("images", nargs="*", help="two image paths; none for the interactive loop; one with --gallery")
    add_predictor_args(parser)
    parser.add_argument("--gallery", default="",
                        help="rank this folder's images (and class subfolders) by similarity to one query image")
    parser.add_argument("--top", type=at_least_one, default=5, help="how many gallery matches to print (1 or more)")
    parser.add_argument("--save", default="",
                        help="write the side-by-side figure to this file (.png, .pdf, .svg, ...) in an existing folder")
    parser.add_argument("--show", type=parse_bool, default=None, metavar="True|False",
                        help="open a window with the figure (default: only in the interactive loop)")
    args = parser.parse_args(argv)
    if args.gallery and len(args.images) != 1:
        parser.error(f"--gallery takes one query image, not {len(args.images)}")
    if not args.gallery and len(args.images) not in (0, 2):
        parser.error(f"give two image paths or none, not {len(args.images)}")
    problem = args.save and save_path_problem(args.save)
    if problem:
        parser.error(problem)
    check_predictor_args(parser, args)
    return args


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


def search_gallery(model, gallery, query, top):
    """Print the gallery's best-matching images and classes for `query`."""
    try:
        images, classes = rank_gallery(model, gallery, open_image(query), top)
    except (ImageError, DataError) as e:
        raise SystemExit(f"error: {e}")
    print(f"Top {len(images)} images in {gallery} for {query}:")
    for score, name in images:
        print(f"  {score:.4f}  {os.path.join(gallery, name)}")
    if classes:
        print(f"Top {len(classes)} classes (best image score):")
        for score, cls, name in classes:
            print(f"  {score:.4f}  {cls}  ({os.path.basename(name)})")


def main(argv=None):
    args = parse_args(argv)
    try:
        model = predictor_from_args(args, verbose=not args.images)
    except WeightsError as e:
        hint = ("" if os.path.exists(args.model_path)
                else "; train first and pass --model_path logs/best_epoch_weights.pth")
        raise SystemExit(f"error: {e}{hint}")
    if args.gallery:
        return search_gallery(model, args.gallery, args.images[0], args.top)
    if args.images:
        try:
            image_1, image_2 = (open_image(path) for path in args.images)
        except ImageError as e:
            raise SystemExit(f"error: {e}")
        show = bool(args.show)
        print(f"{model.detect_image(image_1, image_2, show=show, save_path=args.save or None):.4f}")
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
        print(f"Similarity of {os.path.basename(first[0])} and {os.path.basename(second[0])}: {probability:.4f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C ends the loop like Ctrl-D, without a traceback
        print()
        sys.exit(130)

"""Score how similar two images are with trained weights.

    python predict.py                       # asks for two image paths, again and again
    python predict.py A.png B.png           # prints the probability and exits
    python predict.py A.png B.png --save out.png --model_path logs/best_epoch_weights.pth --input_shape 105 105
"""
import argparse
import os
import sys

from siamese import Siamese
from utils.checkpoint import WeightsError
from utils.config import parse_bool
from utils.utils import ImageError, open_image


def parse_args(argv=None):
    defaults = Siamese._defaults
    parser = argparse.ArgumentParser(description="Similarity of two images (1 = same class, 0 = different).")
    parser.add_argument("images", nargs="*", help="two image paths; none for the interactive loop")
    parser.add_argument("--model_path", default=defaults["model_path"], help="trained Siamese weights (.pth)")
    parser.add_argument("--input_shape", type=int, nargs=2, default=defaults["input_shape"], metavar=("H", "W"),
                        help="the input size the weights were trained at")
    parser.add_argument("--letterbox_image", type=parse_bool, default=defaults["letterbox_image"], metavar="True|False",
                        help="keep aspect ratio with grey padding instead of resize + centre crop")
    parser.add_argument("--cuda", type=parse_bool, default=defaults["cuda"], metavar="True|False")
    parser.add_argument("--save", default="", help="write the side-by-side figure to this PNG")
    parser.add_argument("--show", type=parse_bool, default=None, metavar="True|False",
                        help="open a window with the figure (default: only in the interactive loop)")
    args = parser.parse_args(argv)
    if len(args.images) not in (0, 2):
        parser.error(f"give two image paths or none, not {len(args.images)}")
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


def main(argv=None):
    args = parse_args(argv)
    try:
        model = Siamese(model_path=args.model_path, input_shape=args.input_shape,
                        letterbox_image=args.letterbox_image, cuda=args.cuda, verbose=not args.images)
    except WeightsError as e:
        hint = "" if os.path.exists(args.model_path) else "; train first and pass --model_path logs/best_epoch_weights.pth"
        raise SystemExit(f"error: {e}{hint}")
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
    sys.exit(main())

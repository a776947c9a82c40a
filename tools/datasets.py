"""Datasets the project makes or fetches, written in the Omniglot layout.

    python -m tools.datasets glyphs [--out dataset]              # embedded glyph set, offline, seconds
    python -m tools.datasets omniglot [--out dataset]            # downloads the official Omniglot zips
    python -m tools.datasets omniglot --from DIR --zips images_background_small1

Both write `<out>/images_background/<alphabet>/<character>/<image>.png` and `<out>/images_evaluation/...`.
"""
import argparse
import sys
from pathlib import Path

from tools.glyphs import DRAWERS, MAX_CHARACTERS, make_glyphs
from tools.omniglot import OMNIGLOT_URL, OMNIGLOT_ZIPS, get_omniglot
from utils.errors import DataError, printable
from utils.interrupts import exit_on_interrupt

OUT_HELP = "folder to fill with images_background/ and images_evaluation/"

def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.datasets",
                                     description="Make or fetch a dataset in the Omniglot layout.")
    commands = parser.add_subparsers(dest="command", required=True)
    glyphs = commands.add_parser("glyphs", help="write the embedded glyph set (offline, a few seconds)")
    glyphs.add_argument("--out", default="dataset", help=OUT_HELP)
    glyphs.add_argument("--seed", type=int, default=0)
    glyphs.add_argument("--max_characters", type=int, default=MAX_CHARACTERS, help="characters per alphabet at most")
    omniglot = commands.add_parser("omniglot", help="download (or take local) official Omniglot zips and unpack them")
    omniglot.add_argument("--out", default="dataset", help=OUT_HELP)
    omniglot.add_argument("--from", dest="source", default=None, metavar="DIR",
                          help="take the zips from DIR instead of downloading")
    omniglot.add_argument("--zips", nargs="+", choices=list(OMNIGLOT_ZIPS),
                          default=["images_background", "images_evaluation"],
                          help="which official zips to use (the _small1/_small2 minimal splits fill images_background)")
    omniglot.add_argument("--url", default=OMNIGLOT_URL,
                          help="where the zips are downloaded from (any http(s):// or file:// folder)")
    args = parser.parse_args(argv)
    if args.command == "glyphs" and args.max_characters < 1:
        parser.error(f"--max_characters {args.max_characters}: each alphabet needs at least 1 character")
    return args


def main(argv=None):
    """The command line (`argv`, default sys.argv); a problem, Ctrl-C or SIGTERM ends it in one line, the folders
    being filled left as they were."""
    args = parse_args(argv)
    with exit_on_interrupt(f"interrupted; {args.out} left as it was"):
        try:
            if args.command == "glyphs":
                splits = make_glyphs(args.out, args.seed, args.max_characters)
                for split, characters in splits.items():
                    print(f"{printable(Path(args.out) / split)}: {len(characters)} alphabets, "
                          f"{sum(map(len, characters.values()))} characters x {DRAWERS} drawings "
                          f"({', '.join(characters)})")
            else:
                for folder, alphabets, characters, images in get_omniglot(args.out, args.zips, args.source,
                                                                          args.url):
                    print(f"{printable(folder)}: +{alphabets} alphabets, {characters} characters, {images} images")
        except DataError as e:
            raise SystemExit(f"error: {printable(e)}") from None


if __name__ == "__main__":
    sys.exit(main())

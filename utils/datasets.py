"""Datasets the project makes or fetches, written in the Omniglot layout.

    python -m utils.datasets glyphs [--out dataset]              # embedded glyph set, offline, seconds
    python -m utils.datasets omniglot [--out dataset]            # downloads the official Omniglot zips
    python -m utils.datasets omniglot --from DIR --zips images_background_small1

Both write `<out>/images_background/<alphabet>/<character>/<image>.png` and `<out>/images_evaluation/...`.
"""
import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from utils.dataloader import DataError

GLYPH_SIZE = 105  # Omniglot's image side
DRAWERS = 20  # drawings per character, as in Omniglot
SOURCE_SCALE = 2  # glyphs are rendered this many times larger, then warped down to GLYPH_SIZE
EM_SIZE = 72  # font size in output pixels: capitals fill about 60% of the image
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
)
# (script, first code point, last code point); characters no shipped font draws are left out
BACKGROUND_SCRIPTS = (
    ("Latin", 0x41, 0x5A),
    ("Greek", 0x3B1, 0x3C9),
    ("Cyrillic", 0x410, 0x42F),
    ("Armenian", 0x531, 0x556),
    ("Georgian", 0x10D0, 0x10F0),
    ("Canadian_Aboriginal_Syllabics", 0x1401, 0x1676),
    ("Tifinagh", 0x2D30, 0x2D65),
)
EVALUATION_SCRIPTS = (
    ("Hebrew", 0x5D0, 0x5EA),
    ("Arabic", 0x621, 0x63A),
    ("NKo", 0x7CA, 0x7EA),
    ("Ogham", 0x1681, 0x169A),
    ("Lao", 0xE81, 0xEAE),
)
MAX_CHARACTERS = 32  # per alphabet; larger scripts are sampled evenly
DUPLICATE_IOU = 0.8  # a glyph overlapping an earlier one this much (e.g. Latin A, Cyrillic А) is left out

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# zip name -> (folder it fills, alphabets, characters); every character has 20 drawings
OMNIGLOT_ZIPS = {
    "images_background": ("images_background", 30, 964),
    "images_evaluation": ("images_evaluation", 20, 659),
    "images_background_small1": ("images_background", 5, 136),
    "images_background_small2": ("images_background", 5, 156),
}


@lru_cache(maxsize=None)
def font_charmap(font_file):
    """Code points the font at FONT_DIR/font_file draws."""
    return frozenset(FT2Font(str(FONT_DIR / font_file)).get_charmap())


@lru_cache(maxsize=None)
def load_font(font_file, size):
    return ImageFont.truetype(str(FONT_DIR / font_file), size)


def fonts_for(char):
    """The shipped fonts that have a glyph for `char` (DejaVu first)."""
    return [f for f in FONT_FILES if ord(char) in font_charmap(f)]


def render_ink(char, font_file, size, margin=8):
    """`char` drawn white on black in its tight box plus `margin` pixels: (H, W) float32 tensor in [0, 1]."""
    font = load_font(font_file, size)
    left, top, right, bottom = font.getbbox(char)
    image = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
    ImageDraw.Draw(image).text((margin - left, margin - top), char, fill=255, font=font)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def pad_to(ink, height, width):
    """Centre a (H, W) ink tensor on a (height, width) black canvas."""
    top, left = (height - ink.shape[0]) // 2, (width - ink.shape[1]) // 2
    return F.pad(ink, (left, width - ink.shape[1] - left, top, height - ink.shape[0] - top))


def change_stroke(ink, pixels):
    """Thicken strokes by `pixels` on each side (a max filter), or thin them by -`pixels` (a min filter)."""
    if pixels == 0:
        return ink
    sign, r = (1, pixels) if pixels > 0 else (-1, -pixels)
    rows = F.max_pool2d(sign * ink[None], (2 * r + 1, 1), stride=1, padding=(r, 0))  # separable square filter
    return sign * F.max_pool2d(rows, (1, 2 * r + 1), stride=1, padding=(0, r))[0]


def canonical_mask(char):
    """A small binary picture of `char` in its first font, for spotting look-alike characters."""
    ink = pad_to(render_ink(char, fonts_for(char)[0], EM_SIZE, margin=0), 128, 128)
    return (F.adaptive_avg_pool2d(ink[None, None], 32)[0, 0] > 0.25).numpy()


def pick_characters(scripts, max_characters=MAX_CHARACTERS, seen=None):
    """{script: [characters]}: drawable, not look-alikes of a character picked before, evenly sampled.

    `seen` (a list of canonical masks) carries over between calls so evaluation scripts avoid
    shapes already used for training.
    """
    seen = [] if seen is None else seen
    picked = {}
    for script, first, last in scripts:
        chars = []
        for code in range(first, last + 1):
            char = chr(code)
            if not fonts_for(char):
                continue
            mask = canonical_mask(char)
            if not mask.any():
                continue
            if seen:
                others = np.stack(seen)
                iou = (others & mask).sum((1, 2)) / (others | mask).sum((1, 2))
                if iou.max() > DUPLICATE_IOU:
                    continue
            seen.append(mask)
            chars.append(char)
        if len(chars) > max_characters:
            chars = [chars[i] for i in np.linspace(0, len(chars) - 1, max_characters).round().astype(int)]
        picked[script] = chars
    return picked


@lru_cache(maxsize=None)
def upsampling_matrix(size, out):
    """(out, size) matrix that upsamples a length-`size` signal to `out` samples (bicubic, corners aligned)."""
    identity = torch.eye(size)[:, None, :, None]  # one impulse per row, as (size, 1, size, 1) images
    return F.interpolate(identity, size=(out, 1), mode="bicubic", align_corners=True)[:, 0, :, 0].T.contiguous()


@lru_cache(maxsize=None)
def pixel_grid(out):
    """(out, out, 2) pixel coordinates (x, y) measured from the image centre."""
    ys, xs = torch.meshgrid(torch.arange(out, dtype=torch.float32), torch.arange(out, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys], -1) - (out - 1) / 2


def warp_grids(rng, count, source_shape):
    """`count` sampling grids for grid_sample, from output pixels to a rendered glyph of `source_shape`:
    a random affine map (scale, rotation, shear, shift) plus a smooth elastic displacement."""
    out = GLYPH_SIZE
    scale, angle = rng.uniform(0.8, 1.15, count), np.deg2rad(rng.uniform(-12, 12, count))
    shear, shift = rng.uniform(-0.25, 0.25, count), rng.uniform(-6, 6, (count, 2))
    cos, sin, one, zero = np.cos(angle), np.sin(angle), np.ones(count), np.zeros(count)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.stack([np.stack([one, shear], -1), np.stack([zero, one], -1)], -2)
    inverse = torch.tensor(np.linalg.inv(scale[:, None, None] * rotation @ shearing), dtype=torch.float32)  # output -> glyph
    coarse = torch.tensor(rng.normal(0, 1.6, (count, 4, 4, 2)), dtype=torch.float32)
    smooth = upsampling_matrix(4, out)
    jitter = torch.einsum("yi,nijc,xj->nyxc", smooth, coarse, smooth)  # bicubic upsampling of a 4x4 field
    points = pixel_grid(out) - torch.tensor(shift, dtype=torch.float32)[:, None, None] + jitter
    source = torch.einsum("nhwj,nij->nhwi", points, inverse) * SOURCE_SCALE  # pixels from the glyph's centre
    height, width = source_shape
    return source / torch.tensor([width / 2, height / 2])  # grid_sample's [-1, 1] (align_corners=False)


def draw_character(char, rng, drawers=DRAWERS):
    """`drawers` 105x105 drawings of `char`, each with its own font, stroke width and warp: (drawers, 105, 105) bool ink."""
    fonts = fonts_for(char)
    picks, strokes = rng.integers(len(fonts), size=drawers), rng.integers(-1, 4, size=drawers)
    rendered = {i: render_ink(char, fonts[i], EM_SIZE * SOURCE_SCALE) for i in sorted(set(picks))}
    height = max(ink.shape[0] for ink in rendered.values())
    width = max(ink.shape[1] for ink in rendered.values())
    variants = {(i, s): change_stroke(pad_to(rendered[i], height, width), s) for i, s in sorted(set(zip(picks, strokes.tolist())))}
    sources = torch.stack([variants[i, s] for i, s in zip(picks, strokes.tolist())])
    ink = F.grid_sample(sources[:, None], warp_grids(rng, drawers, (height, width)), align_corners=False)
    return (ink[:, 0] > 0.5).numpy()


def write_alphabets(target, characters, seed, split_index, first_id=1):
    """Draw every character of {script: [characters]} into target/<script>/characterNN/<id>_<drawer>.png.

    Returns the next free character id (ids run across alphabets, as Omniglot's file names do).
    """
    char_id = first_id
    for script_index, (script, chars) in enumerate(characters.items()):
        for char_index, char in enumerate(chars):
            rng = np.random.default_rng([seed, split_index, script_index, char_index])
            folder = target / script / f"character{char_index + 1:02d}"
            folder.mkdir(parents=True)
            for drawer, ink in enumerate(draw_character(char, rng), start=1):
                Image.fromarray(~ink).save(folder / f"{char_id:04d}_{drawer:02d}.png")  # mode "1": black ink on white
            char_id += 1
    return char_id


def make_glyphs(out="dataset", seed=0, max_characters=MAX_CHARACTERS):
    """Write the embedded glyph set to `out`/images_background (training scripts) and images_evaluation
    (other scripts), Omniglot's layout, 20 drawings per character, the same for the same seed.

    The set is built in a temporary folder and moved into place, so a partial set never appears.
    Raises DataError when either folder already exists. Returns {split: {script: [characters]}}.
    """
    out = Path(out)
    targets = [out / "images_background", out / "images_evaluation"]
    for target in targets:
        if target.exists():
            raise DataError(f"{target} already exists; remove it or pick another --out")
    seen = []
    splits = {
        "images_background": pick_characters(BACKGROUND_SCRIPTS, max_characters, seen),
        "images_evaluation": pick_characters(EVALUATION_SCRIPTS, max_characters, seen),
    }
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: threads only add overhead, a lot of it on a busy machine
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".glyphs-") as tmp:
            char_id = 1
            for split_index, (split, characters) in enumerate(splits.items()):
                char_id = write_alphabets(Path(tmp) / split, characters, seed, split_index, char_id)
            for target in targets:
                os.replace(Path(tmp) / target.name, target)
    finally:
        torch.set_num_threads(threads)
    return splits


def download(url, path):
    """Fetch `url` (http(s) or file://) to `path` with a progress bar; a partial file never keeps the final name."""
    partial = Path(str(path) + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(path).name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:  # URLError, HTTPError and socket timeouts are all OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {e}") from None
    os.replace(partial, path)
    return Path(path)


def verify_omniglot_zip(path, name):
    """Check that `path` is an intact zip (CRCs) holding `name`/<alphabet>/<character>/<image>.png with the
    alphabet and character counts the official `name`.zip has; raises DataError naming the file and the problem."""
    _, alphabets_expected, characters_expected = OMNIGLOT_ZIPS[name]
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip ({e})") from None
    if broken:
        raise DataError(f"{path}: corrupt member {broken} (CRC mismatch)")
    files = [n for n in names if not n.endswith("/")]
    parts = [n.split("/") for n in files]
    bad = [n for n, p in zip(files, parts) if len(p) != 4 or p[0] != name or ".." in p or not n.endswith(".png")]
    if bad or not files:
        raise DataError(f"{path}: expected only {name}/<alphabet>/<character>/<image>.png, found {bad[0] if bad else 'no files'}")
    alphabets, characters = {p[1] for p in parts}, {(p[1], p[2]) for p in parts}
    if (len(alphabets), len(characters)) != (alphabets_expected, characters_expected):
        raise DataError(
            f"{path}: {len(alphabets)} alphabets and {len(characters)} characters, expected "
            f"{alphabets_expected} and {characters_expected} for {name}.zip"
        )
    return len(alphabets), len(characters), len(files)


def unpack_omniglot_zip(path, name, out):
    """Unzip `name`.zip at `path` into `out`/<images_background|images_evaluation>/<alphabet>/<character>/.

    Character folders already there are replaced. Returns the folder filled."""
    target = Path(out) / OMNIGLOT_ZIPS[name][0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".unzip-") as tmp:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        for alphabet in sorted((Path(tmp) / name).iterdir()):
            for character in sorted(alphabet.iterdir()):
                dest = target / alphabet.name / character.name
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(exist_ok=True)
                os.replace(character, dest)
    return target


def get_omniglot(out="dataset", zips=("images_background", "images_evaluation"), source=None, url=OMNIGLOT_URL):
    """Fetch (or take from the folder `source`), verify and unpack the named Omniglot zips into `out`.

    Downloads from `url` + name + ".zip" into `out` first (kept there, so a rerun skips the download).
    Returns [(folder filled, alphabets, characters, images)].
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for name in zips:
        if source is not None:
            path = Path(source) / f"{name}.zip"
            if not path.is_file():
                raise DataError(f"{path}: no such file (--from expects the official {name}.zip there)")
        else:
            path = out / f"{name}.zip"
            if not path.is_file():
                download(f"{url.rstrip('/')}/{name}.zip", path)
        try:
            counts = verify_omniglot_zip(path, name)
        except DataError:
            if source is None:  # a damaged download must not be trusted on the next run either
                path.unlink()
            raise
        done.append((unpack_omniglot_zip(path, name, out), *counts))
    return done


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.datasets", description="Make or fetch a dataset in the Omniglot layout.")
    commands = parser.add_subparsers(dest="command", required=True)
    glyphs = commands.add_parser("glyphs", help="write the embedded glyph set (offline, a few seconds)")
    glyphs.add_argument("--out", default="dataset", help="folder to fill with images_background/ and images_evaluation/")
    glyphs.add_argument("--seed", type=int, default=0)
    glyphs.add_argument("--max_characters", type=int, default=MAX_CHARACTERS, help="characters per alphabet at most")
    omniglot = commands.add_parser("omniglot", help="download (or take local) official Omniglot zips and unpack them")
    omniglot.add_argument("--out", default="dataset", help="folder to fill with images_background/ and images_evaluation/")
    omniglot.add_argument("--from", dest="source", default=None, metavar="DIR", help="take the zips from DIR instead of downloading")
    omniglot.add_argument("--zips", nargs="+", choices=list(OMNIGLOT_ZIPS), default=["images_background", "images_evaluation"],
                          help="which official zips to use (the _small1/_small2 minimal splits fill images_background)")
    omniglot.add_argument("--url", default=OMNIGLOT_URL, help="where the zips are downloaded from (any http(s):// or file:// folder)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "glyphs":
            splits = make_glyphs(args.out, args.seed, args.max_characters)
            for split, characters in splits.items():
                print(f"{Path(args.out) / split}: {len(characters)} alphabets, "
                      f"{sum(map(len, characters.values()))} characters x {DRAWERS} drawings "
                      f"({', '.join(characters)})")
        else:
            for folder, alphabets, characters, images in get_omniglot(args.out, args.zips, args.source, args.url):
                print(f"{folder}: +{alphabets} alphabets, {characters} characters, {images} images")
    except DataError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    sys.exit(main())

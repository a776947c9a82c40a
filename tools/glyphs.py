"""The embedded glyph set: characters of 12 scripts drawn from matplotlib's fonts, 20 warped drawings each,
written in Omniglot's layout so that everything runs offline.

    python -m tools.datasets glyphs [--out dataset]
"""
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

from utils.errors import DataError
from utils.interrupts import signals_held

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
    steps = torch.arange(out, dtype=torch.float32)
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
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
    # maps output pixels to glyph pixels
    inverse = torch.tensor(np.linalg.inv(scale[:, None, None] * rotation @ shearing), dtype=torch.float32)
    coarse = torch.tensor(rng.normal(0, 1.6, (count, 4, 4, 2)), dtype=torch.float32)
    smooth = upsampling_matrix(4, out)
    jitter = torch.einsum("yi,nijc,xj->nyxc", smooth, coarse, smooth)  # bicubic upsampling of a 4x4 field
    points = pixel_grid(out) - torch.tensor(shift, dtype=torch.float32)[:, None, None] + jitter
    source = torch.einsum("nhwj,nij->nhwi", points, inverse) * SOURCE_SCALE  # pixels from the glyph's centre
    height, width = source_shape
    return source / torch.tensor([width / 2, height / 2])  # grid_sample's [-1, 1] (align_corners=False)


def draw_character(char, rng, drawers=DRAWERS):
    """`drawers` 105x105 drawings of `char`, each with its own font, stroke width and warp.

    Returns (drawers, 105, 105) bool ink."""
    fonts = fonts_for(char)
    picks, strokes = rng.integers(len(fonts), size=drawers), rng.integers(-1, 4, size=drawers)
    rendered = {i: render_ink(char, fonts[i], EM_SIZE * SOURCE_SCALE) for i in sorted(set(picks))}
    height = max(ink.shape[0] for ink in rendered.values())
    width = max(ink.shape[1] for ink in rendered.values())
    variants = {(i, s): change_stroke(pad_to(rendered[i], height, width), s)
                for i, s in sorted(set(zip(picks, strokes.tolist())))}
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


def glyphs_present(dataset_path):
    """True when `dataset_path` holds both images_background/ and images_evaluation/."""
    return all(os.path.isdir(os.path.join(dataset_path, split)) for split in ("images_background", "images_evaluation"))


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
            with signals_held():  # both folders or neither: an interruption between them would block a rerun
                for target in targets:
                    os.replace(Path(tmp) / target.name, target)
    finally:
        torch.set_num_threads(threads)
    return splits


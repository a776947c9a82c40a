"""Image loading and preprocessing shared by training, prediction, evaluation and search."""
import contextlib
import os
import re
import struct

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from utils.errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GREY = 128  # fill value for letterbox padding and AutoAugment, as the original uses
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INTEGER_MODE = re.compile(r"I;(\d+)[BLN]?(S?)")  # Pillow's integer modes and raw modes: bits, byte order, signed


def is_image_file(name):
    """True for a visible file whose extension is a known image type."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def orientation(image):
    """The EXIF orientation (1 to 8) of a PIL image; 1 when it has none or its EXIF cannot be read."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (SyntaxError, ValueError, TypeError, OSError, struct.error):  # viewers show such files as stored
        return 1


def integer_white(array, mode, rawmode=""):
    """The sample value an integer image shows as white, from its bit depth: 65535 for unsigned and 32767
    for signed 16-bit samples (named by `mode`, or for "I" by the file's `rawmode`); "I" of unknown or
    32-bit depth counts as 8-bit when no value exceeds 255, else as 16-bit."""
    for name in (mode, rawmode):
        match = INTEGER_MODE.fullmatch(name or "")
        if match and int(match.group(1)) <= 16:
            return 2 ** (int(match.group(1)) - bool(match.group(2))) - 1
    return 255 if array.size == 0 or array.max() <= 255 else 65535


def float_to_uint8(array):
    """Float samples -> uint8: every value in [0, 1] is scaled by 255, any other range clipped to [0, 255]; NaN is 0."""
    known = array[~np.isnan(array)]
    scale = 255.0 if known.size == 0 or (known.min() >= 0 and known.max() <= 1) else 1.0
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)


def to_rgb(image, rawmode=""):
    """A PIL image of any mode (L, LA, P, RGB, RGBA, 1, I;16, I, F, ...) -> an RGB PIL image as a viewer shows it.

    The EXIF orientation is applied. Integer samples are scaled by their bit depth (`integer_white`:
    65535 for I;16, I;16B and I;16L; `rawmode`, the file's Pillow raw mode such as "I;16S", gives the
    depth of "I" images) and negative values become black, never wrap around. Float ("F") images
    with every value in [0, 1] are scaled by 255, other ranges clipped to [0, 255], NaN is black.
    Alpha is dropped. Returns `image` itself when it is RGB and upright.
    """
    if orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "F":
        image = Image.fromarray(float_to_uint8(np.asarray(image)), "L")
    elif image.mode.startswith("I"):
        array = np.asarray(image)
        scaled = array.astype(np.float32) * np.float32(255 / integer_white(array, image.mode, rawmode))
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


@contextlib.contextmanager
def image_errors(path):
    """Turn Pillow's errors while reading `path` into one ImageError naming the file."""
    try:
        yield
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large, refused as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def open_image(path):
    """Read `path` fully into an RGB PIL image; raises ImageError naming the file."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    with image_errors(path), Image.open(path) as image:
        rawmode = raw_mode(image)  # known only before loading: the tile list goes once decoded
        image.load()
        return to_rgb(image, rawmode)


def raw_mode(image):
    """The Pillow raw mode of an unloaded image's samples in its file (e.g. "I;16S"); "" when not known."""
    args = image.tile[0][3] if image.tile else ""
    return args if isinstance(args, str) else args[0] if args and isinstance(args[0], str) else ""


def verify_image(path):
    """Cheap check without decoding: the header (size within Pillow's limit) and, for PNG, every
    chunk's checksum, which catches truncated and corrupt PNGs; raises ImageError naming the file."""
    with image_errors(path), Image.open(path) as image:
        image.verify()


def png_chunk_types(data):
    """The chunk types (4 bytes each) of a PNG file's bytes, in order; a damaged chunk list just ends early."""
    types, offset = [], len(PNG_SIGNATURE)
    while offset + 8 <= len(data) and types[-1:] != [b"IEND"]:
        types.append(data[offset + 4:offset + 8])
        offset += int.from_bytes(data[offset:offset + 4], "big") + 12  # length, type, data, CRC
    return types


def decode_png(path):
    """An 8-bit PNG decoded by torchvision as uint8 (1 or 3, H, W); None otherwise.

    Grey stays one channel and alpha is dropped, as `to_rgb` does. Anything else (other formats,
    16-bit and palette PNGs, PNGs with EXIF, unreadable files) returns None so that PIL decodes it
    or names the problem.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
        # IHDR: bit depth at byte 24, colour type at 25 (3 = palette: torchvision would return the indices)
        if not data.startswith(PNG_SIGNATURE) or len(data) < 26 or data[24] > 8 or data[25] == 3:
            return None
        pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
        if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:  # PIL's decompression-bomb check speaks
            return None
        if b"eXIf" in png_chunk_types(data):  # torchvision ignores the orientation it may hold; PIL applies it
            return None
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except (OSError, RuntimeError, ValueError):
        return None
    if image.dtype != torch.uint8 or image.shape[0] not in (1, 2, 3, 4):
        return None
    return image[:1] if image.shape[0] == 2 else image[:3]


def load_image(path, keep_grey=False):
    """Read `path` into a (3, H, W) uint8 RGB tensor; raises ImageError naming the file.

    With `keep_grey`, greyscale PNGs stay (1, H, W): channel-wise augmentation then does a third
    of the work, and `expand(3, -1, -1)` gives the same RGB tensor afterwards.
    """
    image = decode_png(path)
    if image is None:
        return v2.functional.pil_to_tensor(open_image(path))
    return image if keep_grey or image.shape[0] == 3 else image.expand(3, -1, -1).contiguous()


def resize(image, size):
    """Antialiased resize of a uint8 (C, H, W) tensor to exactly `size` (h, w) -> uint8 (C, h, w)."""
    if min(image.shape[-2:]) > 1 and size[1] > 1:
        return v2.functional.resize(image, list(size), antialias=True)
    # torch's uint8 antialias kernel is wrong (or crashes) for output width 1 and strided length-1 sides
    plain = torch.empty(image.shape, dtype=torch.float32, device=image.device).copy_(image)
    return v2.functional.resize(plain, list(size), antialias=True).round_().clamp_(0, 255).to(torch.uint8)


def letterbox(image, size):
    """Resize a (3, H, W) uint8 tensor to fit (h, w) keeping its aspect ratio, grey padding around."""
    height, width = size
    _, ih, iw = image.shape
    scale = min(height / ih, width / iw)
    nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
    resized = resize(image, [nh, nw])
    top, left = (height - nh) // 2, (width - nw) // 2
    return v2.functional.pad(resized, [left, top, width - nw - left, height - nh - top], fill=GREY)


def centre_crop_resize(image, size):
    """Centre-crop a uint8 (C, H, W) tensor to the aspect ratio of `size` (h, w), then resize it -> uint8 (C, h, w).

    The region kept is the one that resizing the image to just cover (h, w) and centre cropping keeps
    (for a square target, resizing the shorter side). Cropping first keeps memory bounded by the
    source and the output: a 1 x 200,000 image is never resized to 32 x 6,400,000 on the way.
    """
    height, width = size
    ih, iw = image.shape[-2:]
    scale = max(height / ih, width / iw)
    ch, cw = min(ih, max(1, round(height / scale))), min(iw, max(1, round(width / scale)))
    top, left = int(round((ih - ch) / 2)), int(round((iw - cw) / 2))  # CenterCrop's rounding
    return resize(image[..., top:top + ch, left:left + cw], [height, width])


class ToSize(torch.nn.Module):
    """`fit(image, size)` as a transform (`letterbox` or `centre_crop_resize`); a module, so DataLoader
    workers can pickle it."""

    def __init__(self, fit, size):
        super().__init__()
        self.fit, self.size = fit, list(size)

    def forward(self, image):
        return self.fit(image, self.size)


def eval_transform(input_shape, letterbox_image=False):
    """The deterministic resizing of validation and prediction: a module, uint8 (3, H, W) -> uint8 (3, h, w).

    Default (`centre_crop_resize`): the centre region of the target's aspect ratio, resized to (h, w); for a
    square target the same region as the original's validation (shorter side resized, then centre
    crop), equal up to resampling at the crop's edges. With `letterbox_image`: keep the aspect ratio
    and pad with grey. Memory is bounded by the image and (h, w) in both. `to_float` then gives what
    the model takes.
    """
    return ToSize(letterbox if letterbox_image else centre_crop_resize, input_shape)


def to_float(images):
    """uint8 images of any shape -> float32 in [0, 1], the model's input; on whatever device they are."""
    return v2.functional.to_dtype(images, torch.float32, scale=True)


def preprocess(image, input_shape, letterbox_image=False):
    """A PIL image, a uint8 tensor or a path -> (3, H, W) float32 tensor in [0, 1], as the model expects."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    elif isinstance(image, Image.Image):
        image = v2.functional.pil_to_tensor(to_rgb(image))
    return to_float(eval_transform(input_shape, letterbox_image)(image))


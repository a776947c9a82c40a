"""Image loading and preprocessing shared by training, prediction, evaluation and search."""
import contextlib
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from utils.errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GREY = 128  # fill value for letterbox padding and AutoAugment, as the original uses
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_image_file(name):
    """True for a visible file whose extension is a known image type."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(image):
    """Any PIL mode (L, LA, P, RGB, RGBA, 1, I;16, ...) -> an RGB PIL image."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # 16/32-bit integer images: scale to 8 bits, not clip
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 255 else 255
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8), "L")
    return image.convert("RGB")


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
        image.load()
        return to_rgb(image)


def verify_image(path):
    """Cheap check without decoding: the header (size within Pillow's limit) and, for PNG, every
    chunk's checksum, which catches truncated and corrupt PNGs; raises ImageError naming the file."""
    with image_errors(path), Image.open(path) as image:
        image.verify()


def decode_png(path):
    """An 8-bit PNG decoded by torchvision (about 2x faster than PIL) as uint8 (1 or 3, H, W); None otherwise.

    Grey stays one channel and alpha is dropped, as `to_rgb` does. Anything else (other formats,
    16-bit and palette PNGs, unreadable files) returns None so that PIL decodes it or names the problem.
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


def letterbox(image, size):
    """Resize a (3, H, W) uint8 tensor to fit (h, w) keeping its aspect ratio, grey padding around."""
    height, width = size
    _, ih, iw = image.shape
    scale = min(height / ih, width / iw)
    nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
    resized = v2.functional.resize(image, [nh, nw], antialias=True)
    top, left = (height - nh) // 2, (width - nw) // 2
    return v2.functional.pad(resized, [left, top, width - nw - left, height - nh - top], fill=GREY)


class Letterbox(torch.nn.Module):
    """Transform form of `letterbox` (a module, so DataLoader workers can pickle it)."""

    def __init__(self, size):
        super().__init__()
        self.size = list(size)

    def forward(self, image):
        return letterbox(image, self.size)


def eval_transform(input_shape, letterbox_image=False):
    """The deterministic resizing of validation and prediction: uint8 (3, H, W) -> uint8 (3, h, w).

    Default: resize the shorter side to the input size, then centre crop (the original's
    validation). With `letterbox_image`: keep the aspect ratio and pad with grey. `to_float` then
    gives what the model takes.
    """
    size = list(input_shape)
    fit = [Letterbox(size)] if letterbox_image else [v2.Resize(min(size), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(fit)


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


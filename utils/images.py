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
from utils.files import MAX_IMAGE_BYTES, open_regular, read_opened

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GREY = 128  # fill value for letterbox padding and AutoAugment, as the original uses
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at directly (Pillow's draft)
DRAFT_MARGIN = 2  # source pixels per output pixel a reduced JPEG keeps: resampling from there matches the full decode
INK_LEVEL = 128  # a drawing's pixel darker than this (in every channel's minimum) is ink
MAX_INK_SIDE = 1024  # the largest square `ink_square` gives: a 1 x 200,000 drawing is not made 200,000 x 200,000
INK_MARGIN = 0.2  # paper `ink_square` keeps around the ink, a share of its larger side each way (0.1: a point less)
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


def image_file(path):
    """`path` opened to read bytes, once known to be a regular file of at most MAX_IMAGE_BYTES: a FIFO, a device or
    a huge file is refused unread; raises ImageError naming the file."""
    return open_regular(path, MAX_IMAGE_BYTES, ImageError, "an image")


def open_image(path):
    """Read `path` fully into an RGB PIL image; raises ImageError naming the file."""
    with image_file(path) as file, image_errors(path), Image.open(file) as image:
        rawmode = raw_mode(image)  # known only before loading: the tile list goes once decoded
        image.load()
        return to_rgb(image, rawmode)


def raw_mode(image):
    """The Pillow raw mode of an unloaded image's samples in its file (e.g. "I;16S"); "" when not known."""
    args = image.tile[0][3] if image.tile else ""
    return args if isinstance(args, str) else args[0] if args and isinstance(args[0], str) else ""


def verify_image(path):
    """Cheap check without decoding: a regular file of bounded size, the header (size within Pillow's limit) and,
    for PNG, every chunk's checksum, which catches truncated and corrupt PNGs; raises ImageError naming the file."""
    with image_file(path) as file, image_errors(path), Image.open(file) as image:
        image.verify()


def png_has_exif(data):
    """Whether the chunks of a PNG file's bytes include eXIf; None when they do not make a PNG.

    The walk follows the file's own structure and never reaches past its end: the first chunk must be a 13-byte IHDR
    of a non-empty image, every type 4 ASCII letters, every length inside the file, and IEND must come. A signature
    followed by zeros (what an interrupted or preallocated download leaves) is rejected at its first chunk.
    """
    offset, exif, first = len(PNG_SIGNATURE), False, True
    while True:
        if offset + 12 > len(data):
            return None
        length, kind = int.from_bytes(data[offset:offset + 4], "big"), bytes(data[offset + 4:offset + 8])
        if not kind.isalpha() or offset + 12 + length > len(data):
            return None
        if first and (kind != b"IHDR" or length != 13 or not any(data[16:20]) or not any(data[20:24])):
            return None  # width and height at bytes 16 and 20
        exif, first, offset = exif or kind == b"eXIf", False, offset + 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return exif


def decode_png(path):
    """An 8-bit PNG decoded by torchvision as uint8 (1 or 3, H, W); None otherwise.

    Grey stays one channel and alpha is dropped, as `to_rgb` does. Anything else (other formats,
    16-bit and palette PNGs, PNGs with EXIF, PNGs whose chunks do not hold together, unreadable files) returns None
    so that PIL decodes it or names the problem. Only a regular file of at most MAX_IMAGE_BYTES is read.
    """
    try:
        with image_file(path) as file:
            if file.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                return None
            file.seek(0)
            data = read_opened(file, path, MAX_IMAGE_BYTES, ImageError)
        # IHDR: bit depth at byte 24, colour type at 25 (3 = palette: torchvision would return the indices)
        if len(data) < 26 or data[24] > 8 or data[25] == 3:
            return None
        pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
        if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:  # PIL's decompression-bomb check speaks
            return None
        if png_has_exif(data) is not False:  # torchvision ignores the orientation EXIF holds; PIL applies it
            return None
        image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except (ImageError, OSError, RuntimeError, ValueError):
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


def ink_box(image):
    """A uint8 (C, H, W) drawing, dark ink on white -> (top, bottom, left, right) of its ink, the ends past the last
    row and column; None when it has no ink."""
    ink = image.amin(0) < INK_LEVEL
    rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
    if len(rows) == 0:
        return None
    return rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1


def ink_square(image, margin=INK_MARGIN):
    """A uint8 (C, H, W) drawing, dark ink on white -> uint8 (C, S, S), S its larger side (at most MAX_INK_SIDE): the
    square around its ink, widened by `margin` of the ink's larger side on each side (white where that leaves the
    image), resized, so that a character fills the frame however small and wherever it was drawn. An image without
    ink is kept as it is. The part inside the image is resized, then padded: memory stays bounded by the image and S.
    """
    box = ink_box(image)
    if box is None:
        return image
    top, bottom, left, right = box
    side = max(1, round(max(bottom - top, right - left) * (1 + 2 * margin)))
    y0, x0 = (top + bottom - side) // 2, (left + right - side) // 2
    height, width = image.shape[-2:]
    size = min(max(height, width), MAX_INK_SIDE)
    scale = size / side
    y1, x1 = max(0, y0), max(0, x0)
    inside = image[:, y1:min(height, y0 + side), x1:min(width, x0 + side)]
    out_top, out_left = round((y1 - y0) * scale), round((x1 - x0) * scale)
    out_height = max(1, min(size - out_top, round(inside.shape[1] * scale)))
    out_width = max(1, min(size - out_left, round(inside.shape[2] * scale)))
    resized = resize(inside, (out_height, out_width))
    beyond = [out_left, out_top, size - out_left - out_width, size - out_top - out_height]
    return v2.functional.pad(resized, beyond, fill=255) if any(beyond) else resized


def letterbox_geometry(height, width, size):
    """How `letterbox` fits a height x width image to `size` (h, w): (the region kept as (top, left, height, width),
    the size it is resized to, the [left, top, right, bottom] grey padding): all of it, to fit, padded around."""
    target_height, target_width = size
    scale = min(target_height / height, target_width / width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (target_height - nh) // 2, (target_width - nw) // 2
    return (0, 0, height, width), (nh, nw), [left, top, target_width - nw - left, target_height - nh - top]


def crop_geometry(height, width, size):
    """How `centre_crop_resize` fits a height x width image to `size` (h, w), as `letterbox_geometry` says it: the
    centre region of the target's aspect ratio, resized to (h, w), no padding."""
    target_height, target_width = size
    scale = max(target_height / height, target_width / width)
    ch, cw = min(height, max(1, round(target_height / scale))), min(width, max(1, round(target_width / scale)))
    top, left = int(round((height - ch) / 2)), int(round((width - cw) / 2))  # CenterCrop's rounding
    return (top, left, ch, cw), (target_height, target_width), [0, 0, 0, 0]


def fit_image(image, geometry):
    """A uint8 (C, H, W) tensor cropped, resized and padded as `geometry` (`crop_geometry`, `letterbox_geometry`)
    says -> uint8 (C, h, w)."""
    (top, left, height, width), resized, padding = geometry
    image = resize(image[..., top:top + height, left:left + width], resized)
    return v2.functional.pad(image, padding, fill=GREY) if any(padding) else image


def letterbox(image, size):
    """Resize a (3, H, W) uint8 tensor to fit (h, w) keeping its aspect ratio, grey padding around."""
    return fit_image(image, letterbox_geometry(*image.shape[-2:], size))


def centre_crop_resize(image, size):
    """Centre-crop a uint8 (C, H, W) tensor to the aspect ratio of `size` (h, w), then resize it -> uint8 (C, h, w).

    The region kept is the one that resizing the image to just cover (h, w) and centre cropping keeps
    (for a square target, resizing the shorter side). Cropping first keeps memory bounded by the
    source and the output: a 1 x 200,000 image is never resized to 32 x 6,400,000 on the way.
    """
    return fit_image(image, crop_geometry(*image.shape[-2:], size))


def jpeg_reduction(geometry):
    """The largest of JPEG_REDUCTIONS a JPEG fitted by `geometry` can be decoded at, else 1: the region kept still
    has DRAFT_MARGIN pixels per output pixel each way, and its edges fall on whole reduced pixels, so that the
    reduced image's region is exactly the full image's."""
    (top, left, height, width), (out_height, out_width), _ = geometry
    for reduction in JPEG_REDUCTIONS:
        if height >= DRAFT_MARGIN * reduction * out_height and width >= DRAFT_MARGIN * reduction * out_width \
                and not any(side % reduction for side in (top, left, height, width)):
            return reduction
    return 1


def decode_jpeg_fitted(path, geometry_of):
    """A JPEG file fitted by the geometry `geometry_of(height, width)` gives for its upright size -> uint8 (3, h, w),
    decoded at the `jpeg_reduction` that geometry allows; None for other files, and for JPEGs Pillow cannot reduce.

    The geometry is the full image's, scaled down exactly: only the decoded scale differs from fitting the full
    decode (libjpeg's scaled inverse DCT averages each r x r block), a few uint8 levels at most.
    """
    with image_file(path) as file, image_errors(path):
        if file.read(len(JPEG_SIGNATURE)) != JPEG_SIGNATURE:
            return None
        file.seek(0)
        with Image.open(file) as image:
            width, height = image.size
            turned = orientation(image) in (5, 6, 7, 8)  # a quarter turn: the geometry is of the upright image
            geometry = geometry_of(*((width, height) if turned else (height, width)))
            reduction = jpeg_reduction(geometry)
            if image.format != "JPEG" or (reduction > 1 and not image.draft(None, (width // reduction,
                                                                               height // reduction))):
                return None
            image.load()
            pixels = v2.functional.pil_to_tensor(to_rgb(image))
    (top, left, crop_height, crop_width), resized, padding = geometry
    region = tuple(side // reduction for side in (top, left, crop_height, crop_width))
    return fit_image(pixels, (region, resized, padding))


def load_fitted(path, input_shape, letterbox_image=False, crop_to_ink=False):
    """An image file fitted to the model's input (h, w) as `eval_transform` fits it -> uint8 (3, h, w); with
    `crop_to_ink`, its `ink_square` first.

    A large JPEG (a phone photo) is decoded at 1/2, 1/4 or 1/8 scale where that keeps twice the input size
    (`decode_jpeg_fitted`): a 12-megapixel photo then holds 0.6 to 9 MB while it is fitted, not 36. Other files are
    decoded in full; only the one image is held at its decoded size, whatever calls this for many.
    """
    geometry_of = letterbox_geometry if letterbox_image else crop_geometry
    fitted = None if crop_to_ink else decode_jpeg_fitted(path, lambda h, w: geometry_of(h, w, input_shape))
    if fitted is None:
        image = ink_square(load_image(path)) if crop_to_ink else load_image(path)
        fitted = fit_image(image, geometry_of(*image.shape[-2:], input_shape))
    return fitted


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


def preprocess(image, input_shape, letterbox_image=False, crop_to_ink=False):
    """A PIL image, a uint8 tensor or a path -> (3, H, W) float32 tensor in [0, 1], as the model expects; with
    `crop_to_ink` (weights trained on drawings so), the `ink_square` of the image is fitted.

    A path is read with `load_fitted` (a large JPEG decoded at a reduced scale). A float tensor is taken as this
    function's output and returned as given, so preprocessing twice is preprocessing once (the crop is not applied
    to a square already cropped); one of another size raises ValueError.
    """
    if isinstance(image, (str, os.PathLike)):
        return to_float(load_fitted(image, input_shape, letterbox_image, crop_to_ink))
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if tuple(image.shape) != (3, *input_shape):
            raise ValueError(f"a float image is taken as preprocessed and must be (3, {input_shape[0]}, "
                             f"{input_shape[1]}), not {tuple(image.shape)}; pass uint8 or a PIL image to fit it")
        return image
    if isinstance(image, Image.Image):
        image = v2.functional.pil_to_tensor(to_rgb(image))
    if crop_to_ink:
        image = ink_square(image)
    return to_float(eval_transform(input_shape, letterbox_image)(image))


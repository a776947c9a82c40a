"""Bad input, round two (issue 11): extreme aspect ratios, images decoded as viewers show them, a gallery cache
that follows content, and predict.py's --top, --save and gallery edge cases. Real files written to tmp_path."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import predict
from helpers import ROOT
from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.gallery import CACHE_NAME, gallery_embeddings, list_gallery, rank_gallery
from utils.images import (GREY, decode_png, eval_transform, load_image, open_image, preprocess, resize,
                          to_float)

SHAPE = [32, 32]
ORIENTATION = 0x0112  # the EXIF tag viewers rotate by


def old_eval_transform(size):
    """The resizing this replaces: shorter side to the input size, then centre crop."""
    return v2.Compose([v2.Resize(min(size), antialias=True), v2.CenterCrop(size)])


def smooth_rgb(height, width):
    """A smooth RGB gradient with values in [20, 235] (so black padding would show), as uint8 (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    return (20 + 215 * np.stack([x, y, (x + y) / 2], -1)).round().astype(np.uint8)


def save(array, path, mode=None, **options):
    Image.fromarray(array, mode).save(path, **options)
    return path


# 1. Memory bounded by the input size, whatever the aspect ratio

MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from utils.images import preprocess
    preprocess(sys.argv[1], [32, 32])  # warm up: kernels and thread pools are not what is measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shapes = [list(preprocess(path, [32, 32], letterbox).shape) for path in sys.argv[2:] for letterbox in (0, 1)]
    print(shapes)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def test_thin_images_stay_within_bounded_memory(tmp_path):
    line = (np.arange(200_000) % 251).astype(np.uint8)
    paths = [save(line[None, :], tmp_path / "wide.png"), save(line[:, None], tmp_path / "tall.png"),
             save(line[None, :], tmp_path / "wide.tif"), save(line[:, None], tmp_path / "tall.tif")]  # PIL's path
    warm = save(smooth_rgb(40, 60), tmp_path / "warm.png")
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(warm), *map(str, paths)], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # the old resize died here (it asks for 32 x 6,400,000)
    shapes, grown_mb = result.stdout.split()[:-1], result.stdout.split()[-1]
    assert " ".join(shapes) == str([[3, 32, 32]] * 8)
    assert float(grown_mb) < 64, f"peak memory grew by {grown_mb} MB"  # a 600 KB source; the old path needs GB


def test_a_thin_image_keeps_its_centre_as_resize_and_crop_would():
    line = torch.from_numpy((np.arange(200_000) % 251).astype(np.uint8))
    for image in (line.view(1, 1, -1).expand(3, -1, -1), line.view(1, -1, 1).expand(3, -1, -1)):
        out = eval_transform(SHAPE)(image)
        assert out.shape == (3, 32, 32) and out.unique().tolist() == [line[100_000].item()]  # the centre pixel
        boxed = eval_transform(SHAPE, letterbox_image=True)(image)
        assert boxed.shape == (3, 32, 32) and (boxed == GREY).float().mean() > 0.9  # a 1-pixel line on grey


def test_ordinary_images_match_the_old_resize_and_crop(small1, tmp_path):
    """Tolerance: Omniglot's square 105x105 drawings give the same pixels; the smooth 60x40 and 40x60 RGB images
    differ by at most 1/255 (one uint8 level, the resampling at the crop's edges)."""
    drawings = sorted(small1.glob("*/character01/*.png"))[:6]
    for path in drawings:
        for size in (SHAPE, [64, 64]):
            expected = to_float(old_eval_transform(size)(load_image(path)))
            assert torch.equal(preprocess(path, size), expected), path
    for height, width in ((40, 60), (60, 40)):
        path = save(smooth_rgb(height, width), tmp_path / f"smooth_{height}x{width}.png")
        expected = to_float(old_eval_transform(SHAPE)(load_image(path)))
        assert (preprocess(path, SHAPE) - expected).abs().max() <= 1 / 255 + 1e-6


def test_a_non_square_input_is_covered_not_padded(tmp_path):
    path = save(smooth_rgb(40, 60), tmp_path / "landscape.png")
    tall = preprocess(path, [48, 32])  # the old path resized the shorter side to 32 and padded 48 rows with black
    assert tall.shape == (3, 48, 32) and tall.min() >= 19 / 255


def test_eval_transforms_pickle_for_dataloader_workers(tmp_path):
    image = load_image(save(smooth_rgb(40, 60), tmp_path / "smooth.png"))
    for letterbox in (False, True):
        transform = eval_transform(SHAPE, letterbox)
        assert torch.equal(pickle.loads(pickle.dumps(transform))(image), transform(image))


def test_resize_to_a_one_pixel_width_is_right():
    """torch's uint8 antialias kernel returns wrong pixels for an output width of 1 (letterboxing a tall image)."""
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 50, 7), dtype=np.uint8))
    reference = v2.functional.resize(image.float(), [5, 1], antialias=True).round()
    assert (resize(image, [5, 1]).float() - reference).abs().max() <= 1


# 2. Images decoded as a viewer shows them

def quadrants(path, fmt, **options):
    """A 16-high, 32-wide RGB image, red left half and blue right half, saved with EXIF orientation 6
    (viewers turn it 90 degrees clockwise: 32 high, red on top)."""
    array = np.zeros((16, 32, 3), np.uint8)
    array[:, :16, 0], array[:, 16:, 2] = 255, 255
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(array).save(path, fmt, exif=exif, **options)
    return array


def test_jpeg_exif_orientation_is_applied(tmp_path):
    quadrants(tmp_path / "turned.jpg", "JPEG", quality=95)
    image = load_image(tmp_path / "turned.jpg").float()
    assert image.shape == (3, 32, 16)
    top, bottom = image[:, :14].mean((1, 2)), image[:, 18:].mean((1, 2))
    assert top[0] > 200 > 50 > top[2] and bottom[2] > 200 > 50 > bottom[0]


def test_png_exif_orientation_is_applied_by_the_fast_path_too(tmp_path):
    array = quadrants(tmp_path / "turned.png", "PNG")
    assert decode_png(tmp_path / "turned.png") is None  # torchvision would decode it unturned
    expected = torch.from_numpy(np.ascontiguousarray(np.rot90(array, k=-1))).permute(2, 0, 1)
    assert torch.equal(load_image(tmp_path / "turned.png"), expected)
    grey = np.arange(8 * 12, dtype=np.uint8).reshape(8, 12)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(grey).save(tmp_path / "grey.png", exif=exif)
    turned = load_image(tmp_path / "grey.png", keep_grey=True)
    assert torch.equal(turned.expand(3, -1, -1), torch.from_numpy(np.rot90(grey, k=-1).copy()).expand(3, -1, -1))
    opened = open_image(tmp_path / "turned.png")  # turned once, not again when preprocessed as a PIL image
    assert torch.equal(preprocess(opened, SHAPE), preprocess(tmp_path / "turned.png", SHAPE))


def grey_values(path):
    return load_image(path)[0].flatten().tolist()


def test_float_tiffs_are_not_black(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)  # [0, 1]: scaled by 255
    assert grey_values(save(unit, tmp_path / "unit.tif")) == [0, 64, 128, 255]
    wide = np.array([[-10.0, 100.4, 254.6, 300.0]], np.float32)  # any other range: clipped to [0, 255]
    assert grey_values(save(wide, tmp_path / "wide.tif")) == [0, 100, 255, 255]
    with_nan = np.array([[np.nan, 0.5, 1.0, 0.0]], np.float32)
    assert grey_values(save(with_nan, tmp_path / "nan.tif")) == [0, 128, 255, 0]


def test_signed_integer_tiffs_do_not_wrap_around(tmp_path):
    signed16 = np.array([[-5, 0, 1000, 32767]], np.int16).view(np.uint16)  # written with SampleFormat 2: signed
    Image.fromarray(signed16).save(tmp_path / "signed16.tif", tiffinfo={339: 2})
    with Image.open(tmp_path / "signed16.tif") as image:
        assert image.getpixel((0, 0)) == -5  # it is a signed file
    assert grey_values(tmp_path / "signed16.tif") == [0, 0, 8, 255]  # by 32767; negatives black
    int32 = np.array([[-300, 0, 100, 255]], np.int32)
    assert grey_values(save(int32, tmp_path / "int32.tif")) == [0, 0, 100, 255]


def test_16_bit_images_are_scaled_by_their_depth(tmp_path):
    values = np.array([[0, 257, 1000, 32768]], np.uint16)  # the image's own maximum is 32768, not 65535
    expected = [0, 1, 4, 128]  # value * 255 / 65535, rounded
    for name, array in (("png.png", values), ("tiff.tif", values), ("big_endian.tif", values.astype(">u2"))):
        assert grey_values(save(array, tmp_path / name)) == expected, name


# 3. and 4. The gallery: a cache that follows content, unreadable images skipped

@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(folder / f"seed{seed}.pth")
        torch.save(SiameseNetwork(SHAPE).state_dict(), paths[-1])
    return paths


def predictor(path):
    return Siamese(model_path=str(path), input_shape=SHAPE, cuda=False, verbose=False)


def noise_png(path, seed):
    """A 40x40 RGB noise PNG stored uncompressed: every such file has the same size whatever its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def small_gallery(folder, classes=2, per_class=2):
    for c in range(classes):
        for i in range(per_class):
            noise_png(folder / f"class{c}" / f"{i}.png", seed=10 * c + i)
    return folder


def replace_keeping_size_and_mtime(path, write):
    """Overwrite `path` through `write(path)`, then give it back its modification time, as `cp -p` would."""
    before = os.stat(path)
    write(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_gallery_cache_follows_image_content_not_size_and_mtime(tmp_path, weights_files):
    model = predictor(weights_files[0])
    folder = small_gallery(tmp_path / "gallery")
    names, before, embedded = gallery_embeddings(model, folder, progress=False)
    assert embedded == 4
    changed = folder / names[0]
    replace_keeping_size_and_mtime(changed, lambda path: noise_png(path, seed=99))
    names_after, after, embedded = gallery_embeddings(model, folder, progress=False)
    assert names_after == names and embedded == 1
    assert torch.equal(after[0], model.embed([str(changed)])[0]) and not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:])
    assert gallery_embeddings(model, folder, progress=False)[2] == 0  # unchanged bytes are not embedded again


def test_gallery_cache_follows_weights_content(tmp_path, weights_files):
    folder = small_gallery(tmp_path / "gallery")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(weights_files[0].read_bytes())
    _, first, _ = gallery_embeddings(predictor(weights), folder, progress=False)
    replace_keeping_size_and_mtime(weights, lambda path: path.write_bytes(weights_files[1].read_bytes()))
    other = predictor(weights)
    _, second, embedded = gallery_embeddings(other, folder, progress=False)
    assert embedded == 4 and not torch.equal(first, second)
    assert torch.equal(second, gallery_embeddings(other, folder, use_cache=False, progress=False)[1])


def test_an_unreadable_gallery_image_is_skipped_and_named(tmp_path, weights_files, capsys):
    model = predictor(weights_files[0])
    folder = small_gallery(tmp_path / "gallery")
    (folder / "class0" / "text.png").write_text("not an image")
    data = (folder / "class1" / "0.png").read_bytes()
    (folder / "class1" / "cut.png").write_bytes(data[: len(data) // 2])
    for use_cache in (True, False):
        images, classes = rank_gallery(model, folder, str(folder / "class1" / "1.png"), top=10,
                                       use_cache=use_cache, progress=False)
        assert sorted(name for _, name in images) == [f"class{c}/{i}.png" for c in (0, 1) for i in (0, 1)]
        assert len(classes) == 2
        err = capsys.readouterr().err
        assert "Warning: skipped 2 unreadable image(s)" in err and "text.png" in err and "cut.png" in err


def test_gallery_symlink_loops_and_dangling_links_are_skipped(tmp_path, weights_files, capsys):
    folder = small_gallery(tmp_path / "gallery")
    os.symlink(folder / "missing.png", folder / "class0" / "dangling.png")
    os.symlink(folder / "class0" / "loop.png", folder / "class0" / "loop.png")
    os.symlink(folder / "class1" / "b.png", folder / "class1" / "a.png")
    os.symlink(folder / "class1" / "a.png", folder / "class1" / "b.png")
    os.symlink(folder, folder / "class1" / "cycle")  # a folder loop: not followed
    os.symlink(folder / "class0" / "0.png", folder / "class1" / "linked.png")  # a good link: kept
    os.mkfifo(folder / "class0" / "fifo.png")  # reading it would wait forever
    names = list_gallery(folder)
    assert names == ["class0/0.png", "class0/1.png", "class1/0.png", "class1/1.png", "class1/linked.png"]
    err = capsys.readouterr().err
    for name in ("dangling.png (dangling symlink)", "loop.png (Too many levels", "a.png", "b.png",
                 "fifo.png (not a regular file)", "cycle"):
        assert name in err, name
    images, _ = rank_gallery(predictor(weights_files[0]), folder, str(folder / "class0" / "0.png"), top=5,
                             progress=False)
    scores = {name: score for score, name in images}
    assert len(scores) == 5 and scores["class1/linked.png"] == scores["class0/0.png"]  # the link is its target


# 4. and 5. predict.py's arguments: one line, exit code 2, before any work

def argument_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model_path", "/nonexistent/weights.pth", *map(str, args)])  # never loaded
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and lines[0].startswith("usage:"), lines  # argparse's usage, then one line
    assert all(line.startswith(" ") for line in lines[1:-1]) and "error: " in lines[-1], lines
    return lines[-1]


@pytest.mark.parametrize("top", ["-1", "0"])
def test_top_below_one_is_refused(top, tmp_path, capsys):
    line = argument_error(capsys, "--gallery", tmp_path, tmp_path / "q.png", "--top", top)
    assert f"argument --top: must be at least 1, not {top}" in line


def test_bad_save_paths_are_refused_before_any_work(tmp_path, capsys):
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    cases = [(tmp_path / "no_folder" / "out.png", f"no such folder {tmp_path / 'no_folder'}"),
             (tmp_path / "out.xyz", "unknown extension .xyz; matplotlib writes"),
             (tmp_path / "out", "no extension"),
             (tmp_path, "is a directory")]
    for path, problem in cases:
        line = argument_error(capsys, *images, "--save", path)
        assert f"--save {path}: {problem}" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even out.png


def test_predict_gallery_cli_skips_an_unreadable_image(tmp_path, weights_files, capsys):
    folder = small_gallery(tmp_path / "gallery")
    (folder / "class0" / "text.png").write_text("not an image")
    predict.main(["--gallery", str(folder), str(folder / "class0" / "0.png"), "--top", "4", "--model_path",
                  str(weights_files[0]), "--input_shape", "32", "32", "--cuda", "False"])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("Top 4 images") and "text.png" not in captured.out
    assert f"{folder / 'class0' / 'text.png'}: not a readable image" in captured.err
    assert (folder / CACHE_NAME).is_file()

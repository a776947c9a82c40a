"""Measure training and inference speed, loader speed, peak memory and scoring speed on this machine.

    python bench.py                        # 105x105 VGG16 pair items, batch 32 (the original's defaults)
    python bench.py --quick                # the same, shorter (batch 8, fp32 alone): a few minutes at most
    python bench.py --pairing batch        # the from-scratch recipe's step (config/omniglot_scratch.py)
    python bench.py --pairing batch --preset config/omniglot_resnet18.py   # another preset's step
    python bench.py --gallery 100000       # one query against 100,000 cached embeddings (ResNet18 at 64x64)
    python bench.py --backbones all        # instead: a table of every backbone's speed and memory (fp32)
Figures are the best of the timed steps (the least disturbed by other processes); peak memory is
measured afresh for each setting (CUDA: allocated memory; CPU: the resident set, Linux). Settings a
CPU does not run natively (bfloat16 without AVX-512 BF16 or AMX: emulated, slower than fp32) are
skipped, saying so, unless --all_settings.
"""
import argparse
import gc
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from nets.siamese import BACKBONES, SiameseNetwork, flat_features
from siamese import Siamese
from tools.glyphs import glyphs_present, make_glyphs
from utils.configurator import read_preset
from utils.dataloader import ClassBatches, PairItems, class_groups, indices_by_class, list_images, make_loader
from utils.engine import Meter, pair_sides, train_one_epoch
from utils.images import preprocess
from utils.precision import autocast, native_bf16
from utils.schedule import make_optimizer

RECIPE = Path(__file__).resolve().parent / "config" / "omniglot_scratch.py"
SETTINGS = {  # name -> (autocast dtype, channels_last, compile)
    "fp32": (None, False, False),
    "fp32+channels_last": (None, True, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16+channels_last": (torch.bfloat16, True, False),
    "fp16+channels_last": (torch.float16, True, False),  # CUDA only
    "bf16+channels_last+compile": (torch.bfloat16, True, True),  # with --compile
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="folder holding images_background/ (default: dataset/ if it "
                        "has one, else the embedded glyphs in dataset/glyphs, built if absent)")
    parser.add_argument("--train_own_data", action="store_true", help="images_background/<class>/<image> layout")
    parser.add_argument("--input_shape", type=int, nargs=2, default=None,
                        help="default: 105 105; the recipe's with --pairing batch; 64 64 with --gallery")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="items per step (2 pairs each; default 32), images per step with --pairing batch "
                             "(default: the recipe's)")
    parser.add_argument("--pairing", choices=("items", "batch"), default="items",
                        help="batch: time the from-scratch recipe's step (class batches, every pair, ranking term)")
    parser.add_argument("--preset", default=str(RECIPE), help="the preset whose step --pairing batch times "
                        "(backbone, input, class batch, augmentation, loss); default: the from-scratch recipe")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--loader_images", type=int, default=1024, help="images augmented per loader measurement")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers for the keep-up check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compile time included)")
    parser.add_argument("--all_settings", action="store_true", help="also time settings this CPU only emulates")
    parser.add_argument("--way", type=int, default=20, help="classes of the timed one-shot task")
    parser.add_argument("--gallery", type=int, default=0, metavar="N",
                        help="only time one query against N cached synthetic embeddings, as predict.py --gallery")
    parser.add_argument("--quick", action="store_true", help="2 timed steps, 256 loader images, fp32 alone, batch 8 "
                        "items, the one-shot task without its every-pair timing")
    parser.add_argument("--backbones", type=parse_backbones, default=None, metavar="all|NAME[,NAME...]",
                        help="only a table of these backbones' training and inference pairs/s and peak memory")
    parser.add_argument("--setting", choices=list(SETTINGS), default="fp32", help="the --backbones table's setting")
    args = parser.parse_args(argv)
    try:
        recipe = read_preset_values(args.preset) if args.pairing == "batch" else None
    except ValueError as e:  # a missing or malformed preset, named with its line
        parser.error(str(e))
    default_shape = recipe["input_shape"] if recipe else [64, 64] if args.gallery else [105, 105]
    args.input_shape = args.input_shape or default_shape
    args.batch_size = args.batch_size or (recipe["batch_size"] if recipe else 8 if args.quick else 32)
    if args.quick:
        args.steps, args.loader_images = min(args.steps, 2), min(args.loader_images, 256)
    return args


def parse_backbones(text):
    """"all" or comma-separated backbone names -> a tuple of names from BACKBONES; argparse's error otherwise."""
    names = BACKBONES if text == "all" else tuple(text.split(","))
    unknown = [name for name in names if name not in BACKBONES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backbone {', '.join(unknown)}: choose all or from "
                                         f"{', '.join(BACKBONES)}")
    return names


def pil_baseline(input_shape):
    """The straightforward version of the same augmentation, for comparison: PIL image by image."""
    from PIL import Image
    from torchvision import transforms

    augment = transforms.Compose([
        transforms.RandomResizedCrop(list(input_shape), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(0.5),
        transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET, fill=128),
        transforms.PILToTensor(),
        transforms.ConvertImageDtype(torch.float32),
    ])

    def load(path):
        with Image.open(path) as image:
            return augment(image.convert("RGB"))

    return load


def loader_speed(dataset, images):
    """Training images/s of one loader worker (one process, one thread): (ours, PIL baseline).

    Both include what a worker does after augmenting: collating the batch that it hands over. They
    alternate batch by batch on the same kind of draws, so that a busy spell on the machine slows
    both; each figure is the median over the batches.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker gets
    batch = dataset.items  # items; 4 images each
    load = pil_baseline(dataset.input_shape)
    dataset[0]  # warm-up
    ours, baseline = [], []
    rng = random.Random(0)
    for step in range(max(1, images // (4 * batch))):
        start = time.perf_counter()
        dataset[step]
        ours.append(4 * batch / (time.perf_counter() - start))
        paths = [path for _ in range(batch) for pair in dataset.sample_pair(rng) for path in pair]
        start = time.perf_counter()
        torch.stack([torch.stack([load(path) for path in paths[i: i + 4]]) for i in range(0, len(paths), 4)])
        baseline.append(len(paths) / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return statistics.median(ours), statistics.median(baseline)


def workers_speed(dataset, workers, batches, pin_memory):
    """Images/s delivered by the DataLoader train.py builds (`make_loader`) with `workers` workers."""
    loader = make_loader(dataset, workers, pin_memory)
    iterator = iter(loader)
    first = next(iterator)  # workers started
    start = time.perf_counter()
    for _ in range(min(batches, len(loader) - 1)):
        next(iterator)
    speed = min(batches, len(loader) - 1) * first.images[..., 0, 0].numel() / (time.perf_counter() - start)
    del iterator  # shuts the workers down now
    return speed


def reset_peak_memory(device):
    """Start a fresh peak-memory measurement (CUDA allocator stats, or Linux's resident-set high-water mark)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # elsewhere the figure is the process's peak so far


def peak_memory(device):
    """Peak memory in MiB since `reset_peak_memory`: CUDA memory allocated, or the CPU resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def best_seconds(fn, repeats, device):
    """Wall time of the fastest of `repeats` calls of `fn` after one warm-up call (waiting for CUDA)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def time_setting(setting, batch, input_shape, steps, device, backbone="vgg16", loss="bce"):
    """Train then infer `backbone` with `setting` on `batch` (a `PairBatch` or `ClassBatch`) through train.py's
    step (`train_one_epoch`); returns seconds a step and pairs/s for both, and the training peak memory."""
    amp_dtype, channels_last, compile_model = SETTINGS[setting]
    reset_peak_memory(device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = SiameseNetwork(input_shape, backbone).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    optimizer = make_optimizer(model.parameters(), "adam", 1e-4, 0.9, 0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    pairs = pair_count(batch)

    def train_step():
        train_one_epoch(step_model, [batch], optimizer, scaler, device, Meter(device), amp_dtype=amp_dtype,
                        channels_last=channels_last, loss=loss, show=False)

    compiling = timed(train_step) if compile_model else 0.0  # the first step compiles forward and backward
    step = best_seconds(train_step, steps, device)
    memory = peak_memory(device)
    step_model.eval()
    images = inference_inputs(batch, device, channels_last)

    def infer():
        with torch.inference_mode(), autocast(device, amp_dtype):
            step_model(*images)

    return {"step": step, "train": pairs / step, "infer": pairs / best_seconds(infer, steps, device), "memory": memory,
            "compile": compiling}


def pair_count(batch):
    """The pairs a step scores: 2 an item, or every pair of a class batch's images."""
    count = len(batch.images)
    return count * (count - 1) // 2 if batch.images.dim() == 4 else 2 * count


def inference_inputs(batch, device, channels_last):
    """What the network's forward takes for `batch`'s pairs: the two sides, or one class batch and its pairs."""
    if batch.images.dim() == 4:
        images = (batch.images.to(device).float() / 255).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return images, None, torch.triu_indices(len(images), len(images), 1, device=device)
    first, second, _ = pair_sides(batch, device, channels_last)
    return first, second


def step_flops(batch, input_shape, backbone, device, loss):
    """Floating-point operations of one fp32 training step on `batch` (forward and backward), as torch counts them."""
    model = SiameseNetwork(input_shape, backbone).to(device)
    optimizer = make_optimizer(model.parameters(), "adam", 1e-4, 0.9, 0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    with FlopCounterMode(display=False) as counter:
        train_one_epoch(model, [batch], optimizer, scaler, device, Meter(device), loss=loss, show=False)
    return counter.get_total_flops()


def peak_flops(device, size=2048, repeats=5):
    """The fp32 floating-point operations a second this device reaches on a large matrix product: the practical peak."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size ** 3 / best_seconds(lambda: a @ b, repeats, device)


def train_fp32_setting(device):
    """The fp32 setting train.py's `channels_last auto` picks on `device`: NHWC on a CPU, NCHW on a GPU."""
    return "fp32+channels_last" if device.type == "cpu" else "fp32"


def chosen_settings(device, args):
    """The settings to time on `device`: fp32 ones always; bf16 where native (or with --all_settings); fp16 on
    CUDA; compile with --compile. Prints which are skipped and why. --quick times fp32 alone (and the fp32 setting
    train.py picks, where that is channels_last)."""
    if args.quick:
        print("--quick: fp32 alone (and train.py's fp32 setting); the other settings with python bench.py")
        return sorted({"fp32", train_fp32_setting(device)}, key=list(SETTINGS).index)
    settings = ["fp32", "fp32+channels_last"]
    if native_bf16(device) or args.all_settings:
        settings += ["bf16", "bf16+channels_last"]
    else:
        print("bf16 skipped: this CPU has no AVX-512 BF16 or AMX, so bfloat16 is emulated and slower than fp32 "
              "(--all_settings to time it anyway)")
    if device.type == "cuda":
        settings.append("fp16+channels_last")
    if args.compile:
        settings.append("bf16+channels_last+compile" if "bf16" in settings else "fp32+compile")
    return settings


SETTINGS["fp32+compile"] = (None, False, True)


def print_backbone_table(backbones, setting, batch, input_shape, steps, device):
    """Time `setting` for each of `backbones` on `batch`; prints a Markdown table, a row as each is measured."""
    print("| backbone | features | training pairs/s | inference pairs/s | peak memory (training) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backbone in backbones:
        r = time_setting(setting, batch, input_shape, steps, device, backbone)
        print(f"| {backbone} | {flat_features(input_shape, backbone)} | {r['train']:.1f} | {r['infer']:.1f} "
              f"| {r['memory']:.0f} MiB |", flush=True)


@torch.inference_mode()
def time_oneshot_task(paths, labels, input_shape, way, repeats, device, batch_size=64, full_network=True):
    """Seconds for one `way`-way task (each of `way` queries against `way` candidates, one per class).

    Three ways, images preprocessed beforehand in all: `cached` (the head alone on the way*way
    pairs, embeddings cached, as evaluation and gallery search do), `embed_once` (embed the 2*way
    images once, then the head) and `full_network` (every pair through backbone and head; None unless
    `full_network`).
    """
    by_class = [rows for rows in indices_by_class(labels).values() if len(rows) >= 2][:way]
    if len(by_class) < way:
        raise SystemExit(f"error: a {way}-way task needs {way} classes with 2 images; the dataset has {len(by_class)}")
    images = torch.stack([preprocess(paths[rows[k]], input_shape) for k in (0, 1) for rows in by_class]).to(device)
    net = SiameseNetwork(input_shape).to(device).eval()
    query_rows = torch.arange(way).repeat_interleave(way)
    candidate_rows = way + torch.arange(way).repeat(way)

    def embed_all():
        return torch.cat([net.embed(chunk) for chunk in images.split(batch_size)])

    embeddings = embed_all()

    def full():
        for rows1, rows2 in zip(query_rows.split(batch_size), candidate_rows.split(batch_size)):
            net(images[rows1], images[rows2])

    head = lambda emb: net.score(emb[query_rows], emb[candidate_rows])  # noqa: E731
    return {
        "pairs": len(query_rows),
        "cached": best_seconds(lambda: head(embeddings), repeats, device),
        "embed_once": best_seconds(lambda: head(embed_all()), repeats, device),
        "full_network": best_seconds(full, repeats, device) if full_network else None,
    }


def default_dataset():
    """dataset/ when it holds data, else the demo's embedded glyph set (written first if absent)."""
    if os.path.isdir(os.path.join("dataset", "images_background")):
        return "dataset"
    glyphs = "dataset/glyphs"
    if not glyphs_present(glyphs):
        print(f"Building the embedded glyph set in {glyphs}/ ...")
        make_glyphs(glyphs)
    return glyphs


def report_settings(settings, batch, args, device, backbone="vgg16", loss="bce"):
    """Time each setting on `batch`, print a line each and the ratios to fp32; returns {setting: figures}."""
    results = {}
    for setting in settings:
        results[setting] = r = time_setting(setting, batch, args.input_shape, args.steps, device, backbone, loss)
        print(f"{setting:<28} training pairs/s {r['train']:8.2f}   inference pairs/s {r['infer']:8.2f}   "
              f"peak memory (training) {r['memory']:.0f} MiB"
              + (f"   compiling took {r['compile']:.0f} s" if r["compile"] else ""), flush=True)
    for setting in settings[1:]:
        r, fp32 = results[setting], results["fp32"]
        print(f"ratio {setting} / fp32: training {r['train'] / fp32['train']:.2f}x, "
              f"inference {r['infer'] / fp32['infer']:.2f}x")
    return results


def report_peak(batch, args, device, seconds, backbone, loss):
    """Print the fp32 step's floating-point operations and the fraction of this device's measured peak that
    `seconds` a step reaches."""
    flops, peak = step_flops(batch, args.input_shape, backbone, device, loss), peak_flops(device)
    print(f"fp32 step: {flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {flops / seconds / 1e9:.1f} GFLOP/s; "
          f"peak (a 2048x2048 fp32 matrix product) {peak / 1e9:.1f} GFLOP/s: {100 * flops / seconds / peak:.0f}% of it")


def bench_recipe(args, paths, labels, class_names, device):
    """The step of `args.preset` (the from-scratch recipe's: class batches, their augmentation, backbone and loss):
    the model step per setting, the batch drawn in the main process, and the whole step through train.py's loader."""
    recipe = read_preset_values(args.preset)
    batches = ClassBatches(paths, labels, args.input_shape, args.batch_size, recipe["images_per_class"],
                           recipe["augmentation"], class_groups(class_names), recipe["negatives"],
                           class_rotations=recipe["class_rotations"], steps=max(2 * args.steps + 2, 4),
                           class_mirrors=recipe["class_mirrors"], class_squash=recipe["class_squash"],
                           class_slant=recipe["class_slant"], class_cut=recipe["class_cut"],
                           crop_to_ink=recipe["crop_to_ink"])
    batch = batches[0]
    title = "the recipe's step" if Path(args.preset).resolve() == RECIPE else f"the step of {args.preset}"
    print(f"{title}: {recipe['backbone']} at {args.input_shape[0]}x{args.input_shape[1]}, "
          f"{len(batch.images)} images of {recipe['images_per_class']} per class, {pair_count(batch)} pairs, "
          f"BCE + ranking term, Adam")
    results = report_settings(chosen_settings(device, args), batch, args, device, recipe["backbone"], recipe["loss"])
    setting = train_fp32_setting(device)
    fp32 = results[setting]
    print(f"fp32 model step ({setting}, as train.py trains) {fp32['step']:.3f} s: {1 / fp32['step']:.2f} steps/s, "
          f"{fp32['train']:.0f} pairs/s")
    report_peak(batch, args, device, fp32["step"], recipe["backbone"], recipe["loss"])
    first = statistics.median(timed(lambda step=step: batches[step]) for step in range(1, len(batches)))
    again = statistics.median(timed(lambda step=step: batches[step]) for step in range(1, len(batches)))
    print(f"one class batch drawn and augmented in the main process: {first:.3f} s decoding its drawings, "
          f"{again:.3f} s once they are kept (a run keeps each after its first draw)")
    for workers in sorted({0, min(args.workers, os.cpu_count() or 1)}):
        seconds = loop_seconds(batches, workers, device, recipe["backbone"], args.input_shape, args.steps,
                               recipe["loss"], SETTINGS[setting][1])
        print(f"whole step, {workers} loader workers ({setting}): {seconds:.3f} s = {1 / seconds:.2f} steps/s, "
              f"{pair_count(batch) / seconds:.0f} pairs/s")


def read_preset_values(path=RECIPE):
    """The settings of the preset at `path` (the recipe's by default), with the config block's defaults for what it
    leaves out."""
    import train

    return {**train.CONFIG, **read_preset(path, train.CONFIG)}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def loop_seconds(batches, workers, device, backbone, input_shape, steps, loss, channels_last=False):
    """Seconds a step of train.py's own loop takes over `batches` with `workers` loader workers: the loader and the
    model together, after one warm-up step."""
    torch.manual_seed(0)
    model = SiameseNetwork(input_shape, backbone).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), "adam", 1e-4, 0.9, 0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loader = make_loader(batches, workers, device.type == "cuda")
    times = []

    def after_step(step, meter):
        times.append(time.perf_counter())
        return len(times) > steps

    train_one_epoch(model, loader, optimizer, scaler, device, Meter(device), channels_last=channels_last, loss=loss,
                    show=False, after_step=after_step)
    return (times[-1] - times[0]) / (len(times) - 1)


def bench_gallery(args, device):
    """One query against `args.gallery` cached synthetic embeddings, scored as predict.py --gallery scores them."""
    backbone = "resnet18"
    features = flat_features(args.input_shape, backbone)
    torch.manual_seed(0)
    predictor = Siamese.from_network(SiameseNetwork(args.input_shape, backbone).to(device), args.input_shape, device)
    embeddings = torch.rand(args.gallery, features).relu_()  # backbone features are non-negative
    query = torch.rand(1, features)
    reset_peak_memory(device)
    before = peak_memory(torch.device("cpu"))
    start = time.perf_counter()
    index = predictor.index(embeddings)
    built = time.perf_counter() - start
    seconds = best_seconds(lambda: index.scores(query), args.steps, device)
    extra = peak_memory(torch.device("cpu")) - before
    plain = best_seconds(lambda: predictor.score_pairs(query, embeddings), 1, device)
    print(f"gallery query: {args.gallery} cached embeddings of {features} features ({backbone} at "
          f"{args.input_shape[0]}x{args.input_shape[1]}, {embeddings.numel() * 4 / 2**20:.0f} MiB held): "
          f"{seconds * 1000:.1f} ms a query, {args.gallery / seconds / 1e6:.1f} M pairs/s, after indexing them once "
          f"in {built * 1000:.0f} ms (the pairs' head without an index: {plain * 1000:.0f} ms); memory beyond the "
          f"embeddings: {max(extra, 0):.0f} MiB")


def bench_items(args, paths, labels, class_names, device):
    """The original's defaults: pair items on VGG16 (loader, settings, workers keep-up, a one-shot task)."""
    dataset = PairItems(paths, labels, args.input_shape, args.batch_size, steps=max(16, 2 * args.steps + 2),
                        train=True)
    ours, baseline = loader_speed(PairItems(paths, labels, args.input_shape, max(1, min(32, args.loader_images // 4)),
                                            train=True), args.loader_images)
    print(f"loader images/s per worker: {ours:.0f} (PIL image by image: {baseline:.0f}; ratio {ours / baseline:.2f}x)")
    results = report_settings(chosen_settings(device, args), dataset[0], args, device)
    report_peak(dataset[0], args, device, results[train_fp32_setting(device)]["step"], "vgg16", "bce")
    workers = min(args.workers, os.cpu_count() or 1)
    supply = workers_speed(dataset, workers, 2 if args.quick else 8, device.type == "cuda")
    demand = 2 * max(r["train"] for r in results.values())  # two images per pair
    print(f"DataLoader with {workers} workers: {supply:.0f} images/s; the fastest training setting uses {demand:.0f} "
          f"images/s ({'keeps up' if supply >= demand else 'the loader is the bottleneck'})")
    times = time_oneshot_task(paths, labels, args.input_shape, args.way, args.steps, device,
                              full_network=not args.quick)
    full = times["full_network"]
    print(f"one {args.way}-way task ({times['pairs']} pairs, fp32, images preprocessed): "
          f"cached embeddings, head only {times['cached'] * 1000:.2f} ms; "
          f"embed the {2 * args.way} images once + head {times['embed_once'] * 1000:.1f} ms; "
          + ("every pair through the network: not timed with --quick" if full is None else
             f"every pair through the network {full * 1000:.0f} ms ({full / times['embed_once']:.1f}x and "
             f"{full / times['cached']:.0f}x slower)"))


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    if args.gallery:
        print(f"bench: {name}; torch {torch.__version__}")
        return bench_gallery(args, device)
    args.dataset = args.dataset or default_dataset()
    root = os.path.join(args.dataset, "images_background")
    if not os.path.isdir(root):
        raise SystemExit(f"error: no dataset at {root}: make one with 'python -m tools.datasets glyphs' "
                         f"or pass --dataset DIR")
    paths, labels, class_names, _ = list_images(args.dataset, args.train_own_data)
    print(f"bench: {name}; {len(paths)} images in {len(class_names)} classes from {args.dataset}; best of "
          f"{args.steps} steps; torch {torch.__version__}")
    if args.backbones:
        batch = PairItems(paths, labels, args.input_shape, args.batch_size, train=True)[0]
        print(f"Siamese backbones at {args.input_shape[0]}x{args.input_shape[1]}, batch {args.batch_size} items = "
              f"{2 * args.batch_size} pairs, {args.setting}; peak memory: "
              f"{'allocated' if device.type == 'cuda' else 'resident set'}")
        reset_peak_memory(device)
        print(f"before any model: {peak_memory(device):.0f} MiB")  # on the CPU, part of every row's figure
        return print_backbone_table(args.backbones, args.setting, batch, args.input_shape, args.steps, device)
    if args.pairing == "batch":
        return bench_recipe(args, paths, labels, class_names, device)
    print(f"VGG16 Siamese at {args.input_shape[0]}x{args.input_shape[1]}, batch {args.batch_size} items = "
          f"{2 * args.batch_size} pairs")
    bench_items(args, paths, labels, class_names, device)


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))

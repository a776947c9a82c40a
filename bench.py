"""Measure training and inference speed, loader speed, peak memory and one-shot task speed on this machine.

    python bench.py                       # 105x105 VGG16, batch 32, on dataset/ (the embedded glyphs or your data)
    python bench.py --dataset DIR --quick # a short run on DIR/images_background
    python bench.py --backbones all       # instead: a table of every backbone's speed and memory (fp32)
Figures are the best of the timed steps (the least disturbed by other processes); peak memory is
measured afresh for each setting (CUDA: allocated memory; CPU: the resident set, Linux).
"""
import argparse
import gc
import os
import resource
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, default_collate

from nets.siamese import BACKBONES, SiameseNetwork, flat_features
from tools.glyphs import glyphs_present, make_glyphs
from utils.dataloader import SiameseDataset, indices_by_class, list_images
from utils.images import preprocess
from utils.loop import run_epoch, split_pairs
from utils.schedule import make_optimizer

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
    parser.add_argument("--input_shape", type=int, nargs=2, default=[105, 105])
    parser.add_argument("--batch_size", type=int, default=32, help="items per step (2 pairs each)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--loader_images", type=int, default=1024, help="images augmented per loader measurement")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers for the keep-up check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--way", type=int, default=20, help="classes of the timed one-shot task")
    parser.add_argument("--quick", action="store_true", help="2 timed steps, 256 loader images")
    parser.add_argument("--backbones", type=parse_backbones, default=None, metavar="all|NAME[,NAME...]",
                        help="only a table of these backbones' training and inference pairs/s and peak memory")
    parser.add_argument("--setting", choices=list(SETTINGS), default="fp32", help="the --backbones table's setting")
    args = parser.parse_args(argv)
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
    batch = max(1, min(32, images // 4))  # items; 4 images each
    load = pil_baseline(dataset.input_shape)
    default_collate(dataset.__getitems__(range(batch)))  # warm-up
    ours, baseline = [], []
    for _ in range(max(1, images // (4 * batch))):
        start = time.perf_counter()
        default_collate(dataset.__getitems__(range(batch)))
        ours.append(4 * batch / (time.perf_counter() - start))
        paths = [path for _ in range(batch) for pair in dataset.sample_pair() for path in pair]
        start = time.perf_counter()
        default_collate([torch.stack([load(path) for path in paths[i: i + 4]]) for i in range(0, len(paths), 4)])
        baseline.append(len(paths) / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return statistics.median(ours), statistics.median(baseline)


def workers_speed(dataset, batch_size, workers, batches, pin_memory):
    """Images/s delivered by a DataLoader with `workers` workers, as train.py builds it."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    next(iterator)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    speed = batches * batch_size * 4 / (time.perf_counter() - start)
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


def time_setting(setting, batch, input_shape, steps, device, backbone="vgg16"):
    """Train then infer `backbone` with `setting` on `batch`; returns pairs/s for both and the training peak memory."""
    amp_dtype, channels_last, compile_model = SETTINGS[setting]
    reset_peak_memory(device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = SiameseNetwork(input_shape, backbone).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    optimizer = make_optimizer(model.parameters(), "sgd", 1e-3, 0.9, 5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    options = dict(amp_dtype=amp_dtype, channels_last=channels_last, show=False)
    pairs = batch[1].numel()
    train_step = lambda: run_epoch(step_model, [batch], device, optimizer, scaler, **options)  # noqa: E731
    train = pairs / best_seconds(train_step, steps, device)
    memory = peak_memory(device)
    step_model.eval()
    first, second, _ = split_pairs(*batch, device, channels_last)

    def infer():
        with torch.inference_mode(), \
                torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
            step_model(first, second)

    return {"train": train, "infer": pairs / best_seconds(infer, steps, device), "memory": memory}


def print_backbone_table(backbones, setting, batch, input_shape, steps, device):
    """Time `setting` for each of `backbones` on `batch`; prints a Markdown table, a row as each is measured."""
    print("| backbone | features | training pairs/s | inference pairs/s | peak memory (training) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backbone in backbones:
        r = time_setting(setting, batch, input_shape, steps, device, backbone)
        print(f"| {backbone} | {flat_features(input_shape, backbone)} | {r['train']:.1f} | {r['infer']:.1f} "
              f"| {r['memory']:.0f} MiB |", flush=True)


@torch.inference_mode()
def time_oneshot_task(paths, labels, input_shape, way, repeats, device, batch_size=64):
    """Seconds for one `way`-way task (each of `way` queries against `way` candidates, one per class).

    Three ways, images preprocessed beforehand in all: `cached` (the head alone on the way*way
    pairs, embeddings cached, as evaluation and gallery search do), `embed_once` (embed the 2*way
    images once, then the head) and `full_network` (every pair through backbone and head).
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
        "full_network": best_seconds(full, repeats, device),
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


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dataset = args.dataset or default_dataset()
    root = os.path.join(args.dataset, "images_background")
    if not os.path.isdir(root):
        raise SystemExit(f"error: no dataset at {root}: make one with 'python -m tools.datasets glyphs' "
                         f"or pass --dataset DIR")
    paths, labels, class_names, _ = list_images(args.dataset, args.train_own_data)
    dataset = SiameseDataset(paths, labels, args.input_shape, train=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    if args.backbones:
        print(f"bench: {name}; Siamese backbones at {args.input_shape[0]}x{args.input_shape[1]}, batch "
              f"{args.batch_size} items = {2 * args.batch_size} pairs, {args.setting}; best of {args.steps} steps; "
              f"peak memory: {'allocated' if device.type == 'cuda' else 'resident set'}; torch {torch.__version__}")
        batch = default_collate(dataset.__getitems__(range(args.batch_size)))
        reset_peak_memory(device)
        print(f"before any model: {peak_memory(device):.0f} MiB")  # on the CPU, part of every row's figure
        print_backbone_table(args.backbones, args.setting, batch, args.input_shape, args.steps, device)
        return
    print(f"bench: {name}; VGG16 Siamese at {args.input_shape[0]}x{args.input_shape[1]}, batch {args.batch_size} "
          f"items = {2 * args.batch_size} pairs; {len(paths)} images in {len(class_names)} classes "
          f"from {args.dataset}; "
          f"best of {args.steps} steps; torch {torch.__version__}")

    ours, baseline = loader_speed(dataset, args.loader_images)
    print(f"loader images/s per worker: {ours:.0f} (PIL image by image: {baseline:.0f}; ratio {ours / baseline:.2f}x)")

    batch = default_collate(dataset.__getitems__(range(args.batch_size)))
    settings = ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    if device.type == "cuda":
        settings.append("fp16+channels_last")
    if args.compile:
        settings.append("bf16+channels_last+compile")
    results = {}
    for setting in settings:
        results[setting] = time_setting(setting, batch, args.input_shape, args.steps, device)
        r = results[setting]
        print(f"{setting:<28} training pairs/s {r['train']:8.2f}   inference pairs/s {r['infer']:8.2f}   "
              f"peak memory (training) {r['memory']:.0f} MiB", flush=True)
    fp32 = results["fp32"]
    for setting in settings[1:]:
        r = results[setting]
        print(f"ratio {setting} / fp32: training {r['train'] / fp32['train']:.2f}x, "
              f"inference {r['infer'] / fp32['infer']:.2f}x")

    workers = min(args.workers, os.cpu_count() or 1)
    batches = 2 if args.quick else 8
    supply = workers_speed(dataset, args.batch_size, workers, batches, device.type == "cuda")
    demand = 2 * max(r["train"] for r in results.values())  # two images per pair
    print(f"DataLoader with {workers} workers: {supply:.0f} images/s; the fastest training setting uses {demand:.0f} "
          f"images/s ({'keeps up' if supply >= demand else 'the loader is the bottleneck'})")

    times = time_oneshot_task(paths, labels, args.input_shape, args.way, args.steps, device)
    print(f"one {args.way}-way task ({times['pairs']} pairs, fp32, images preprocessed): "
          f"cached embeddings, head only {times['cached'] * 1000:.2f} ms; "
          f"embed the {2 * args.way} images once + head {times['embed_once'] * 1000:.1f} ms; "
          f"every pair through the network {times['full_network'] * 1000:.0f} ms "
          f"({times['full_network'] / times['embed_once']:.1f}x and "
          f"{times['full_network'] / times['cached']:.0f}x slower)")


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))

"""Export trained weights to ONNX, checked against PyTorch with onnxruntime before the file is written.

    python export.py --model_path logs/best_epoch_weights.pth --input_shape 105 105 --out siamese.onnx
    python export.py --model_path logs/best_epoch_weights.pth --input_shape 105 105 --out embedder.onnx --embedder
    python export.py ... --check_images img/alef_1.png img/alef_2.png img/bet_1.png

The pair scorer takes `images1` and `images2`, the embedder `images`: float32 (N, 3, H, W) RGB in [0, 1]
after resize + centre crop, as the predictor prepares them (docs/deploy.md); N is free. The .onnx is
written only once onnxruntime on the CPU has agreed with PyTorch at batch sizes 1 and 3.
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn

from siamese import add_predictor_args, check_predictor_args, predictor_from_args
from utils.errors import ImageError, SaveError, WeightsError, printable
from utils.files import atomic_path, output_problem, remove_stale_temporaries, write_target
from utils.interrupts import exit_on_interrupt

EXTRAS = "export.py needs onnx, onnxscript and onnxruntime: pip install -r requirements-extras.txt"
PROBABILITY_TOLERANCE = 1e-4  # absolute, on similarities in [0, 1]; fp32 on x86 CPUs stays far below it
EMBEDDING_TOLERANCE = 1e-4  # relative to the largest embedding value, since embeddings have no fixed scale
CHECK_BATCH_SIZES = (1, 3)  # neither is the traced example's size, so agreeing at both shows the batch is free
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so the traced example must be larger
SYNTHETIC_IMAGES = 6  # three pairs of different images
OPSET = 20  # torch 2.14's default, pinned so a torch upgrade keeps older runtimes (onnxruntime >= 1.17) working


class PairScorer(nn.Module):
    """The whole network: two (N, 3, H, W) float batches in [0, 1] -> (N,) similarity probabilities."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images1, images2):
        return torch.sigmoid(self.net(images1, images2)).squeeze(1)


class Embedder(nn.Module):
    """The backbone alone: (N, 3, H, W) float batch in [0, 1] -> (N, features) flattened embeddings."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net.embed(images)


def parse_args(argv=None):
    """The command line (`argv`, default sys.argv) -> argparse namespace; argparse's error for an impossible size."""
    parser = argparse.ArgumentParser(description="Export Siamese weights to ONNX, checked with onnxruntime.")
    add_predictor_args(parser)  # the ONNX model takes exactly the input size; --cuda is not used (CPU export)
    parser.add_argument("--out", required=True, help="the .onnx file to write, in an existing folder")
    parser.add_argument("--embedder", action="store_true",
                        help="export the embedder alone (image in, embedding out) instead of the pair scorer")
    parser.add_argument("--check_images", nargs="+", default=[], metavar="IMAGE",
                        help="real images for the parity check (2 or more); default: synthetic ones")
    args = parser.parse_args(argv)
    check_predictor_args(parser, args)
    if len(args.check_images) == 1:
        parser.error("--check_images takes 2 or more images")
    return args


def require_extras():
    """End the program with one line naming what to install when the ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: {EXTRAS}") from None


def check_batches(images, embedder, predictor):
    """Inputs for the parity check at each of CHECK_BATCH_SIZES: a list of tuples of (B, 3, H, W) tensors.

    `images` (paths) are preprocessed as `predictor` does; with none, synthetic 8-bit images are made
    from a fixed seed. The pair scorer gets pairs of different images (i, i + 1), wrapping round.
    """
    if images:
        batch = torch.stack([predictor.preprocess(path) for path in images])
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (SYNTHETIC_IMAGES, 3, *predictor.input_shape),
                                                   dtype=np.uint8)
        batch = torch.from_numpy(pixels).float() / 255  # quantised like a decoded PNG
    batches = []
    for size in CHECK_BATCH_SIZES:
        first = torch.arange(size) % len(batch)
        second = (first + 1) % len(batch)
        batches.append((batch[first],) if embedder else (batch[first], batch[second]))
    return batches


def export_program(module, example, names):
    """torch.onnx.export of `module` traced at `example` with a free batch axis; returns the ONNXProgram.

    `names` are (input names, output names). Raises RuntimeError when the exporter fixed the batch size.
    """
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # the inputs share one batch axis; the exporter warns that it names it only once
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        program = torch.onnx.export(module, example, input_names=names[0], output_names=names[1],
                                    opset_version=OPSET, dynamic_shapes=tuple({0: batch} for _ in example),
                                    dynamo=True, verbose=False)
    if any(isinstance(value.shape[0], int) for value in program.model.graph.inputs):
        raise RuntimeError("torch.onnx.export fixed the batch size of the model; it would score one batch size only")
    return program


def max_difference(module, onnx_path, batches, input_names):
    """Largest |onnxruntime - PyTorch| over `batches` (tuples of input tensors), and PyTorch's largest |output|."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    difference, largest = 0.0, 0.0
    for inputs in batches:
        with torch.inference_mode():
            expected = module(*inputs).numpy()
        got = session.run(None, {name: tensor.numpy() for name, tensor in zip(input_names, inputs)})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime gave shape {got.shape}, PyTorch {expected.shape}")
        difference = max(difference, float(np.abs(got - expected).max()))
        largest = max(largest, float(np.abs(expected).max()))
    return difference, largest


def parity_report(difference, largest, embedder, images):
    """(message, passed): the parity line to print and whether `difference` is within the tolerance."""
    sizes = " and ".join(map(str, CHECK_BATCH_SIZES))
    source = f"{len(images)} images" if images else f"{SYNTHETIC_IMAGES} synthetic images"
    if embedder:
        relative = difference / max(largest, 1e-12)
        what = (f"max |difference| of embeddings {difference:.2e} ({relative:.2e} of the largest value "
                f"{largest:.3g}; tolerance {EMBEDDING_TOLERANCE:.0e})")
        passed = relative <= EMBEDDING_TOLERANCE
    else:
        what = f"max |difference| of similarity {difference:.2e} (tolerance {PROBABILITY_TOLERANCE:.0e})"
        passed = difference <= PROBABILITY_TOLERANCE
    return f"parity, onnxruntime CPU vs PyTorch on {source} at batch sizes {sizes}: {what}", passed


def checked_inputs(args):
    """The network from `args.model_path` and the parity check's batches; one-line errors for bad files. Deletes the
    temporaries that exports killed before they could clean up left beside `args.out` (a 45 MB .onnx each)."""
    problem = output_problem(args.out, "--out")
    if problem:
        raise SystemExit(f"error: {printable(problem)}")
    remove_stale_temporaries(os.path.dirname(write_target(args.out)[0]))
    require_extras()
    try:
        args.cuda = False
        predictor = predictor_from_args(args, verbose=False)
        args.input_shape = predictor.input_shape  # given, or from the weights' settings file
        args.crop_to_ink = predictor.crop_to_ink
        return predictor.net, check_batches(args.check_images, args.embedder, predictor)
    except (WeightsError, ImageError) as e:
        raise SystemExit(f"error: {printable(e)}") from None


def write_checked(module, names, args, batches):
    """Export `module` to a temporary file, compare it with PyTorch on `batches`, and rename it to `args.out`
    only when the difference is within the tolerance; prints the comparison."""
    example = tuple(torch.rand(EXAMPLE_BATCH, 3, *args.input_shape) for _ in names[0])
    program = export_program(module, example, names)
    try:
        with atomic_path(args.out, ".onnx") as tmp:  # renamed to args.out only if the check below passes
            program.save(tmp, external_data=False)  # one self-contained file, so one rename publishes it
            difference, largest = max_difference(module, tmp, batches, names[0])
            message, passed = parity_report(difference, largest, args.embedder, args.check_images)
            print(message)
            if not passed:
                raise SystemExit(f"error: {printable(args.out)} not written: onnxruntime differs from PyTorch beyond "
                                 f"the tolerance")
    except SaveError as e:
        raise SystemExit(f"error: {printable(e)}") from None


def main(argv=None):
    """The command line (`argv`, default sys.argv). Ctrl-C or SIGTERM ends it in one line with the temporary .onnx
    deleted (`atomic_path` deletes it on the way out) and `--out` as it was."""
    args = parse_args(argv)
    with exit_on_interrupt(f"export.py: interrupted; {args.out} not written"):
        net, batches = checked_inputs(args)
        module = (Embedder(net) if args.embedder else PairScorer(net)).eval()
        names = (["images"], ["embeddings"]) if args.embedder else (["images1", "images2"], ["similarity"])
        write_checked(module, names, args, batches)
    kind = "embedder" if args.embedder else "pair scorer"
    height, width = args.input_shape
    print(f"wrote {printable(args.out)}: {net.backbone} {kind}; {', '.join(names[0])} float32 (N, 3, {height}, "
          f"{width}) in [0, 1] -> {names[1][0]}")
    if args.crop_to_ink:
        print("these weights take each image cropped to its ink first (crop_to_ink): docs/deploy.md says how")


if __name__ == "__main__":
    sys.exit(main())

"""Merge independently trained conv4 weights into one network whose similarity averages theirs (an ensemble).

    python -m tools.ensemble runA/last_epoch_weights.pth runB/last_epoch_weights.pth --out ensemble.pth

The file keeps the original's format (a backbone under its name, `fully_connect1` and `fully_connect2`) and its
settings file, so predict.py, eval_oneshot.py and the gallery take it as any weights; scoring costs one network per
member. Members must share the backbone width, input size and framing (`crop_to_ink`, `letterbox_image`).
"""
import argparse
import sys

from nets.siamese import CONV4_CHANNELS, SiameseNetwork, backbone_of, merge_members, split_members
from siamese import check_feature_count
from utils.errors import SaveError, WeightsError, printable
from utils.files import atomic_save, output_problem
from utils.interrupts import exit_on_interrupt
from utils.weights import load_exact, read_weights, write_settings

FRAMING = ("input_shape", "crop_to_ink", "letterbox_image")  # what every member must have been trained with


def parse_args(argv=None):
    """The command line (`argv`, default sys.argv) -> argparse namespace; argparse's error for fewer than 2 files."""
    parser = argparse.ArgumentParser(prog="python -m tools.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("weights", nargs="+", help="weights files of this project's conv4 backbones (with their .json)")
    parser.add_argument("--out", required=True, help="the merged weights file to write (its .json beside it)")
    args = parser.parse_args(argv)
    if len(args.weights) < 2:
        parser.error("give at least 2 weights files to merge")
    return args


def read_member(path):
    """(state dict, backbone name, framing settings) of one member; WeightsError naming `path` when it cannot be one."""
    state, recorded, _ = read_weights(path)
    backbone = recorded.get("backbone") or backbone_of(state)
    if split_members(backbone)[0] not in CONV4_CHANNELS:
        raise WeightsError(f"{path}: backbone {backbone}; only conv4 networks merge (their layers sit side by side)")
    missing = [name for name in FRAMING if name not in recorded]
    if missing:
        raise WeightsError(f"{path}: no settings file beside it records {', '.join(missing)}; merge weights this "
                           f"project's training wrote")
    check_feature_count(state, recorded["input_shape"], backbone, path)
    load_exact(SiameseNetwork(recorded["input_shape"], backbone), state, path)
    return state, backbone, {name: recorded[name] for name in FRAMING}


def merge_files(paths, out):
    """Merge the weights files `paths` into `out` (and its settings file), each written atomically -> backbone name.

    Raises WeightsError naming the file at fault, SaveError when `out` cannot be written.
    """
    members = [read_member(path) for path in paths]
    for path, member in zip(paths[1:], members[1:]):
        problem = difference(member, members[0])
        if problem:
            raise WeightsError(f"{path}: {problem} in {paths[0]}; members must be trained alike")
    name, state = merge_members([state for state, _, _ in members], [backbone for _, backbone, _ in members])
    atomic_save(state, out)
    write_settings(out, {"backbone": name, **members[0][2], "threshold": 0.5, "members": [str(p) for p in paths]})
    return name


def difference(member, first):
    """What sets `read_member`'s `member` apart from `first` ("input_shape [48, 48] against [32, 32]"), or ""."""
    (_, backbone, framing), (_, first_backbone, first_framing) = member, first
    if split_members(backbone)[0] != split_members(first_backbone)[0]:
        return f"backbone {backbone} against {first_backbone}"
    return ", ".join(f"{name} {framing[name]} against {first_framing[name]}" for name in FRAMING
                     if framing[name] != first_framing[name])


def main(argv=None):
    """The command line; a bad file, Ctrl-C or SIGTERM ends it in one line, `--out` as it was."""
    args = parse_args(argv)
    problem = output_problem(args.out, "--out")
    if problem:
        raise SystemExit(f"error: {printable(problem)}")
    with exit_on_interrupt(f"interrupted; {args.out} not written"):
        try:
            name = merge_files(args.weights, args.out)
        except (WeightsError, SaveError) as e:
            raise SystemExit(f"error: {printable(e)}") from None
    print(f"wrote {printable(args.out)}: {name}, the mean similarity of {len(args.weights)} networks")


if __name__ == "__main__":
    sys.exit(main())

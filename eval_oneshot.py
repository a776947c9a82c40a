"""One-shot evaluation of trained Siamese weights.

    python eval_oneshot.py --runs all_runs --model_path W.pth                   # Lake's 20 official runs
    python eval_oneshot.py --dataset dataset/images_evaluation --way 20 --shot 1 --trials 400 --within_alphabet True
    python eval_oneshot.py --verify --dataset DIR --pairs 2000                  # ROC AUC and where to cut
    python eval_oneshot.py --bench --runs all_runs                              # cached vs full-network timing
"""
import argparse
import sys

from siamese import add_predictor_args, predictor_from_args
from utils.checkpoint import WeightsError
from utils.config import parse_bool
from utils.dataloader import DataError
from utils.oneshot import (benchmark_task, evaluate_folder, evaluate_runs, evaluate_verification, list_classes,
                           list_runs, parse_run, sample_tasks)
from utils.utils import ImageError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="One-shot classification, verification and timing of Siamese weights.")
    add_predictor_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", help="Lake's all_runs folder (run01 ... run20)")
    source.add_argument("--dataset", help="<alphabet>/<character>/<image> or <class>/<image> folder")
    parser.add_argument("--own_data", type=parse_bool, default=None, metavar="True|False",
                        help="two-level <class>/<image> layout (default: detected)")
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--within_alphabet", type=parse_bool, default=False, metavar="True|False",
                        help="draw all classes of a task from one alphabet (Lake's protocol does)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true", help="pair verification: ROC AUC and the best threshold")
    parser.add_argument("--pairs", type=int, default=1000, help="labelled pairs for --verify (half same class)")
    parser.add_argument("--bench", action="store_true",
                        help="time one 20-way task: cached embeddings vs every pair through the full network")
    parser.add_argument("--repeats", type=int, default=3, help="--bench: best of this many timings")
    args = parser.parse_args(argv)
    if args.verify and not args.dataset:
        parser.error("--verify needs --dataset")
    if min(args.way, args.shot, args.trials, args.pairs, args.repeats) < 1 or args.way < 2:
        parser.error("--way must be at least 2; --shot, --trials, --pairs and --repeats at least 1")
    return args


def bench_images(args):
    """Queries and candidates, one per class, for --bench: the first run of --runs, or --way classes of --dataset."""
    if args.runs:
        test_paths, training_paths, _ = parse_run(list_runs(args.runs)[0])
        return test_paths, training_paths
    paths, labels, _, groups = list_classes(args.dataset, args.own_data)
    _, supports, _ = sample_tasks(labels, groups, way=args.way, shot=2, trials=1, seed=args.seed)[0]
    return [paths[row[1]] for row in supports], [paths[row[0]] for row in supports]


def report_bench(model, args):
    queries, candidates = bench_images(args)
    times = benchmark_task(model, queries, candidates, repeats=args.repeats)
    print(f"{len(candidates)}-way task, {times['pairs']} pairs, input {model.input_shape}, device {model.device}, "
          f"best of {args.repeats} (images preprocessed beforehand):")
    rows = (("cached embeddings, head only", times["cached"]),
            (f"embed the {len(queries) + len(candidates)} images once + head", times["embed_once"]),
            (f"all {times['pairs']} pairs through the full network", times["full_network"]))
    for label, seconds in rows:
        print(f"  {label:<42s}{seconds * 1000:10.2f} ms")
    print(f"  speed-up: {times['full_network'] / times['embed_once']:.1f}x (embed once), "
          f"{times['full_network'] / times['cached']:.0f}x (cached)")


def report_runs(model, args):
    result = evaluate_runs(model, args.runs, seed=args.seed)
    for name, error in zip(result["runs"], result["errors"]):
        print(f"{name}: error {error:5.1f}%")
    print(f"mean error over {len(result['runs'])} runs: {result['error']:.1f}% (+-{result['ci95']:.1f}%, 95% CI)  "
          f"[Lake et al.: humans 4.5%, Koch et al. Siamese 8.0%, Modified Hausdorff 38.8%]")


def report_folder(model, args):
    result = evaluate_folder(model, args.dataset, args.way, args.shot, args.trials, args.within_alphabet,
                             args.seed, args.own_data)
    where = "within alphabet" if args.within_alphabet else "across the folder"
    print(f"{args.way}-way {args.shot}-shot, {args.trials} trials ({where}, {result['images']} images embedded): "
          f"accuracy {100 * result['accuracy']:.1f}% +- {100 * result['ci95']:.1f}% (95% CI), "
          f"chance {100 * result['chance']:.1f}%")


def report_verify(model, args):
    result = evaluate_verification(model, args.dataset, args.pairs, args.seed, args.own_data)
    print(f"{result['pairs']} pairs ({result['positives']} same class): ROC AUC {result['auc']:.4f}")
    for name, at in (("best threshold", result["best"]), ("threshold 0.5", result["at_0.5"])):
        print(f"  {name:15s} {at['threshold']:.4f}: accuracy {100 * at['accuracy']:.1f}%, "
              f"precision {100 * at['precision']:.1f}%, recall {100 * at['recall']:.1f}%")


def main(argv=None):
    args = parse_args(argv)
    try:
        model = predictor_from_args(args, verbose=False)
        if args.bench:
            report_bench(model, args)
        elif args.verify:
            report_verify(model, args)
        elif args.runs:
            report_runs(model, args)
        else:
            report_folder(model, args)
    except (WeightsError, DataError, ImageError) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    sys.exit(main())

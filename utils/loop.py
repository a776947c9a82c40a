"""One pass over a loader (the training step and the validation pass, with tqdm bars), and embedding images."""
import contextlib
import math
import signal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.distributed import all_ranks_finite, all_reduce_sum
from utils.errors import NonFiniteLoss
from utils.images import preprocess, to_float


def split_pairs(images, labels, device, channels_last=False):
    """A collated batch (B, 2 pairs, 2 sides, 3, H, W), uint8 from the loader -> the two sides as float
    (2B, 3, H, W) in [0, 1] on `device`, and labels (2B,)."""
    images = to_float(images.to(device, non_blocking=True).flatten(0, 1))  # converted after the copy: 4x fewer bytes
    labels = labels.to(device, non_blocking=True).flatten()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    first = images[:, 0].contiguous(memory_format=memory_format)
    second = images[:, 1].contiguous(memory_format=memory_format)
    return first, second, labels


def score_batch(model, images, labels, device, channels_last=False):
    """A batch from the loader -> (logits, targets) of its pairs, both (P,) on `device`.

    Pair items (`SiameseDataset`: images 6-D) give their 2B pairs; a class batch (`ClassBatches`:
    images (B, 3, H, W), labels the classes) gives all B(B-1)/2 pairs, each image through the backbone once.
    """
    if images.dim() == 6:
        first, second, targets = split_pairs(images, labels, device, channels_last)
        return model(first, second).squeeze(1), targets
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = to_float(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    pairs = torch.triu_indices(len(labels), len(labels), 1, device=device)
    return model(images, pairs=pairs).squeeze(1), (labels[pairs[0]] == labels[pairs[1]]).float()


@contextlib.contextmanager
def sigint_deferred():
    """Hold SIGINT (Ctrl-C) until the block ends, where it is delivered; a no-op without pthread_sigmask."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ranking_loss(logits, labels):
    """Logits (P,) of a class batch's pairs in `torch.triu_indices` order and its labels (B,) -> the mean, over
    every (image, same-class image), of the cross-entropy of picking that image among it and all the first
    image's other-class images: the one-shot task itself, as a softmax over the head's logits."""
    count = len(labels)
    pairs = torch.triu_indices(count, count, 1, device=logits.device)
    scores = logits.new_full((count, count), -1e4)  # finite: -inf would give inf - inf on the diagonal
    scores = scores.index_put((pairs[0], pairs[1]), logits).index_put((pairs[1], pairs[0]), logits)
    same = labels[:, None] == labels[None, :]
    negatives = torch.logsumexp(scores.masked_fill(same, -1e4), dim=1, keepdim=True)
    positives = same & ~torch.eye(count, dtype=torch.bool, device=logits.device)
    return (torch.logaddexp(scores, negatives) - scores)[positives].mean()


def balanced_weights(targets):
    """(P,) weights summing to 1 with which positives and negatives count half each; a plain mean for
    balanced pair items."""
    positives = targets.sum()
    negatives = len(targets) - positives
    return torch.where(targets > 0.5, 0.5 / positives.clamp(min=1), 0.5 / negatives.clamp(min=1))


NOT_LEARNING_HINT = ("from scratch, try --backbone resnet18 --pairing batch --loss bce_ranking --augmentation affine, "
                     "and Adam rather than SGD (the README's Training section)")


def not_learning(loss, acc):
    """True when a mean pair loss and accuracy are what a network that ignores its input gets (ln 2, 0.5)."""
    return abs(loss - math.log(2)) < 0.01 and abs(acc - 0.5) < 0.05


def run_epoch(model, loader, device, optimizer=None, scaler=None, amp_dtype=None, channels_last=False,
              desc="", lr=None, show=True, log_interval=10, check_learning_at=None, ranking=False):
    """Train (when `optimizer` is given) or validate over `loader`.

    The running sums stay on the device; the host reads them, and every rank checks they are finite,
    only every `log_interval` steps and at the end. At the first reading from step `check_learning_at`
    on, a warning is printed when the last `log_interval` steps look like no learning (`not_learning`).
    Returns {"loss": BCE per pair, "acc": fraction of pairs whose rounded sigmoid equals the label},
    with positive and negative pairs weighted equally (`balanced_weights`) and averaged over the steps of
    all ranks. `ranking` adds `ranking_loss` to the training step's BCE for class batches; the returned loss
    stays the BCE. Raises NonFiniteLoss when the loss became NaN or inf.
    """
    training = optimizer is not None
    model.train(training)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count, last = 0, (0.0, 0.0, 0)  # (loss sum, accuracy sum, steps) at the previous reading
    bar = tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True, leave=True)
    for step, (images, labels) in enumerate(bar, 1):
        with torch.set_grad_enabled(training), \
                torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits, targets = score_batch(model, images, labels, device, channels_last)
        weights = balanced_weights(targets)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, weights, reduction="sum")
        if training:
            total = loss + ranking_loss(logits.float(), labels.to(device)) if ranking and images.dim() == 4 else loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            with sigint_deferred():  # a Ctrl-C inside the step would save a half-built Adam state
                scaler.step(optimizer)
            scaler.update()
        loss_sum += loss.detach()
        correct += (weights * ((logits.detach() > 0) == (targets > 0.5))).sum()
        count += 1
        if step % log_interval == 0 or step == len(loader):
            check_finite(loss_sum, f"{desc}: the loss became {{}} by step {step}; lower Init_lr or check the data")
            now = (loss_sum.item(), correct.item(), count)
            shown = {"loss": f"{now[0] / count:.4f}", "acc": f"{now[1] / count:.3f}"}
            bar.set_postfix(**shown, **({"lr": f"{lr:.2e}"} if lr else {}))
            if check_learning_at is not None and step >= check_learning_at:
                check_learning_at = None
                window_loss, window_acc = ((a - b) / (now[2] - last[2]) for a, b in zip(now[:2], last[:2]))
                if show and not_learning(window_loss, window_acc):
                    tqdm.write(f"Warning: {desc}, step {step}: loss {window_loss:.3f} (ln 2 = 0.693) and accuracy "
                               f"{window_acc:.2f}, the network is not learning yet; {NOT_LEARNING_HINT}")
            last = now
    bar.close()
    loss_total, correct_total, count = all_reduce_sum([loss_sum.item(), correct.item(), count], device)
    return {"loss": loss_total / max(count, 1), "acc": correct_total / max(count, 1)}


def check_finite(loss_sum, message):
    """Raise NonFiniteLoss with `message` (formatted with the value) unless `loss_sum` is finite on every rank."""
    if not all_ranks_finite(loss_sum):
        raise NonFiniteLoss(message.format(loss_sum.item()))


@torch.inference_mode()
def embed_images(net, images, input_shape, device, letterbox_image=False, batch_size=64, progress=False,
                 desc="embedding"):
    """A list of PIL images, uint8 tensors or paths -> (N, flat) float32 features of `net.embed` on the CPU.

    Each image gets `preprocess` at `input_shape`, `batch_size` at a time; `progress` shows a tqdm bar.
    The one embedding path of prediction, evaluation, gallery search and the per-epoch one-shot check;
    `net` should be in eval mode.
    """
    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(image, input_shape, letterbox_image)
                                 for image in images[start:start + batch_size]])
            chunks.append(net.embed(batch.to(device)).float().cpu())
            bar.update(len(batch))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)

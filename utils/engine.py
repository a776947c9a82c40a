"""The training epoch and the validation pass (with tqdm bars), and stopping a run cleanly at a step boundary."""
import signal
from collections import namedtuple

import torch
from tqdm import tqdm

from utils.dataloader import ClassBatch
from utils.distributed import all_ranks_finite, all_reduce_sum, any_rank
from utils.errors import NonFiniteLoss
from utils.images import to_float
from utils.losses import cosine_ranking_loss, not_learning, pair_bce, ranking_loss
from utils.precision import autocast, memory_format
from utils.weights import unwrap

NOT_LEARNING_HINT = ("from scratch, try python train.py config/omniglot_scratch.py (conv4, class batches, the ranking "
                     "term, stroke augmentation, Adam; the README's Training section)")


Scored = namedtuple("Scored", "logits targets pairs embeddings")


def score_batch(model, batch, device, channels_last=False, with_embeddings=False):
    """A `PairBatch` or `ClassBatch` from the loader -> `Scored` (logits, targets, pairs, embeddings) on `device`.

    Pair items give their 2B pairs (pairs and embeddings None); a class batch gives all B(B-1)/2 pairs of its B
    images, each image through the backbone once, with `pairs` (2, P) the images of each pair, and with
    `with_embeddings` the images' (B, flat) embeddings (else None).
    """
    if isinstance(batch, ClassBatch):
        images = to_float(batch.images.to(device, non_blocking=True))  # converted after the copy: 4x fewer bytes
        labels = batch.labels.to(device, non_blocking=True)
        pairs = torch.triu_indices(len(labels), len(labels), 1, device=device)
        out = model(images.contiguous(memory_format=memory_format(channels_last)), pairs=pairs,
                    with_embeddings=with_embeddings)
        logits, embeddings = out if with_embeddings else (out, None)
        return Scored(logits.squeeze(1), (labels[pairs[0]] == labels[pairs[1]]).float(), pairs, embeddings)
    first, second, targets = pair_sides(batch, device, channels_last)
    return Scored(model(first, second).squeeze(1), targets, None, None)


def pair_sides(batch, device, channels_last=False):
    """A `PairBatch` (B items of 2 pairs, uint8) -> the pairs' first and second images as float (2B, 3, H, W) in
    [0, 1] on `device`, and their labels (2B,)."""
    images = to_float(batch.images.to(device, non_blocking=True)).flatten(0, 1)  # (2B pairs, 2 sides, 3, H, W)
    layout = memory_format(channels_last)
    first, second = (images[:, side].contiguous(memory_format=layout) for side in (0, 1))
    return first, second, batch.labels.to(device, non_blocking=True).flatten()


class Meter:
    """One epoch's running sums of the balanced pair loss and accuracy, kept on the device; `state` (plain floats,
    for a checkpoint taken inside the epoch) starts it where an interrupted epoch stood."""

    def __init__(self, device, state=None):
        state = state or {"loss_sum": 0.0, "correct": 0.0, "steps": 0}
        self.loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)
        self.correct = torch.tensor(state["correct"], dtype=torch.float64, device=device)
        self.steps, self.device = state["steps"], device

    def add(self, loss, correct):
        self.loss_sum += loss.detach()
        self.correct += correct.detach()
        self.steps += 1

    def state(self):
        """The sums as plain floats (reading them waits for the device)."""
        return {"loss_sum": self.loss_sum.item(), "correct": self.correct.item(), "steps": self.steps}

    def check_finite(self, what):
        """Raise NonFiniteLoss naming `what` unless the loss sum is finite on every rank."""
        if not all_ranks_finite(self.loss_sum):
            raise NonFiniteLoss(f"{what}: the loss became {self.loss_sum.item()}; lower Init_lr or check the data")

    def means(self):
        """{"loss": mean BCE per step, "acc": mean balanced pair accuracy}, over the steps of every rank."""
        loss, correct, steps = all_reduce_sum(list(self.state().values()), self.device)
        return {"loss": loss / max(steps, 1), "acc": correct / max(steps, 1)}


def step_loss(scored, labels, loss="bce", smoothing=0.0):
    """(loss to minimise, the BCE, weighted correct pairs) of one step's `Scored` pairs; `loss` (a name in LOSSES)
    "bce_ranking" adds `ranking_loss` for class batches, "bce_ranking_cosine" also `cosine_ranking_loss` on their
    embeddings; `smoothing` softens the minimised BCE's targets. The plain BCE is what the epoch reports,
    comparable across runs."""
    logits, targets, pairs, embeddings = scored
    bce, weights = pair_bce(logits, targets)
    correct = (weights * ((logits.detach() > 0) == (targets > 0.5))).sum()
    total = pair_bce(logits, targets, smoothing)[0] if smoothing else bce
    if loss != "bce" and pairs is not None:
        total = total + ranking_loss(logits, labels, pairs)
    if loss == "bce_ranking_cosine" and embeddings is not None:
        total = total + cosine_ranking_loss(embeddings, labels, pairs)
    return total, bce, correct


def train_one_epoch(model, loader, optimizer, scaler, device, meter, *, amp_dtype=None, channels_last=False,
                    loss="bce", smoothing=0.0, desc="", lr=None, show=True, log_interval=10, check_learning_at=None,
                    after_step=None, average=None):
    """Train over `loader` (its sampler set to the epoch and first step), adding each step to `meter`.

    The host reads the sums, and every rank checks they are finite, only every `log_interval` steps and at the
    end. At the first reading from step `check_learning_at` on, a warning says when the last steps look like no
    learning. `after_step(step, meter)`, called after each step with the steps done in the epoch, returns True
    to stop the epoch there. `average` (a torch.optim.swa_utils.AveragedModel) is updated after every step;
    `loss` and `smoothing` are `step_loss`'s.
    Returns True when the epoch ran to its end, False when `after_step` stopped it.
    Raises NonFiniteLoss when the loss became NaN or inf.
    """
    model.train()
    first = meter.steps
    window = (meter.loss_sum.item(), meter.correct.item(), first)  # sums at the previous reading
    bar = tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True, leave=True, initial=first,
               total=first + len(loader))
    for step, batch in enumerate(bar, first + 1):
        with autocast(device, amp_dtype):
            scored = score_batch(model, batch, device, channels_last, with_embeddings=loss == "bce_ranking_cosine")
        labels = batch.labels.to(device) if scored.pairs is not None else None
        total, bce, correct = step_loss(scored, labels, loss, smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update_parameters(unwrap(model))
        meter.add(bce, correct)
        if step % log_interval == 0 or step == first + len(loader):
            meter.check_finite(f"{desc}, step {step}")
            now = (meter.loss_sum.item(), meter.correct.item(), meter.steps)
            bar.set_postfix(loss=f"{now[0] / now[2]:.4f}", acc=f"{now[1] / now[2]:.3f}",
                            **({"lr": f"{lr:.2e}"} if lr else {}))
            if check_learning_at is not None and step >= check_learning_at:
                check_learning_at = None
                warn_if_not_learning(window, now, desc, step, show)
            window = now
        if after_step is not None and after_step(step, meter):
            bar.close()
            return False
    bar.close()
    return True


def warn_if_not_learning(before, now, desc, step, show):
    """Print a warning when the steps between two readings of the sums (loss, correct, steps) look like no learning."""
    steps = now[2] - before[2]
    loss, acc = ((a - b) / max(steps, 1) for a, b in zip(now[:2], before[:2]))
    if show and not_learning(loss, acc):
        tqdm.write(f"Warning: {desc}, step {step}: loss {loss:.3f} (ln 2 = 0.693) and accuracy {acc:.2f}, the "
                   f"network is not learning yet; {NOT_LEARNING_HINT}")


def evaluate_pairs(embedded, steps, device, desc=""):
    """The validation pass from embeddings: `steps`, each (pairs of paths, their labels (P,)) as `PairItems.step_pairs`
    gives them, scored by `embedded` (an `EmbeddedImages`: every image embedded once) -> {"loss", "acc"} as the
    training epoch reports them (per step, over every rank), plus "logits" and "targets" of every pair (on the CPU),
    from which a threshold or a calibration can be chosen. The same figures as scoring the pair items through the
    network, for a quarter of the images (each validation image once instead of once for each pair it is in)."""
    meter, logits_seen, targets_seen = Meter(device), [], []
    for pairs, targets in steps:
        first, second = (embedded.embed([pair[side] for pair in pairs]) for side in (0, 1))
        logits = embedded.score_pairs(first, second, logits=True)
        _, bce, correct = step_loss(Scored(logits.to(device), targets.to(device), None, None), None)
        meter.add(bce, correct)
        logits_seen.append(logits)
        targets_seen.append(targets)
    meter.check_finite(desc)
    return {**meter.means(), "logits": torch.cat(logits_seen), "targets": torch.cat(targets_seen)}


class StopSignals:
    """While the block runs, Ctrl-C (SIGINT) and SIGTERM (timeout, SLURM, Kubernetes, torchrun) ask the run to stop
    at the next step boundary instead of breaking a step wherever they land; more of them while it stops change
    nothing, so an impatient second Ctrl-C cannot break the checkpoint being written.

    `requested()` gives the signal number asked for on any rank (0: none), the same on every rank.
    """

    def __init__(self, show=True):
        self.signal, self.show, self.previous = 0, show, {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, number, frame):
        if self.signal:
            return
        self.signal = number
        if self.show:
            tqdm.write(f"\n{signal.Signals(number).name}: stopping after this step and saving a checkpoint")

    def requested(self):
        return any_rank(self.signal)

"""The training losses: the head's binary cross-entropy on every pair, the ranking term of class batches, and the
same ranking on the cosine of normalised embeddings."""
import math

import torch
import torch.nn.functional as F

LOSSES = ("bce", "bce_ranking", "bce_ranking_cosine")
COSINE_SCALE = 10.0  # a fixed temperature of 0.1: a learned one would add a weight the original's format lacks
FAR_BELOW = -1e4  # a logit no pair reaches; finite, where -inf would give inf - inf on the diagonal


def balanced_weights(targets):
    """(P,) weights summing to 1 with which positives and negatives count half each; a plain mean for
    balanced pair items."""
    positives = targets.sum()
    negatives = len(targets) - positives
    return torch.where(targets > 0.5, 0.5 / positives.clamp(min=1), 0.5 / negatives.clamp(min=1))


def pair_bce(logits, targets, smoothing=0.0):
    """(BCE with positives and negatives weighted half each, the weights): the head's loss and what its accuracy
    is weighted by. `smoothing` s moves the targets to 1 - s/2 and s/2, so no pair is pushed to certainty."""
    weights = balanced_weights(targets)
    soft = targets * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), soft, weights, reduction="sum"), weights


def ranking_loss(logits, labels, pairs):
    """Logits (P,) of a class batch's pairs `pairs` (2, P), each pair once, and the batch's labels (B,) -> the
    mean, over every (image, same-class image), of the cross-entropy of picking that image among it and all the
    first image's other-class images: the one-shot task itself, as a softmax over the head's logits."""
    count = len(labels)
    logits = logits.float()
    scores = logits.new_full((count, count), FAR_BELOW)
    scores = scores.index_put((pairs[0], pairs[1]), logits).index_put((pairs[1], pairs[0]), logits)
    same = labels[:, None] == labels[None, :]
    negatives = torch.logsumexp(scores.masked_fill(same, FAR_BELOW), dim=1, keepdim=True)
    positives = same & ~torch.eye(count, dtype=torch.bool, device=logits.device)
    return (torch.logaddexp(scores, negatives) - scores)[positives].mean()


def cosine_ranking_loss(embeddings, labels, pairs, scale=COSINE_SCALE):
    """`ranking_loss` with each pair's logit `scale` x the cosine of its two embeddings (B, F): the one-shot
    softmax on the direction of the features alone, whatever their length, beside the head's."""
    unit = F.normalize(embeddings.float().flatten(1), dim=1)
    return ranking_loss(scale * (unit[pairs[0]] * unit[pairs[1]]).sum(1), labels, pairs)


def not_learning(loss, acc):
    """True when a mean pair loss and accuracy are what a network that ignores its input gets (ln 2, 0.5)."""
    return abs(loss - math.log(2)) < 0.01 and abs(acc - 0.5) < 0.05

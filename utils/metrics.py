"""Figures of merit: intervals, ROC AUC and curve, thresholds, and how well similarities are calibrated."""
import math

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile
ECE_BINS = 10


def mean_ci(outcomes):
    """(mean, 95% confidence half-width) of a list of numbers (normal approximation)."""
    values = np.asarray(outcomes, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(Z95 * values.std(ddof=1) / math.sqrt(len(values)))


def roc_auc(scores, labels):
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based rank within ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def metrics_at(scores, labels, threshold):
    """Accuracy, precision and recall when pairs scoring >= `threshold` are called the same class."""
    predicted, labels = np.asarray(scores) >= threshold, np.asarray(labels).astype(bool)
    true_positives = int((predicted & labels).sum())
    return {
        "threshold": float(threshold),
        "accuracy": float((predicted == labels).mean()),
        "precision": true_positives / int(predicted.sum()) if predicted.any() else 0.0,
        "recall": true_positives / int(labels.sum()) if labels.any() else 0.0,
    }


def best_threshold(scores, labels):
    """The score threshold (predict same when score >= it) with the highest accuracy on these pairs."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    true_positives, false_positives = np.cumsum(hits), np.cumsum(~hits)
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)  # cut only between different scores
    correct = true_positives + (~labels).sum() - false_positives
    correct = np.where(last_of_tie, correct, -1)
    if correct.max() < (~labels).sum():  # calling nothing "same" is better
        return float(np.nextafter(ranked[0], np.inf)) if len(ranked) else 0.5
    return float(ranked[int(np.argmax(correct))])


def threshold_to_record(scores, labels, z=3.0):
    """The threshold a weights file records from these labelled pairs: 0.5, where a calibrated similarity says
    "more likely the same than not", unless `best_threshold` beats it by more than `z` standard errors of
    McNemar's test on the pairs the two call differently; then the best. Validation pairs of the training classes
    are easier than new ones, so a cut that only fits their few mistakes is noise that costs on new data."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    best = best_threshold(scores, labels)
    differ = (scores >= best) != (scores >= 0.5)
    gain = int((((scores >= best) == labels) & differ).sum()) - int((((scores >= 0.5) == labels) & differ).sum())
    return best if gain > z * math.sqrt(differ.sum()) else 0.5


def verification_metrics(scores, labels, threshold=None):
    """ROC AUC, the best-accuracy threshold with its accuracy/precision/recall, the same at 0.5 and at `threshold`
    (the weights' recorded one, when given), and the expected calibration error."""
    best = best_threshold(scores, labels)
    result = {"auc": roc_auc(scores, labels), "best": metrics_at(scores, labels, best),
              "at_0.5": metrics_at(scores, labels, 0.5), "ece": expected_calibration_error(scores, labels),
              "pairs": len(labels), "positives": int(np.sum(labels))}
    if threshold is not None:
        result["recorded"] = metrics_at(scores, labels, threshold)
    return result




def roc_curve(scores, labels):
    """(false positive rates, true positive rates, thresholds) of calling pairs scoring >= each threshold the same,
    from the highest score down; both rates start at 0 (threshold above every score) and end at 1."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    true_positives, false_positives = np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
    tpr = np.concatenate([[0.0], true_positives / max(hits.sum(), 1)])
    fpr = np.concatenate([[0.0], false_positives / max((~hits).sum(), 1)])
    return fpr, tpr, np.concatenate([[np.inf], ranked[last_of_tie]])


def reliability_bins(scores, labels, bins=ECE_BINS):
    """Equal-width bins of the similarity over [0, 1]: (pairs in each, mean similarity in each, fraction of same
    pairs in each); empty bins hold NaN means. The last bin includes 1."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        confidence = np.bincount(index, scores, minlength=bins) / counts
        frequency = np.bincount(index, labels, minlength=bins) / counts
    return counts, confidence, frequency


def expected_calibration_error(scores, labels, bins=ECE_BINS):
    """The expected calibration error of similarities as probabilities of "same": over equal-width bins, the
    pair-weighted mean of |mean similarity - fraction of same pairs|."""
    counts, confidence, frequency = reliability_bins(scores, labels, bins)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(confidence[used] - frequency[used])) / max(counts.sum(), 1))


def platt_scaling(logits, targets, steps=100):
    """(scale, shift) such that sigmoid(scale * logit + shift) is the best-calibrated probability of these labelled
    pairs (the binary cross-entropy is least), by Newton's method with backtracking on the two numbers; scale stays
    positive, so the order of the scores, and every ranking, is kept."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    features = np.stack([logits, np.ones_like(logits)], 1)

    def loss(params):
        z = features @ params
        return float(np.mean(np.logaddexp(0, z) - targets * z))

    params = np.array([1.0, 0.0])
    for _ in range(steps):
        probabilities = 1 / (1 + np.exp(-np.clip(features @ params, -60, 60)))
        gradient = features.T @ (probabilities - targets)
        hessian = features.T @ (features * (probabilities * (1 - probabilities))[:, None]) + 1e-9 * np.eye(2)
        update, step, before = np.linalg.solve(hessian, gradient), 1.0, loss(params)
        while step > 1e-6 and loss(params - step * update) > before:  # a full Newton step can overshoot
            step /= 2
        params = params - step * update
        if np.abs(step * update).max() < 1e-10:
            break
    return max(float(params[0]), 1e-3), float(params[1])

"""Scoring the pairs a CSV lists: reading the file, embedding each distinct image once, scoring by the head."""
import csv
import io
import os

import torch

from utils.errors import DataError
from utils.gallery import embed_files
from utils.images import is_image_file

def is_header(fields, folder):
    """True when a first CSV row names columns, not images: neither of its first two fields is a file (relative
    to `folder`) or has an image extension, and its third field, if any, is not a 0/1 label."""
    if len(fields) > 2 and fields[2] in ("0", "1"):
        return False
    return not any(is_image_file(field) or os.path.isfile(os.path.join(folder, field)) for field in fields[:2])


def read_csv_rows(path):
    """The non-blank rows of a CSV file -> [(line number, stripped fields)]; raises DataError naming the file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {'is a directory, not a CSV file' if os.path.isdir(path) else 'no such file'}")
    try:
        with open(path, "rb") as file:
            data = file.read()
        text = data.decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is no part of the first path
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: {e.strerror or e}") from None
    rows, reader, start = [], csv.reader(io.StringIO(text, newline=""), strict=True), 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                rows.append((start, [field.strip() for field in fields]))
            start = reader.line_num + 1  # a quoted field may span lines: a row is named by its first
    except csv.Error as e:
        raise DataError(f"{path}:{start}: not valid CSV ({e})") from None
    return rows


def read_pairs(path):
    """A pairs CSV -> (header or None, [(line number, fields)]), each row image_1, image_2 and maybe a 0/1 label.

    Every row has the first row's number of fields (2, or 3 with labels). Raises DataError naming the
    file and line of the first malformed row.
    """
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: no pairs listed")
    (first_number, first), width = rows[0], len(rows[0][1])
    if width not in (2, 3):
        raise DataError(f"{path}:{first_number}: expected 2 or 3 fields (image_1,image_2[,label]), got {width}")
    header = rows.pop(0)[1] if is_header(first, os.path.dirname(path)) else None
    for number, fields in rows:
        if len(fields) != width:
            raise DataError(f"{path}:{number}: expected {width} fields like line {first_number} "
                            f"(image_1,image_2{',label' if width == 3 else ''}), got {len(fields)}")
        if not all(fields[:2]) or any("\n" in field or "\r" in field for field in fields):
            raise DataError(f"{path}:{number}: an empty image path, or a field running over lines (a stray quote?)")
        if width == 3 and fields[2] not in ("0", "1"):
            raise DataError(f"{path}:{number}: the label must be 0 (different) or 1 (same), not {fields[2]!r}")
    if not rows:
        raise DataError(f"{path}: no pairs listed after the header")
    return header, rows


def resolve_pairs(pairs_path, rows):
    """The (path_1, path_2) of each read row, relative paths taken from the CSV's folder; absolute and normalised,
    so one image written two ways is embedded once."""
    folder = os.path.dirname(os.path.abspath(pairs_path))
    return [tuple(os.path.normpath(os.path.join(folder, f)) for f in fields[:2]) for _, fields in rows]


def score_path_pairs(model, pairs, progress=True):
    """Similarities of (path_1, path_2) pairs, every distinct image embedded once and pairs scored by the head.

    Returns (scores, unreadable, embedded): a float per pair (None when an image is unreadable), the
    {path: message} of unreadable images, and how many images were embedded.
    """
    distinct = list(dict.fromkeys(path for pair in pairs for path in pair))
    rows, errors = embed_files(model, distinct, progress, desc="embedding pair images")
    position = {distinct[i]: n for n, i in enumerate(rows)}
    embeddings = torch.stack(list(rows.values())) if rows else torch.empty(0, 0)
    unreadable = {distinct[i]: message for i, message in errors.items()}
    scorable = [n for n, (a, b) in enumerate(pairs) if a in position and b in position]
    similarities = model.score_indexed(embeddings, [position[pairs[n][0]] for n in scorable],
                                       [position[pairs[n][1]] for n in scorable]).tolist()
    scores = [None] * len(pairs)
    for n, score in zip(scorable, similarities):
        scores[n] = score
    return scores, unreadable, len(position)


def scores_csv(header, rows, scores, pairs, unreadable, threshold=0.5):
    """The output CSV as text: each input row (and the header, or default names) plus similarity, same (1 when the
    similarity reaches `threshold`, else 0; named predicted_same when the header has a column "same") and error."""
    names = header or ["image_1", "image_2", "label"][:len(rows[0][1])]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names + ["similarity", "predicted_same" if "same" in names else "same", "error"])
    for (_, fields), pair, score in zip(rows, pairs, scores):
        error = "; ".join(unreadable[path] for path in dict.fromkeys(pair) if path in unreadable)
        same = "" if score is None else int(score >= threshold)
        writer.writerow(fields + ["" if score is None else f"{score:.6f}", same, error])
    return out.getvalue()

"""Scoring the pairs a CSV lists: reading the file, embedding each distinct image once, scoring by the head.

The CSV is streamed: reading keeps the distinct image paths and, per row, its line, two indices and a label (about
25 bytes a row, whatever the paths); the scores CSV is written row by row while the pairs CSV is read a second time.
"""
import csv
import io
import os
import sys
from array import array
from dataclasses import dataclass, field

import torch

from utils.errors import DataError, printable
from utils.files import MAX_CSV_LINE_CHARS, open_regular
from utils.gallery import embed_files
from utils.images import is_image_file

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula (OWASP)


@dataclass
class PairList:
    """What scoring a pairs CSV needs of it: the header (or None), the number of fields per row, the
    distinct images (absolute, normalised paths) with the first line naming each, and per row the line number, the
    index of each image in `paths` and the label (-1 without labels)."""
    header: list = None
    width: int = 0
    paths: list = field(default_factory=list)
    first_lines: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))
    first: array = field(default_factory=lambda: array("q"))
    second: array = field(default_factory=lambda: array("q"))
    labels: array = field(default_factory=lambda: array("b"))

    def __len__(self):
        return len(self.first)


def is_header(fields, folder):
    """True when a first CSV row names columns, not images: neither of its first two fields is a file (relative
    to `folder`) or has an image extension, and its third field, if any, is not a 0/1 label."""
    if len(fields) > 2 and fields[2] in ("0", "1"):
        return False
    return not any(is_image_file(field) or os.path.isfile(os.path.join(folder, field)) for field in fields[:2])


def csv_rows(path):
    """Yield (line number, stripped fields) for each non-blank line of the CSV file `path`, one line read at a time.

    A row is one line: a quoted field cannot run over lines. Raises DataError naming the file (and line) when it is
    not a regular file, not UTF-8, not valid CSV or has a line longer than MAX_CSV_LINE_CHARS.
    """
    with open_regular(path, None, DataError, "a CSV file") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # -sig: a spreadsheet's byte-order mark
        number = 0
        while True:
            number += 1
            try:
                line = text.readline(MAX_CSV_LINE_CHARS + 1)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not UTF-8 text ({e.reason})") from None
            except OSError as e:
                raise DataError(f"{path}: {e.strerror or e}") from None
            if not line:
                return
            if len(line) > MAX_CSV_LINE_CHARS:
                raise DataError(f"{path}:{number}: a line longer than {MAX_CSV_LINE_CHARS:,} characters")
            try:
                fields = next(csv.reader([line], strict=True), [])
            except csv.Error as e:
                hint = "; a quoted field running over lines, a stray quote?" if "end of data" in str(e) else ""
                raise DataError(f"{path}:{number}: not valid CSV ({e}{hint})") from None
            if any(field.strip() for field in fields):
                yield number, [field.strip() for field in fields]


def check_row(path, number, fields, width, first_number):
    """Raise DataError naming the file and line when a data row is not image_1,image_2[,label] like the first."""
    if len(fields) != width:
        raise DataError(f"{path}:{number}: expected {width} fields like line {first_number} "
                        f"(image_1,image_2{',label' if width == 3 else ''}), got {len(fields)}")
    if not all(fields[:2]):
        raise DataError(f"{path}:{number}: an empty image path")
    if width == 3 and fields[2] not in ("0", "1"):
        raise DataError(f"{path}:{number}: the label must be 0 (different) or 1 (same), not {fields[2]!r}")


def first_row(path):
    """(line number, fields) of the first non-blank row of a pairs CSV, which sets the number of fields; raises
    DataError naming the file when there is none or it has neither 2 nor 3 fields."""
    number, fields = next(csv_rows(path), (0, None))
    if fields is None:
        raise DataError(f"{path}: no pairs listed")
    if len(fields) not in (2, 3):
        raise DataError(f"{path}:{number}: expected 2 or 3 fields (image_1,image_2[,label]), got {len(fields)}")
    return number, fields


def data_rows(path, header):
    """Yield (line number, fields) of every data row of a pairs CSV, each checked like the first row; the first row
    is left out when `header`."""
    rows = csv_rows(path)
    first_number, first = next(rows)
    if not header:
        yield first_number, first
    for number, fields in rows:
        check_row(path, number, fields, len(first), first_number)
        yield number, fields


def read_pairs(path):
    """A pairs CSV -> PairList, read line by line; each row image_1, image_2 and maybe a 0/1 label.

    Every row has the first row's number of fields (2, or 3 with labels); a first row taken as a header is said on
    stderr, naming the file and line. Relative paths are read from the CSV's folder; paths are normalised, so one
    image written two ways is embedded once. Raises DataError naming the file and line of the first malformed row.
    """
    folder = os.path.dirname(os.path.abspath(path))
    first_number, first = first_row(path)
    pairs, index = PairList(width=len(first)), {}
    if is_header(first, os.path.dirname(path)):
        pairs.header = first
        print(f"note: {printable(path)}:{first_number}: the first line ({printable(','.join(first))}) is taken as a "
              f"header: neither of its first two fields is a file or has an image extension", file=sys.stderr)
    else:
        check_row(path, first_number, first, len(first), first_number)
    for number, fields in data_rows(path, pairs.header is not None):
        for images, name in ((pairs.first, fields[0]), (pairs.second, fields[1])):
            image = os.path.normpath(os.path.join(folder, name))
            if image not in index:
                index[image] = len(pairs.paths)
                pairs.paths.append(image)
                pairs.first_lines.append(number)
            images.append(index[image])
        pairs.lines.append(number)
        pairs.labels.append(int(fields[2]) if len(fields) == 3 else -1)
    if not len(pairs):
        raise DataError(f"{path}: no pairs listed after the header")
    return pairs


def score_path_pairs(model, pairs, progress=True):
    """Similarities of a PairList's pairs, every distinct image embedded once and pairs scored by the head.

    Returns (scores, unreadable, embedded): a float32 tensor with a similarity per row (NaN where an image is
    unreadable), the {index in pairs.paths: message} of unreadable images, and how many images were embedded.
    """
    rows, unreadable = embed_files(model, pairs.paths, progress, desc="embedding pair images")
    position = torch.full((len(pairs.paths),), -1, dtype=torch.long)
    position[list(rows)] = torch.arange(len(rows))
    embeddings = torch.stack(list(rows.values())) if rows else torch.empty(0, 0)
    first, second = position[torch.frombuffer(pairs.first, dtype=torch.int64)], \
        position[torch.frombuffer(pairs.second, dtype=torch.int64)]
    scorable = (first >= 0) & (second >= 0)
    scores = torch.full((len(pairs),), float("nan"))
    scores[scorable] = model.score_indexed(embeddings, first[scorable], second[scorable]).float()
    return scores, unreadable, len(rows)


def csv_cell(text):
    """`text` as a cell a spreadsheet shows and never runs: one starting with =, +, -, @, a tab or a carriage
    return (a formula, e.g. =HYPERLINK(...)) gets a single quote in front, as OWASP advises."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def write_scores_csv(file, pairs_path, pairs, scores, unreadable, threshold=0.5):
    """Write the scores CSV to the text `file` row by row, reading `pairs_path` again: each input row (and the header,
    or default names) plus similarity, same (1 when the similarity reaches `threshold`, else 0; named predicted_same
    when the header has a column "same") and error. Every cell goes through `csv_cell`. Raises DataError when the
    pairs file no longer holds the rows `pairs` was read from."""
    names = pairs.header or ["image_1", "image_2", "label"][:pairs.width]
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow([csv_cell(name) for name in names + ["similarity", "predicted_same" if "same" in names else
                                                          "same", "error"]])
    count = 0
    for number, fields in data_rows(pairs_path, pairs.header is not None):
        if count == len(pairs) or number != pairs.lines[count]:
            raise DataError(f"{pairs_path}:{number}: the file changed while its pairs were scored; score it again")
        score, images = float(scores[count]), dict.fromkeys((pairs.first[count], pairs.second[count]))
        error = "; ".join(unreadable[image] for image in images if image in unreadable)
        cells = ["", "", error] if score != score else [f"{score:.6f}", str(int(score >= threshold)), error]  # NaN
        writer.writerow([csv_cell(cell) for cell in fields + cells])
        count += 1
    if count != len(pairs):
        raise DataError(f"{pairs_path}: the file changed while its pairs were scored; score it again")

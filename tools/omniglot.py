"""The official Omniglot zips: download (or take from a local folder), verify and unpack them.

    python -m tools.datasets omniglot [--out dataset] [--from DIR] [--zips NAME ...]

A zip is trusted only as far as Omniglot goes: every member is a small deflated or stored PNG at
<zip name>/<alphabet>/<character>/, the declared sizes fit what the official zips hold, and each member is read with
a bounded read, so a zip bomb, a member that lies about its size, damaged bytes or an encrypted member is one
DataError naming the zip and the member. Unpacking builds the complete folder in a temporary folder beside it and
swaps it in with two renames: an interruption leaves the folder as it was.
"""
import contextlib
import os
import shutil
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from utils.errors import DataError
from utils.files import open_regular, remove_stale_temporaries, temporary_name
from utils.interrupts import signals_held

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# zip name -> (folder it fills, alphabets, characters); every character has 20 drawings
OMNIGLOT_ZIPS = {
    "images_background": ("images_background", 30, 964),
    "images_evaluation": ("images_evaluation", 20, 659),
    "images_background_small1": ("images_background", 5, 136),
    "images_background_small2": ("images_background", 5, 156),
}
DRAWINGS = 20  # drawings of each character in every official zip
MAX_MEMBER_BYTES = 64 << 10  # a drawing is a 105 x 105 1-bit PNG: at most 420 bytes in the official zips
MAX_DRAWING_BYTES = 4 << 10  # the declared total of a zip is at most this per drawing it should hold (250 on average)
MAX_ZIP_BYTES = 128 << 20  # a download or a --from zip (the largest official one is 9.5 MB)
MAX_ENTRIES_PER_CHARACTER = 2 * DRAWINGS  # members of a zip (drawings and folders) per character it should hold
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what the official zips use
END_RECORD_SEARCH = 22 + 0xFFFF  # a zip's end record and the longest comment it may have


def download(url, path):
    """Fetch `url` (http(s) or file://) to `path` with a progress bar, at most MAX_ZIP_BYTES; a partial file never
    keeps the final name, and is deleted on any failure, Ctrl-C included."""
    partial = Path(str(path) + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(path).name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                    if f.tell() > MAX_ZIP_BYTES:
                        raise DataError(f"cannot download {url}: larger than {MAX_ZIP_BYTES:,} bytes, which no "
                                        f"Omniglot zip is")
    except OSError as e:  # URLError, HTTPError and socket timeouts are all OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {e}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return Path(path)


def member_problem(info, name):
    """Why the zip member `info` cannot be part of the official `name`.zip, in words; "" when it can."""
    parts = info.filename.split("/")
    if info.is_dir():
        return "" if len(parts) <= 4 and parts[0] == name and ".." not in parts else "an unexpected folder"
    if len(parts) != 4 or parts[0] != name or not all(parts) or {".", ".."} & set(parts) \
            or not info.filename.endswith(".png"):
        return f"expected only {name}/<alphabet>/<character>/<image>.png"
    if info.flag_bits & 0x1:
        return "encrypted; the official zips are not"
    if info.compress_type not in METHODS:
        return f"compression method {info.compress_type}; the official zips store or deflate"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"declares {info.file_size:,} bytes, more than the {MAX_MEMBER_BYTES:,} an Omniglot drawing can hold"
    return ""


def read_member(archive, info, path):
    """The bytes of the zip member `info`, read with a bounded read and checked (CRC, declared size); raises
    DataError naming the zip at `path` and the member when the bytes are damaged."""
    try:
        with archive.open(info) as member:
            data = member.read(MAX_MEMBER_BYTES + 1)  # zipfile stops at the declared size, checked small
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{path}: corrupt member {info.filename} ({type(e).__name__}: {e})") from None
    if len(data) != info.file_size:
        raise DataError(f"{path}: corrupt member {info.filename} (holds {len(data)} bytes, declares {info.file_size})")
    return data


@contextlib.contextmanager
def open_zip(path, name):
    """The zipfile.ZipFile of the regular file `path` (at most MAX_ZIP_BYTES) for the `with` block, once its central
    directory is known to be of a size `name`.zip can have (zipfile reads it all into memory); raises DataError
    naming the file."""
    with open_regular(path, MAX_ZIP_BYTES, DataError, "an Omniglot zip") as file:
        directory, most = central_directory_size(file), MAX_ENTRIES_PER_CHARACTER * OMNIGLOT_ZIPS[name][2] * 256
        if directory > most:
            raise DataError(f"{path}: a central directory of {directory:,} bytes, more than the {most:,} {name}.zip "
                            f"can have")
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable zip ({e})") from None
        with archive:
            yield archive


def central_directory_size(file):
    """The size in bytes a zip's end record gives its central directory; 0 when there is no end record (zipfile then
    says it is not a zip), and more than any limit for a ZIP64 zip, which the official zips are not."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - END_RECORD_SEARCH))
    tail = file.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return 0
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    return MAX_ZIP_BYTES + 1 if entries == 0xFFFF or directory == 0xFFFFFFFF else directory


def verify_omniglot_zip(path, name):
    """Check that `path` is an intact zip holding `name`/<alphabet>/<character>/<image>.png with the alphabet and
    character counts the official `name`.zip has, each member deflated or stored, unencrypted and of a size an
    Omniglot drawing can have; then read every member (bounded) to check its CRC. Returns (alphabets, characters,
    images); raises DataError naming the file and the problem."""
    _, alphabets_expected, characters_expected = OMNIGLOT_ZIPS[name]
    with open_zip(path, name) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES_PER_CHARACTER * characters_expected:
            raise DataError(f"{path}: {len(infos):,} members, more than {name}.zip can hold")
        for info in infos:
            problem = member_problem(info, name)
            if problem:
                raise DataError(f"{path}: member {info.filename}: {problem}")
        files = [info for info in infos if not info.is_dir()]
        declared, most = sum(info.file_size for info in files), DRAWINGS * characters_expected * MAX_DRAWING_BYTES
        if declared > most:
            raise DataError(f"{path}: members declare {declared:,} bytes in all, more than the {most:,} {name}.zip "
                            f"can hold")
        if not files:
            raise DataError(f"{path}: expected only {name}/<alphabet>/<character>/<image>.png, found no files")
        parts = [info.filename.split("/") for info in files]
        alphabets, characters = {p[1] for p in parts}, {(p[1], p[2]) for p in parts}
        if (len(alphabets), len(characters)) != (alphabets_expected, characters_expected):
            raise DataError(f"{path}: {len(alphabets)} alphabets and {len(characters)} characters, expected "
                            f"{alphabets_expected} and {characters_expected} for {name}.zip")
        for info in files:
            read_member(archive, info, path)
    return len(alphabets), len(characters), len(files)


def copy_tree_linked(source, target):
    """Copy the folder `source` to `target` as hard links (a copy where the file system has none): the files stay
    shared, so building the new folder costs no space and leaves `source` untouched."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def unpack_omniglot_zip(path, name, out):
    """Unzip `name`.zip at `path` into `out`/<images_background|images_evaluation>/<alphabet>/<character>/.

    What the folder holds already stays (small1 and small2 both fill images_background), except the characters the
    zip holds, which are replaced. The complete folder is built in a temporary folder inside `out` (the folder's
    files linked, the zip's members written one by one with a bounded read) and swapped in by two renames with
    Ctrl-C and SIGTERM held back: an interruption leaves the folder as it was and the temporary folder is deleted
    (one a killed process leaves is deleted by the next run). Returns the folder filled."""
    target = Path(out) / OMNIGLOT_ZIPS[name][0]
    with signals_held():  # a SIGTERM between creating the folder and naming it here would leave it to the next run
        stage = Path(tempfile.mkdtemp(dir=out, prefix=temporary_name("unpack-")))
    try:
        built = stage / target.name
        if target.is_dir():
            copy_tree_linked(target, built)
        replaced = set()
        with open_zip(path, name) as archive:
            for info in (info for info in archive.infolist() if not info.is_dir()):
                _, alphabet, character, image = info.filename.split("/")
                folder = built / alphabet / character
                if folder not in replaced:
                    shutil.rmtree(folder, ignore_errors=True)  # the earlier drawings of a character the zip holds
                    folder.mkdir(parents=True)
                    replaced.add(folder)
                (folder / image).write_bytes(read_member(archive, info, path))
        swap_in(built, target, stage / "previous")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def swap_in(built, target, previous):
    """Move the folder `target` (if any) to `previous` and `built` to `target`, with Ctrl-C and SIGTERM held back
    between the two renames, so that no interruption leaves `target` missing."""
    with signals_held():
        if target.exists():
            os.rename(target, previous)
        os.rename(built, target)


def get_omniglot(out="dataset", zips=("images_background", "images_evaluation"), source=None, url=OMNIGLOT_URL):
    """Fetch (or take from the folder `source`), verify and unpack the named Omniglot zips into `out`.

    Downloads from `url` + name + ".zip" into `out` first (kept there, so a rerun skips the download); a download
    found damaged is deleted, so a rerun fetches it again. Temporary folders of killed runs in `out` are deleted.
    Returns [(folder filled, alphabets, characters, images)].
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    done = []
    for name in zips:
        if source is not None:
            path = Path(source) / f"{name}.zip"
            if not path.exists():
                raise DataError(f"{path}: no such file (--from expects the official {name}.zip there)")
        else:
            path = out / f"{name}.zip"
            if not path.is_file():
                download(f"{url.rstrip('/')}/{name}.zip", path)
        try:
            counts = verify_omniglot_zip(path, name)
            done.append((unpack_omniglot_zip(path, name, out), *counts))
        except DataError:
            if source is None:  # a damaged download must not be trusted on the next run either
                path.unlink(missing_ok=True)
            raise
    return done

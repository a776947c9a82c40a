"""Files on disk: bounded reads, atomic writes, checks of paths to write, leftovers of dead writers, warnings naming
skipped files."""
import contextlib
import io
import os
import shutil
import stat
import sys
import tempfile

import torch

from utils.errors import SaveError, printable
from utils.interrupts import signals_held

TEMPORARY_PREFIX = ".tmp-"  # then the writer's pid: a later run can tell a dead writer's leftovers
# The read limits: every file the project reads is a regular file checked against one of these before it is read.
MAX_IMAGE_BYTES = 512 << 20  # Pillow's pixel limit (179 million pixels) as 8-bit RGB fits; a larger image is a bomb
MAX_TEXT_BYTES = 16 << 20  # a run's class_labels.txt (Lake's hold 1 KB)
MAX_CSV_LINE_CHARS = 1 << 16  # one line of a pairs CSV: two paths of at most 4,096 bytes each and a label


def open_regular(path, limit=None, error=OSError, what="a file"):
    """Open `path` to read bytes once it is known to be a regular file of at most `limit` bytes (None: any size);
    returns the binary file. Raises `error` with one line naming the file otherwise.

    The type is checked before opening (opening a tape or a terminal can act) and again on the open file (the path may
    have changed in between); opening never blocks, so a FIFO is refused at once instead of waiting for a writer.
    """
    fd = None
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            info = os.fstat(fd)
    except OSError as e:
        raise error(f"{path}: {'no such file' if isinstance(e, FileNotFoundError) else e.strerror or e}") from None
    problem = file_problem(info, limit, what)
    if problem:
        if fd is not None:
            os.close(fd)
        raise error(f"{path}: {problem}")
    file = os.fdopen(fd, "rb")
    file.raw.name = os.fspath(path)  # what messages about the file (Pillow's too) call it
    return file


def file_problem(info, limit, what):
    """Why a file whose os.stat is `info` cannot be read as `what` within `limit` bytes, in words; "" when it can."""
    if stat.S_ISDIR(info.st_mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a device, a FIFO or a socket), refused unread"
    if limit is not None and info.st_size > limit:
        return f"too large for {what}: {info.st_size:,} bytes, more than the limit of {limit:,}"
    return ""


def read_regular(path, limit, error=OSError, what="a file"):
    """The bytes of the regular file `path`, at most `limit` of them as `open_regular` checks, in a bytearray."""
    with open_regular(path, limit, error, what) as file:
        return read_opened(file, path, limit, error)


def read_opened(file, path, limit=None, error=OSError):
    """The rest of a file that `open_regular` opened, from where it stands up to its size as reading starts and at
    most `limit` bytes, in a bytearray (torch takes one without a copy): a file that grows meanwhile is not read
    further. Raises `error` naming `path` when reading fails."""
    size = max(0, os.fstat(file.fileno()).st_size - file.tell())
    data, done = bytearray(size if limit is None else min(size, limit)), 0
    try:
        with memoryview(data) as view:
            while done < len(data) and (count := file.readinto(view[done:])):
                done += count
    except OSError as e:
        raise error(f"{path}: {e.strerror or e}") from None
    del data[done:]
    return data


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside `path` for the `with` block to write; renamed to `path` when the block ends
    without error, deleted otherwise (Ctrl-C too), so a crash never leaves half a file.

    A symbolic link at `path` is written through: its target gets the new file and the link stays. The file gets
    the permissions a plain `open` would give (the umask applied to 0o666). Raises SaveError naming `path` when it
    cannot be written (a full disk, no permission, not a regular file: `write_target`); `path` is then untouched.
    """
    tmp = None
    try:
        target, problem = write_target(path)
        if problem:
            raise SaveError(f"cannot write {path}: {problem}")
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        with signals_held():  # a SIGTERM between creating the file and naming it here would leave it behind
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_name(), suffix=suffix)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, target)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, SaveError):
            raise SaveError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_target(path):
    """(the file that writing `path` replaces, why it cannot be replaced or ""): `path` itself, or the file its
    symbolic links lead to.

    A directory, a device, a FIFO or a socket cannot, nor a link that the kernel follows to an open file rather than
    to a path: /dev/stdout leads through /proc to a pipe, a terminal or a deleted file, never to a file to replace.
    """
    target = os.path.realpath(path)
    try:
        info = os.stat(path)  # what the kernel opens: it follows /proc's links to the open file itself
    except FileNotFoundError:
        return target, ""  # a new file, or a dangling link whose target is then created
    except OSError as e:
        return target, str(e.strerror or e)
    if stat.S_ISDIR(info.st_mode):
        return target, "is a directory; name a file in it"
    if not stat.S_ISREG(info.st_mode):
        return target, "is not a regular file (a device, a FIFO or a socket); name a file"
    try:
        same = os.path.samestat(info, os.stat(target))
    except OSError:
        same = False
    return target, "" if same else f"leads to an open file, not to a file in a folder ({target}); name a file"


@contextlib.contextmanager
def atomic_file(path, mode="wb", **options):
    """`open(tmp, mode, **options)` on an `atomic_path` temporary for the `with` block to write, row by row if it
    likes; synced to disk, closed and renamed to `path` when the block ends without error, deleted otherwise."""
    with atomic_path(path, os.path.splitext(path)[1]) as tmp, open(tmp, mode, **options) as file:
        yield file
        file.flush()
        os.fsync(file.fileno())


def atomic_write(data, path):
    """Write the bytes `data` to `path` through `atomic_file`, synced to disk before the rename."""
    with atomic_file(path) as file:
        file.write(data)


def atomic_save(obj, path):
    """torch.save `obj` to `path` through `atomic_write`; raises SaveError naming `path` when it cannot be written."""
    data = io.BytesIO()
    torch.save(obj, data)  # in memory first: torch.save reports a failed file write as an opaque RuntimeError
    atomic_write(data.getbuffer(), path)


def output_problem(path, option):
    """Why command-line `option` (e.g. "--out") cannot name the file `path` to write, in one line; "" when it can.

    A symbolic link is judged by what it points to: writing goes through it (`atomic_path`), so a link to a
    device, a FIFO, a folder or an open file (/dev/stdout) is refused.
    """
    target, problem = write_target(path)
    if problem:
        return f"{option} {path}: {problem}"
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        return f"{option} {path}: no such folder {folder}"
    if not os.access(folder, os.W_OK):
        return f"{option} {path}: folder {folder} is not writable"
    return ""


def current_umask():
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_name(what=""):
    """A name prefix for a temporary file or folder of this process: `remove_stale_temporaries` deletes what is left
    under it once the process is gone."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{what}"


def remove_stale_temporaries(folder):
    """Delete the temporaries (`temporary_name`: `atomic_path` files, build folders) in `folder` whose writing process
    is gone; returns how many. A symbolic link named so is deleted, never followed."""
    removed = 0
    for entry in os.scandir(folder):
        pid = entry.name[len(TEMPORARY_PREFIX):].split("-")[0]
        if entry.name.startswith(TEMPORARY_PREFIX) and pid.isdigit() and not process_alive(int(pid)):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.remove(entry.path)
            removed += 1
    return removed


def process_alive(pid):
    """True when a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def warn_skipped(what, items):
    """One warning line on stderr naming up to 5 skipped `items`."""
    if items:
        named = "; ".join(printable(str(item)) for item in items[:5])
        print(f"Warning: skipped {len(items)} {what}: {named}" + (" ..." if len(items) > 5 else ""), file=sys.stderr)

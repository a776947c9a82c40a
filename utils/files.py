"""Files on disk: atomic writes, checks of paths to write, leftovers of dead writers, warnings naming skipped files."""
import contextlib
import io
import os
import sys
import tempfile

import torch

from utils.errors import SaveError

TEMPORARY_PREFIX = ".tmp-"  # then the writer's pid: a later run can tell a dead writer's leftovers


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside `path` for the `with` block to write; renamed to `path` when the block ends
    without error, deleted otherwise (Ctrl-C too), so a crash never leaves half a file.

    A symbolic link at `path` is written through: its target gets the new file and the link stays. The file gets
    the permissions a plain `open` would give (the umask applied to 0o666). Raises SaveError naming `path` when it
    cannot be written (a full disk, no permission); `path` is then untouched.
    """
    tmp = None
    try:
        target = os.path.realpath(path)  # through a symlink: the link stays a link
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", suffix=suffix)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, target)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise SaveError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write(data, path):
    """Write the bytes `data` to `path` through `atomic_path`, synced to disk before the rename."""
    with atomic_path(path, os.path.splitext(path)[1]) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj, path):
    """torch.save `obj` to `path` through `atomic_write`; raises SaveError naming `path` when it cannot be written."""
    data = io.BytesIO()
    torch.save(obj, data)  # in memory first: torch.save reports a failed file write as an opaque RuntimeError
    atomic_write(data.getbuffer(), path)


def output_problem(path, option):
    """Why command-line `option` (e.g. "--out") cannot name the file `path` to write, in one line; "" when it can.

    A symbolic link is judged by what it points to: writing goes through it (`atomic_path`), so a link to a
    device, a FIFO or a folder is refused.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        return f"{option} {path}: is a directory; name a file in it"
    if os.path.exists(target) and not os.path.isfile(target):
        return f"{option} {path}: is not a regular file (a device or a pipe); name a file"
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


def remove_stale_temporaries(folder):
    """Delete `atomic_path` leftovers in `folder` (any kind of file) whose writing process is gone; returns how many."""
    removed = 0
    for entry in os.scandir(folder):
        pid = entry.name[len(TEMPORARY_PREFIX):].split("-")[0]
        if entry.name.startswith(TEMPORARY_PREFIX) and pid.isdigit() and not process_alive(int(pid)) \
                and entry.is_file(follow_symlinks=False):
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
        print(f"Warning: skipped {len(items)} {what}: " + "; ".join(items[:5]) + (" ..." if len(items) > 5 else ""),
              file=sys.stderr)

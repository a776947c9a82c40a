"""Ending a command on Ctrl-C or SIGTERM: one line, the shell's exit code, the cleanups of every `with` block run."""
import contextlib
import signal
import sys
import threading

from utils.errors import printable

INTERRUPTED = 128 + signal.SIGINT  # 130, what a shell reports for a Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised like a Ctrl-C, so that atomic writes delete their temporaries on the way out."""


def raise_terminated(signum, frame):
    """SIGTERM handler: raise Terminated where the program stands."""
    raise Terminated()


@contextlib.contextmanager
def exit_on_interrupt(message):
    """Run the block with SIGTERM raising `Terminated`; a Ctrl-C or SIGTERM in it ends the program with `message` on
    stderr (a blank line when empty), no traceback, and exit code 130 (Ctrl-C) or 143 (SIGTERM).

    Since both arrive as exceptions, every `with` block and `finally` on the way out runs: `atomic_path` deletes its
    temporary, so nothing half-written is left. The previous SIGTERM handler is put back afterwards.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None
    try:
        yield
    except KeyboardInterrupt as e:
        print(f"\n{printable(message)}" if message else "", file=sys.stderr)
        raise SystemExit(TERMINATED if isinstance(e, Terminated) else INTERRUPTED) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM back for the `with` block (a few renames that must all happen or none); one that
    arrives meanwhile takes effect when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

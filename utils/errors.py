"""The error types the project raises for bad input; each message names the file or setting at fault."""


class DataError(ValueError):
    """A dataset that cannot be trained or evaluated on; the message says what is wrong and where."""


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


class WeightsError(ValueError):
    """A weights or checkpoint file that cannot be used; the message names the file."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; training stops before broken weights are saved."""


class ConfigError(ValueError):
    """Settings that cannot work together; found before any work starts."""


class SaveError(OSError):
    """A file the project writes could not be written (full disk, no permission); the message names it."""


def one_line(error):
    """The message of `error` on one line; a DataLoader worker re-raises with the worker's traceback
    in the message, whose last line is `module.Class: message`."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def printable(text):
    """`text` with every control or other unprintable character escaped (\\x1b, \\n, \\u202e): a path printed in a
    message cannot move the cursor, clear the terminal or start a new line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(text))

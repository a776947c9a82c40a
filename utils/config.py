"""Command-line overrides for the config block at the top of a script (nanoGPT style, with --help)."""
import argparse
import difflib
import re


def parse_bool(text):
    """'True'/'False' (also 1/0, yes/no) -> bool; anything else is an argparse error."""
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_auto(text):
    """'auto' stays 'auto' (decided by the hardware at run time); otherwise as `parse_bool`."""
    return "auto" if str(text).lower() == "auto" else parse_bool(text)


def config_comments(source_path):
    """{name: comment} for lines `name = value  # comment` of a script's config block."""
    pattern = re.compile(r"^(\w+) = .*?  # (.+)$")
    with open(source_path, encoding="utf-8") as f:
        return {m.group(1): m.group(2).strip() for m in map(pattern.match, f) if m}


def build_parser(defaults, description="", choices=None, extra=None, helps=None):
    """An ArgumentParser with one `--name` per config entry, typed from its default value.

    `choices` maps names to their allowed values; `extra` adds flags that are not config names,
    as {name: (kwargs for add_argument)}.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="%(prog)s [--name value ...]  (--help lists every name with its default)",
        allow_abbrev=False,  # a misspelt name is an error, never silently another setting
    )
    choices = choices or {}
    for name, default in defaults.items():
        kwargs = {"default": default, "choices": choices.get(name), "help": (helps or {}).get(name, " "),
                  "metavar": name.upper() if name not in choices else None}
        if isinstance(default, bool):
            kwargs.update(type=parse_bool, metavar="True|False")
        elif default == "auto" and name not in choices:  # with choices, "auto" is one of them
            kwargs.update(type=parse_auto, metavar="auto|True|False")
        elif isinstance(default, (list, tuple)):
            kwargs.update(type=type(default[0]), nargs=len(default))
        elif isinstance(default, (int, float)):
            kwargs.update(type=float if isinstance(default, float) else int)
        else:
            kwargs.update(type=str)
        parser.add_argument(f"--{name}", **kwargs)
    for name, kwargs in (extra or {}).items():
        parser.add_argument(f"--{name}", **kwargs)
    return parser


def unknown_names_message(unknown, names):
    """One line naming the unrecognised arguments, with the closest valid names."""
    flags = [a.split("=")[0] for a in unknown if a.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(unknown)}: every setting is passed as --name value"
    by_lower = {n.lower(): n for n in names}
    hints, guessed = [], True
    for flag in flags:
        close = difflib.get_close_matches(flag.lstrip("-").lower(), by_lower, n=1, cutoff=0.6)
        hints.append(f"{flag} (did you mean --{by_lower[close[0]]}?)" if close else flag)
        guessed = guessed and bool(close)
    valid = "" if guessed else f"; valid names: {', '.join('--' + n for n in names)}"
    return f"unknown name(s): {', '.join(hints)}{valid}"


def parse_config(defaults, argv=None, description="", choices=None, extra=None, validate=None, helps=None):
    """Return an argparse.Namespace of `defaults` overridden by `argv`; extra flags come back too.

    `validate(config)` returns an error string or None; an error ends the program with argparse's
    one-line usage message (exit code 2).
    """
    parser = build_parser(defaults, description, choices, extra, helps)
    config, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unknown_names_message(unknown, list(defaults) + list(extra or {})))
    error = validate(config) if validate else None
    if error:
        parser.error(error)
    return config


def show_config(**kwargs):
    """Print a two-column table of settings."""
    width = max(len(k) for k in kwargs) + 2
    line = "-" * (width + 50)
    print(line)
    print(f"{'key':<{width}}| value")
    print(line)
    for key, value in kwargs.items():
        print(f"{key:<{width}}| {value}")
    print(line)

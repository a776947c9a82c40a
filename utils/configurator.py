"""The config block at the top of a script, overridden by preset files and the command line (nanoGPT style).

    python train.py config/demo.py --Epoch 4     # the block, then the preset's names, then --Epoch
A preset is a Python file of `name = value` lines (literals only, comments welcome): it is read, never run.
"""
import argparse
import ast
import difflib
import math
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


def parse_auto_float(text):
    """'auto' stays 'auto' (decided from other settings); otherwise a float."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def config_comments(source_path):
    """{name: comment} for lines `name = value  # comment` of a script's config block."""
    pattern = re.compile(r"^(\w+) = .*?  # (.+)$")
    with open(source_path, encoding="utf-8") as f:
        return {m.group(1): m.group(2).strip() for m in map(pattern.match, f) if m}


def argument_type(name, default, choices, types):
    """The argparse keywords that type `--name` from its default (or `types[name]`, for names whose default is a
    word such as "auto")."""
    if name in types:
        return {"type": types[name], "metavar": f"auto|{name.upper()}"}
    if isinstance(default, bool):
        return {"type": parse_bool, "metavar": "True|False"}
    if default == "auto" and name not in choices:  # with choices, "auto" is one of them
        return {"type": parse_auto, "metavar": "auto|True|False"}
    if isinstance(default, (list, tuple)):
        return {"type": type(default[0]), "nargs": len(default), "metavar": name.upper()}
    if isinstance(default, (int, float)):
        return {"type": float if isinstance(default, float) else int, "metavar": name.upper()}
    return {"type": str, "metavar": None if name in choices else name.upper()}


def build_parser(defaults, description="", choices=None, extra=None, helps=None, types=None, epilog=None):
    """An ArgumentParser with one `--name` per config entry, typed from its default value (`argument_type`), and
    positional preset files.

    `choices` maps names to their allowed values; `extra` adds flags that are not config names,
    as {name: (kwargs for add_argument)}.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=epilog,
        usage="%(prog)s [PRESET.py ...] [--name value ...]  (--help lists every name with its default)",
        allow_abbrev=False,  # a misspelt name is an error, never silently another setting
    )
    parser.add_argument("presets", nargs="*", metavar="PRESET.py",
                        help="preset files of name = value lines (config/), applied in order before --name values")
    choices, types = choices or {}, types or {}
    for name, default in defaults.items():
        kwargs = {"default": default, "choices": choices.get(name), "help": (helps or {}).get(name, " "),
                  **argument_type(name, default, choices, types)}
        parser.add_argument(f"--{name}", **kwargs)
    for name, kwargs in (extra or {}).items():
        parser.add_argument(f"--{name}", **kwargs)
    return parser


def unknown_names_message(unknown, names):
    """One line naming the unrecognised arguments, with the closest valid names."""
    flags = [a.split("=")[0] for a in unknown if a.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(unknown)}: every setting is passed as --name value"
    hints, guessed = [], True
    for flag in flags:
        close = closest(flag.lstrip("-"), names)
        hints.append(f"{flag} (did you mean --{close}?)" if close else flag)
        guessed = guessed and bool(close)
    valid = "" if guessed else f"; valid names: {', '.join('--' + n for n in names)}"
    return f"unknown name(s): {', '.join(hints)}{valid}"


def closest(name, names):
    """The valid name closest to a misspelt `name` (case aside), or None."""
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def same_kind(value, default):
    """True when a preset's `value` can stand where the config block has `default`: the same kind (an int for a
    float), True/False or "auto" for an "auto" default; words are checked against their choices by the parser."""
    if default == "auto":
        return isinstance(value, (bool, str, int, float))
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(default) \
            and all(same_kind(v, default[0]) for v in value)
    return isinstance(value, type(default))


def read_preset(path, defaults):
    """{name: value} of a preset file; raises ValueError naming the file and line of anything else than
    `name = literal` lines of names in `defaults`, each value of its default's kind (`same_kind`)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"preset {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except SyntaxError as e:
        raise ValueError(f"preset {path}:{e.lineno}: not Python ({e.msg})") from None
    values = {}
    for node in tree.body:
        where = f"preset {path}:{node.lineno}"
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{where}: expected name = value lines only")
        name = node.targets[0].id
        if name not in defaults:
            hint = closest(name, list(defaults))
            raise ValueError(f"{where}: unknown name {name}" + (f" (did you mean {hint}?)" if hint else ""))
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{where}: {name} must be a literal (a number, string, True/False or list)") from None
        if not same_kind(value, defaults[name]):
            raise ValueError(f"{where}: {name} = {value!r} is not of the kind of its default {defaults[name]!r}")
        values[name] = value
    return values


def as_arguments(values):
    """{name: value} -> the command-line words that give them, so that the parser types and checks them."""
    words = []
    for name, value in values.items():
        words += [f"--{name}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return words


def parse_config(defaults, argv=None, description="", choices=None, extra=None, helps=None, types=None,
                 epilog=None):
    """(argparse.Namespace, names given): `defaults` overridden by the preset files named in `argv`, in order, then by
    its `--name value` pairs; extra flags come back too. The names given are those a preset or the command line set.

    A mistake (an unknown name, a value of the wrong type, a bad preset) ends the program with argparse's one-line
    usage message (exit code 2).
    """
    argv = list(argv or [])
    parser = build_parser(defaults, description, choices, extra, helps, types, epilog)
    config, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unknown_names_message(unknown, list(defaults) + list(extra or {})))
    not_presets = [word for word in config.presets if not word.endswith(".py")]
    if not_presets:
        parser.error(f"unexpected argument(s) {' '.join(not_presets)}: presets are .py files (config/), every "
                     f"setting is passed as --name value")
    preset_values = {}
    for path in config.presets:
        try:
            preset_values.update(read_preset(path, defaults))
        except ValueError as e:
            parser.error(str(e))
    if preset_values:
        config, unknown = parser.parse_known_args(as_arguments(preset_values) + argv)
    if unknown:
        parser.error(unknown_names_message(unknown, list(defaults) + list(extra or {})))
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")} | set(preset_values)
    return config, given


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

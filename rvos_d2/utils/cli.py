"""User errors and their one-line report in the command-line tools.

A `UserError` is raised where the input (a config file or key, a dataset name, a weights file,
a video, a sentence) is wrong rather than the code. `run_cli` turns one into a single line on
stderr and exit code 2, as argparse does for bad flags; any other exception keeps its traceback.
`load_config` and `check_dataset_names` check what a tool is given before any work starts.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

__all__ = [
    "InputError",
    "InputFileError",
    "MissingFileError",
    "UserError",
    "check_dataset_name",
    "check_dataset_names",
    "closest_names",
    "exit_with_error",
    "load_config",
    "run_cli",
]


class UserError(Exception):
    """Bad input given to rvos_d2 (file, key, name, value); reported without a traceback."""


class InputError(UserError, ValueError):
    """A value given by the user (config key or value, dataset name, sentence) is wrong."""


class InputFileError(UserError, OSError):
    """A file given by the user cannot be read completely (corrupt, truncated, wrong format)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file given by the user does not exist."""


def _message(err: BaseException) -> str:
    text = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    return " ".join(text.split())


def exit_with_error(message: str, prog: str | None = None) -> NoReturn:
    """Prints `prog: error: message` on one line to stderr and exits with code 2."""
    prog = prog or Path(sys.argv[0]).name
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Runs a tool's `main(argv)`; a UserError becomes one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as err:
        exit_with_error(_message(err))
    return code if isinstance(code, int) else 0


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` candidates most similar to `name` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    close = closest_names(name, candidates)
    return f"; closest valid: {', '.join(close)}" if close else ""


def _flat_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _flat_keys(value, full + ".")
    return keys


def _yaml_has_key(data: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _config_chain(config_file: Path) -> list[tuple[Path, Any]]:
    """(path, parsed YAML) of `config_file` and of the _BASE_ files it inherits from, in order."""
    chain: list[tuple[Path, Any]] = []
    path: Path | None = config_file
    while path is not None and path not in [p for p, _ in chain]:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            break
        chain.append((path, data))
        base = data.get("_BASE_") if isinstance(data, dict) else None
        if not isinstance(base, str):
            break
        base_path = Path(os.path.expanduser(base))
        path = base_path if base_path.is_absolute() else path.parent / base_path
    return chain


def _file_with_key(config_file: Path, key: str) -> Path:
    """The file of `config_file`'s _BASE_ chain that sets `key` (the file itself if none)."""
    return next(
        (p for p, data in _config_chain(config_file) if _yaml_has_key(data, key)), config_file
    )


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(r"Type mismatch .* for config key: (\S+)")


def _key_error(err: BaseException, source: str, valid_keys: list[str]) -> InputError | None:
    """Re-words yacs' unknown-key and type-mismatch errors; None for other errors."""
    text = _message(err)
    unknown = _UNKNOWN_KEY.search(text)
    if unknown:
        key = unknown.group(1)
        return InputError(f"{source}: unknown config key {key}{_suggestion(key, valid_keys)}")
    mismatch = _TYPE_MISMATCH.search(text)
    if mismatch:
        return InputError(f"{source}: wrong value type for {mismatch.group(1)}: {text}")
    return None


def load_config(config_file: str | os.PathLike | None, opts: Sequence[str] = ()):
    """rvos_d2.config.load_config with user errors that name the file or option at fault.

    A missing config file, invalid YAML, an unknown key (with the closest valid keys) or a value
    of the wrong type in the file (or a file it inherits from) or in `opts` raise InputError /
    MissingFileError.
    """
    from rvos_d2.config import load_config as load_rvos_config

    valid_keys = _flat_keys(load_rvos_config(None))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        try:
            cfg = load_rvos_config(path)
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML: {err}") from err
        except FileNotFoundError as err:  # a missing _BASE_ file
            raise MissingFileError(f"{path}: {_message(err)}") from err
        except (KeyError, AssertionError, ValueError) as err:
            unknown = _UNKNOWN_KEY.search(_message(err)) or _TYPE_MISMATCH.search(_message(err))
            source = _file_with_key(path, unknown.group(1)) if unknown else path
            raise (_key_error(err, str(source), valid_keys) or err) from err
    else:
        cfg = load_rvos_config(None)
    opts = list(opts)
    if len(opts) % 2:
        raise InputError(f"config options must come as KEY VALUE pairs, got an odd count: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as err:
        converted = _key_error(err, "command-line option", valid_keys)
        raise (converted or InputError(f"command-line options: {_message(err)}")) from err
    return cfg


def check_dataset_name(name: str, source: str = "dataset") -> None:
    """Raises InputError (naming `source` and the closest names) if `name` is not registered."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    if name not in registered:
        raise InputError(
            f"{source}: no registered dataset named {name!r}{_suggestion(name, registered)} "
            "(registered names: projects/RVOS/DATASETS.md)"
        )


def check_dataset_names(cfg) -> None:
    """Raises InputError for a name in DATASETS.TRAIN / DATASETS.TEST that is not registered."""
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            check_dataset_name(name, f"DATASETS.{key}")

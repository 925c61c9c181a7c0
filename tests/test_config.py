"""rvos_d2.config: typos are rejected by detectron2, and every key is documented in place."""

import ast
import importlib
import inspect
import io
import tokenize
from pathlib import Path

import pytest

import rvos_d2.config

from detectron2.config import CfgNode, get_cfg


def _config_sources() -> list[str]:
    """Source of rvos_d2/config.py and of the files defining the config functions it imports
    (those live beside their parts and methods)."""
    path = Path(rvos_d2.config.__file__)
    functions = [
        getattr(importlib.import_module(node.module), alias.name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("add_") and alias.name.endswith("_config")
    ]
    files = {path} | {Path(inspect.getsourcefile(f)) for f in functions}
    return [file.read_text() for file in sorted(files)]


CONFIG_SOURCES = _config_sources()


def _leaf_keys(node: CfgNode, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _dotted_key(target: ast.expr) -> str | None:
    """'SOLVER.X' for the target `cfg.SOLVER.X`, None for other targets."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name) and target.id == "cfg" and parts:
        return ".".join(reversed(parts))
    return None


def _comment_lines(source: str) -> tuple[set[int], set[int]]:
    """Line numbers holding a comment, and those holding only a comment."""
    commented, code_lines = set(), set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            commented.add(token.start[0])
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return commented, commented - code_lines


def _assignments(source: str) -> dict[str, ast.Assign]:
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                key = _dotted_key(target)
                if key is not None:
                    found[key] = node
    return found


def _is_node(assign: ast.Assign) -> bool:
    value = assign.value
    return isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("CN", "CfgNode")


def test_every_key_is_assigned_with_a_comment(rvos_cfg):
    assignments, undocumented = {}, []
    for source in CONFIG_SOURCES:
        commented, comment_only = _comment_lines(source)
        found = _assignments(source)
        assignments.update(found)
        for key, assign in sorted(found.items(), key=lambda item: item[1].lineno):
            if _is_node(assign):
                continue
            lines = set(range(assign.lineno, assign.end_lineno + 1))
            if not (lines & commented or assign.lineno - 1 in comment_only):
                undocumented.append(f"{key} (line {assign.lineno})")
    assert not undocumented, "config keys without a comment:\n" + "\n".join(undocumented)

    added = _leaf_keys(rvos_cfg) - _leaf_keys(get_cfg())
    missing = sorted(k for k in added if k not in assignments)
    assert not missing, f"keys added outside a commented `cfg.KEY = value` line: {missing}"


def test_yaml_typo_names_the_key(rvos_cfg, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("SOLVER:\n  BACKBONE_MULTIPLER: 0.1\n")
    with pytest.raises(KeyError, match="Non-existent config key: SOLVER.BACKBONE_MULTIPLER"):
        rvos_cfg.merge_from_file(str(path))


def test_command_line_typo_names_the_key(rvos_cfg):
    with pytest.raises(AssertionError, match="Non-existent key: TEST.WINDOWS"):
        rvos_cfg.merge_from_list(["TEST.WINDOWS", "8"])


def test_solver_keys_merge(rvos_cfg, tmp_path):
    path = tmp_path / "solver.yaml"
    path.write_text(
        "SOLVER:\n  OPTIMIZER: SGD\n  BACKBONE_MULTIPLIER: 0.25\n  WEIGHT_DECAY_EMBED: 0.5\n"
    )
    rvos_cfg.merge_from_file(str(path))
    solver = rvos_cfg.SOLVER
    assert (solver.OPTIMIZER, solver.BACKBONE_MULTIPLIER, solver.WEIGHT_DECAY_EMBED) == (
        "SGD",
        0.25,
        0.5,
    )


def test_load_config_merges_the_file_then_the_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("TEST:\n  WINDOW: 12\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = rvos_d2.config.load_config(path, ["SOLVER.BASE_LR", "0.25"])
    assert (cfg.TEST.WINDOW, cfg.SOLVER.BASE_LR) == (12, 0.25)
    assert not cfg.is_frozen()
    defaults = rvos_d2.config.load_config(None)
    assert defaults.TEST.WINDOW == 36 and defaults.MODEL.QUERY_DECODER.REFERENCE_SEARCH is False
    with pytest.raises(KeyError, match="Non-existent config key: SOLVER.BASE_LRR"):
        path.write_text("SOLVER:\n  BASE_LRR: 0.5\n")
        rvos_d2.config.load_config(path)

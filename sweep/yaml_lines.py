"""Spec files read as YAML with line numbers: every error names the file and the line of the key.

    path, text, data, lines = load_yaml_mapping("ablations/demo.yaml")
    lines.at("variants", "full")     # 'ablations/demo.yaml:44'
    check_keys(data, ("name", "variants"), "", lines)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import yaml

from core.config import ConfigError, read_yaml, read_yaml_file, suggest


class YamlLines:
    """Line numbers of the keys of a YAML document, by key path; refuses duplicate keys (PyYAML would
    silently keep the last one, dropping e.g. a variant listed twice)."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None  # read_yaml already reported syntax errors with their line
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{self.path}:{line}: duplicate key '{key}' (first at line {seen[key]})"
                                      f"{' under ' + '.'.join(map(str, prefix)) if prefix else ''}")
                seen[key] = line
                self.lines[prefix + (key,)] = line
                self._walk(value_node, prefix + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[prefix + (i,)] = item.start_mark.line + 1
                self._walk(item, prefix + (i,))

    def at(self, *keys) -> str:
        """'file:line' of the deepest known prefix of keys."""
        for n in range(len(keys), 0, -1):
            line = self.lines.get(tuple(keys[:n]))
            if line:
                return f"{self.path}:{line}"
        return str(self.path)


def load_yaml_mapping(path: str | Path) -> tuple[Path, str, dict, YamlLines]:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (name, variants, seeds, ...)")
    text = read_yaml_file(path)
    return path, text, data, YamlLines(path, text)


def check_keys(data: Mapping, allowed: Iterable[str], where: str, lines: YamlLines, *prefix) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{lines.at(*prefix, key)}: unknown key '{key}'{' in ' + where if where else ''}. "
                              f"Valid keys: {', '.join(allowed)}.{suggest(str(key), allowed)}")

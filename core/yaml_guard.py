"""Limits on a YAML file before it is parsed or walked: a regular file of sane size, and no alias bomb.

    text = read_yaml_text(Path("ablations/demo.yaml"))   # ConfigError for /dev/zero, a directory, 10 MB
    check_alias_expansion(text, Path("ablations/demo.yaml"))

Why: yaml.safe_load of a "billion laughs" file is cheap (aliases become shared objects), but anything
that walks the result key by key (line numbers, flattening, hashing) expands it to billions of nodes.
The composed node graph is measured with memoisation, so the check itself never expands anything.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

MAX_YAML_BYTES = 1024 * 1024        # a spec or config file is a few KB; 1 MiB is generous
MAX_YAML_NODES = 100_000            # nodes after aliases are expanded; the demo spec has about 400


class YamlLimitError(ValueError):
    """A YAML file refused before parsing; core.config turns it into a ConfigError."""


def read_yaml_text(path: Path, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The file's text, refusing what is not a regular file (a directory, /dev/zero, a pipe) and files
    larger than max_bytes, without reading more than max_bytes + 1 bytes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise YamlLimitError(f"{path}: file not found") from None
    except OSError as err:
        raise YamlLimitError(f"{path}: cannot read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise YamlLimitError(f"{path}: is a directory; give the YAML file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise YamlLimitError(f"{path}: not a regular file (a device, pipe or socket); give a YAML file")
    if info.st_size > max_bytes:
        raise YamlLimitError(f"{path}: {info.st_size} bytes; a YAML spec or config may be at most {max_bytes} bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as err:
        raise YamlLimitError(f"{path}: cannot read ({err.strerror})") from None
    if len(data) > max_bytes:
        raise YamlLimitError(f"{path}: larger than {max_bytes} bytes; a YAML spec or config may not be larger")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlLimitError(f"{path}: not UTF-8 text ({err})") from None


def _first_alias_line(text: str) -> str:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                return f"line {event.start_mark.line + 1}"
    except yaml.YAMLError:
        pass
    return "its aliases"


def expanded_size(root, limit: int) -> int:
    """Nodes of the composed graph once every alias is expanded, counted without expanding (each node's
    size computed once); stops counting past `limit`. A node that contains itself raises YamlLimitError."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlLimitError("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        open_nodes.discard(key)
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(root)


def check_alias_expansion(text: str, path: Path, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a YAML document that its aliases expand past `limit` nodes (file and first alias line)."""
    if "*" not in text:  # no alias at all: nothing can expand
        return
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # the parse reports syntax errors with their line
    except RecursionError:
        raise YamlLimitError(f"{path}: nested too deeply to read") from None
    if root is None:
        return
    try:
        total = expanded_size(root, limit)
    except YamlLimitError as err:
        raise YamlLimitError(f"{path}: {_first_alias_line(text)}: {err}; refused") from None
    except RecursionError:
        raise YamlLimitError(f"{path}: nested too deeply to read") from None
    if total > limit:
        raise YamlLimitError(f"{path}: {_first_alias_line(text)}: the YAML's aliases (*name) expand it to more than "
                             f"{limit} nodes (an alias bomb?); refused before expanding. Write the values out, "
                             f"or use fewer nested aliases")

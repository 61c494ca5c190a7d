"""Reading user files safely: UTF-8 text, JSON and YAML, each failure one line naming the file.

Whatever a file holds (bytes that are not UTF-8, JSON nested 100,000 deep, a YAML key given twice,
a YAML alias bomb), the reader raises a typed error (UserError or the caller's subclass) before
any work starts, never UnicodeDecodeError, RecursionError or a silently merged mapping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

MAX_YAML_DEPTH = 100  # collections inside collections; manifests use fewer than 10
MAX_YAML_EXPANSION = 100_000  # values an alias-heavy document may expand to (see _expanded_size)


def _not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError, error: type[UserError],
              line: int | None = None) -> UserError:
    before = data[:exc.start]
    line = line if line is not None else before.count(b"\n") + 1
    column = exc.start - (before.rfind(b"\n") + 1) + 1
    byte = data[exc.start:exc.start + 1].hex()
    return error(f"{path}: line {line}, column {column}: not UTF-8 text (byte 0x{byte}); "
                 "save the file as UTF-8.")


def read_bytes(path: str | Path, what: str, error: type[UserError] = UserError) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise error(f"{what} '{path}' is a folder; give the path of a file.") from None
    except OSError as exc:
        raise error(f"{what} '{path}' cannot be read: {exc.strerror or exc}.") from None


def read_text(path: str | Path, what: str, error: type[UserError] = UserError) -> str:
    """The whole file as text (UTF-8, a leading byte-order mark dropped)."""
    path = Path(path)
    data = read_bytes(path, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, exc, error) from None


def iter_lines(path: str | Path, what: str, error: type[UserError] = UserError
               ) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded one line at a time (a JSONL file of any size)."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except IsADirectoryError:
        raise error(f"{what} '{path}' is a folder; give the path of a file.") from None
    except OSError as exc:
        raise error(f"{what} '{path}' cannot be read: {exc.strerror or exc}.") from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw, exc, error, line=lineno) from None
            yield lineno, text


def json_loads(text: str, where: str, error: type[UserError] = UserError) -> Any:
    """json.loads with its two failures as one line: `where` names the file (and line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read; nothing in this format nests "
                    "more than a few levels.") from None


# -- YAML ---------------------------------------------------------------------------------------


class _YamlProblem(Exception):
    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.mark = mark


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key given twice (YAML 1.2 forbids it; PyYAML keeps the
    last one silently) and collections nested deeper than MAX_YAML_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlProblem(f"collections nested more than {MAX_YAML_DEPTH} deep",
                                   self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` keys are merged, explicit keys win (YAML merge)
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable key: the base constructor reports it
                if first is not key_node:
                    raise _YamlProblem(
                        f"key '{key}' appears twice in one mapping (first at line "
                        f"{first.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Any) -> int:
    """How many values the document holds once every alias is copied out (what a validator
    walking it visits). Aliases share one Python object, so this counts each object once per
    reference, iteratively and with memoisation: linear in the distinct objects. A cycle
    (`&a [*a]`) counts as unbounded."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, done = stack.pop()
        if not isinstance(obj, (list, dict)):
            continue
        key = id(obj)
        children = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in children)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return -1
        on_path.add(key)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if isinstance(c, (list, dict)))
    return sizes.get(id(root), 1)


def _distinct(root: Any) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, (list, dict)) and id(obj) not in seen:
            seen.add(id(obj))
            stack.extend(list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj)
    return len(seen)


def yaml_loads(text: str, source: str, error: type[UserError] = UserError) -> Any:
    """Parse YAML with StrictLoader; `source` names the file. An alias bomb (a few anchors that
    expand to millions of values) is refused in milliseconds, before anything walks it."""
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except _YamlProblem as exc:
        raise error(f"{source}{_where(exc.mark)}: {exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        raise error(f"{source} is not valid YAML{_where(mark)}"
                    + (f" ({problem})" if problem else "") + ".") from None
    except RecursionError:
        raise error(f"{source}: YAML nested too deeply to read.") from None
    size = _expanded_size(data)
    if size < 0:
        raise error(f"{source}: an alias refers to a collection that contains it (a cycle); "
                    "write the values out instead.")
    if size > MAX_YAML_EXPANSION and size > 10 * _distinct(data):
        raise error(f"{source}: its aliases expand to {size:,} values (at most "
                    f"{MAX_YAML_EXPANSION:,}); write the values out instead of nesting aliases.")
    return data


def _where(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def read_yaml_file(path: str | Path, what: str, error: type[UserError] = UserError) -> Any:
    path = Path(path)
    return yaml_loads(read_text(path, f"{what} file", error), f"{what} file '{path}'", error)

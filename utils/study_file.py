"""A study file read strictly: YAML with each key's line and no key written twice, checked against the study schema.

The schema is ``workflow/schemas/study.schema.yaml`` (JSON Schema, the language of Snakemake's ``validate``),
read with :mod:`jsonschema` rather than through Snakemake because a study is also loaded outside the workflow
(``make_report.py --study``, the tests). Its enums of registered things (methods, drop rules, reconstructions,
precisions, stage kinds) are filled in by the caller from the registries, so there is one list of each.
Every refusal is a :class:`UserError` naming the file, the YAML line where known, the key and the bad value.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

from utils.errors import UserError

BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}  # JSON Schema's
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "study.schema.yaml"


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping (PyYAML keeps the last, silently)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen = {}
    for key_node, _ in node.value:  # the keys written here (a merge key's keys may be overridden: YAML's <<)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise UserError(f"{line}: key '{key}' written twice (first on line {seen[key]}; YAML would keep the last)")
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _lines(node: yaml.Node, path: tuple = (), into: dict | None = None) -> dict[tuple, int]:
    """Each key path's (and list item's) line in the file, 1-based: ``("data", "seq_len") -> 17``."""
    into = {} if into is None else into
    into.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = yaml.safe_load(key_node.value) if key_node.tag != "tag:yaml.org,2002:str" else key_node.value
            into[(*path, key)] = key_node.start_mark.line + 1
            _lines(value, (*path, key), into)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), into)
    return into


def read(path: Path) -> tuple[dict, dict[tuple, int]]:
    """The study file's keys and each key's line; refused unless it is readable YAML, a mapping, no key twice."""
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as error:
        raise UserError(f"{path}: not a readable study file ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not YAML ({getattr(error, 'problem', None) or error})") from None
    except UserError as error:
        raise UserError(f"{path}:{error}") from None  # the line and what was written twice
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of study keys (teacher, data, seeds, budgets, families, ...)")
    return raw, _lines(node)


@cache
def _schema_text() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def schema(enums: dict[str, list]) -> dict:
    """The study schema with its registry enums filled: ``enums`` maps a JSON pointer-like path of keys to its
    values (``("$defs", "family", "properties", "method"): ["students", ...]``)."""
    filled = copy.deepcopy(_schema_text())
    for keys, values in enums.items():
        node = filled
        for key in keys:
            node = node[key]
        node["enum"] = list(values)
    return filled


def _with_string_keys(value):
    """JSON's view of a YAML value: mapping keys as strings (a budget key 0.25 -> "0.25"), for the validator."""
    if isinstance(value, dict):
        return {str(key): _with_string_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_string_keys(item) for item in value]
    return value


def _key_path(path) -> str:
    return ".".join(str(part) for part in path) or "(top)"


def _message(error) -> str:
    """A validator error in the study's terms: what was found and what was expected."""
    found, rule = error.instance, error.validator
    if rule == "additionalProperties" and isinstance(found, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(found) - set(allowed))
        return f"unknown key {', '.join(map(repr, extra))} (expected one of {', '.join(allowed)})"
    if rule == "enum" or (rule == "propertyNames" and "enum" in error.schema.get("propertyNames", {})):
        allowed = error.validator_value if rule == "enum" else error.schema["propertyNames"]["enum"]
        return f"{found!r}: expected one of {', '.join(map(str, allowed))}"
    if rule == "required":
        return f"needs {', '.join(repr(key) for key in error.validator_value if key not in found)}"
    if rule in ("minItems", "minProperties"):
        return f"{found!r}: expected at least {error.validator_value} item{'s' if error.validator_value > 1 else ''}"
    if rule == "minLength":
        return f"{found!r}: expected a non-empty string"
    if rule == "uniqueItems":
        return f"{found!r}: each item once"
    if rule == "oneOf":  # the shortest explanation among the alternatives
        reasons = [_message(sub) for sub in error.context if not sub.relative_path] or [error.message]
        alternatives = " or ".join(dict.fromkeys(reason.split(": ", 1)[-1] for reason in reasons))
        return f"{found!r}: " + alternatives.replace(" or expected ", " or ")
    if rule in BOUNDS:
        return f"{found!r}: expected a value {BOUNDS[rule]} {error.validator_value}"
    if rule == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{found!r}: expected {' or '.join(kinds)}"
    if rule == "pattern" or rule == "propertyNames":
        pattern = error.validator_value if rule == "pattern" else error.schema["propertyNames"].get("pattern", "")
        return f"{found!r}: not a valid name here (expected {pattern})"
    return error.message


def check(raw: dict, lines: dict[tuple, int], path: Path, enums: dict[str, list]) -> None:
    """Refuse ``raw`` (a study file's keys) unless it fits the schema: the first error, as one line."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(enums))
    error = jsonschema.exceptions.best_match(validator.iter_errors(_with_string_keys(raw)))
    if error is None:
        return
    keys = list(error.absolute_path)
    if error.validator in ("additionalProperties", "propertyNames") and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in allowed]
        keys += extra[:1] if error.validator == "additionalProperties" else []
    raise UserError(f"{where(path, lines, keys)}: {_key_path(keys)}: {_message(error)}")


def where(path: Path, lines: dict[tuple, int], keys) -> str:
    """``file:line`` of a key path (its nearest enclosing key that has a line), or the file alone."""
    keys = tuple(keys)
    by_string = {tuple(map(str, key)): line for key, line in lines.items()}
    while keys:
        line = by_string.get(tuple(map(str, keys)))
        if line is not None:
            return f"{path}:{line}"
        keys = keys[:-1]
    return str(path)


def key_reference(enums: dict[str, list]) -> str:
    """Markdown: every key of a study file with what it takes, generated from the schema (OPERATIONS.md)."""
    filled = schema(enums)
    rows = ["| key | takes | what it is |", "|---|---|---|"]

    def takes(node: dict) -> str:
        node = _resolved(filled, node)
        if "enum" in node:
            return " / ".join("`null`" if value is None else f"`{value}`" for value in node["enum"])
        if "oneOf" in node:
            return " or ".join(takes(option) for option in node["oneOf"])
        kind = node.get("type", "mapping" if "properties" in node else "")
        if isinstance(kind, list):
            kind = " / ".join(kind)
        low = next((bound for bound in ("minimum", "exclusiveMinimum") if bound in node), None)
        high = next((bound for bound in ("maximum", "exclusiveMaximum") if bound in node), None)
        if low and high:  # an interval, closed or open at each end
            opening, closing = "[" if low == "minimum" else "(", "]" if high == "maximum" else ")"
            kind += f" in {opening}{node[low]}, {node[high]}{closing}"
        elif low or high:
            kind += f" {BOUNDS[low or high]} {node[low or high]}"
        if kind == "array":
            kind = f"list of {takes(node.get('items', {}))}" + (", each once" if node.get("uniqueItems") else "")
        return kind.replace("null", "`null`")

    def walk(node: dict, prefix: str) -> None:
        for key, sub in _resolved(filled, node).get("properties", {}).items():
            resolved = _resolved(filled, sub)
            text = " ".join((sub.get("description") or resolved.get("description") or "").split())
            rows.append(f"| `{prefix}{key}` | {takes(sub)} | {text.replace('|', '/')} |")
            if key in ("teacher", "data"):
                walk(resolved, f"{key}.")
            if key == "families":
                walk(filled["$defs"]["family"], "families.NAME.")

    walk(filled, "")
    return "\n".join(rows) + "\n"


def _resolved(schema_: dict, node: dict) -> dict:
    """``node``, or what its local ``$ref`` points to."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema_
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node

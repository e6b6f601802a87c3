"""Reading configs: YAML files (overrides only) and KEY=VALUE command-line overrides into the typed configs of
`musicssl.config`.

Loading never stops at the first problem: `parse` collects every error with its dotted path and raises one
`ConfigError`, so a bad file fails before Ray or MLflow start.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from musicssl.config import ExperimentConfig, ProbeConfig, deep_merge


class ConfigError(ValueError):
    """Every problem of one config source, each as `dotted.path: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems) if len(problems) == 1 else
                         f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


M = TypeVar("M", bound=BaseModel)


def set_dotted(data: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a copy of `data` with `a.b.c = value` set."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if rest:
        inner = out.get(head)
        out[head] = set_dotted(inner if isinstance(inner, Mapping) else {}, rest, value)
    else:
        out[head] = value
    return out


def parse_overrides(items: Iterable[str], source: str = "command line") -> dict[str, Any]:
    """Turn `a.b=value` strings into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"{item!r}: expected KEY=VALUE with a dotted key, e.g. model.mask_prob=0.8")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:  # `seeds=[0,` : a problem line, not a traceback
            problems.append(f"{item!r}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc})")
            continue
        out = set_dotted(out, key.strip(), value)
    if problems:
        raise ConfigError(source, problems)
    return out


def probe_overrides(items: Iterable[str], source: str) -> dict[str, Any]:
    """`probe.<field>=value` strings (the experiment's own paths, as in sweep files and `musicssl pretrain`) -> the
    probe section's fields, e.g. `probe.data_roots.gtzan_genre=/data/GTZAN` -> `{data_roots: {gtzan_genre: ...}}`.

    A key without the `probe.` prefix is read as a probe field too (`lr=5e-3`); any other section is an error."""
    given = parse_overrides(items, source)
    section = given.pop("probe", {})
    if not isinstance(section, Mapping):
        raise ConfigError(source, [f"probe: expected probe.<field>=value, got probe={section!r}"])
    others = [k for k in given if k not in ProbeConfig.model_fields]
    if others:
        raise ConfigError(source, [f"{k}: not a probe setting; this command takes probe.<field>=value "
                                   f"(fields: {', '.join(ProbeConfig.model_fields)})" for k in others])
    return deep_merge(given, section)


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[str]:
    """`dotted.path: duplicate key (lines a and b)` for every key a YAML mapping repeats (YAML keeps the last)."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(f"{here}: duplicate key (lines {seen[key]} and {line}); YAML would silently keep "
                                "the last value only")
            else:
                seen[key] = line
            problems += duplicate_keys(value_node, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]")
    return problems


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML raises `ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found" + (" (it is a directory)" if path.is_dir() else "")])
    try:
        text = path.read_text()
        duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"malformed YAML: {where}{getattr(exc, 'problem', exc)}"]) from None
    if duplicates:
        raise ConfigError(str(path), duplicates)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"expected a mapping at the top level, got {type(data).__name__}"])
    return data


def parse(cls: type[M], data: Any, source: str, prefix: str = "") -> M:
    """Validate `data` as `cls`, raising one `ConfigError` with every problem by dotted path."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(cls, exc, prefix)) from None


def format_errors(cls: type[BaseModel], exc: ValidationError, prefix: str = "") -> list[str]:
    """pydantic errors -> `path: message, got X` lines, with a did-you-mean for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        path = ".".join(([prefix] if prefix else []) + loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = field_names_at(cls, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(sorted(known))})"
            lines.append(f"{path}: unknown key{suffix}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if msg[:2].istitle():  # "Input should be ..." -> "input should be ...", but keep "MFCC ..."
            msg = msg[0].lower() + msg[1:]
        got = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], Mapping) else ""
        if not loc and not prefix:  # a whole-config check: its message names its own keys
            lines.append(msg)
            continue
        lines.append(f"{path}: {msg}{got}")
    return lines


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("literal[", "function-")) or part in {"int", "str", "float"})


def field_names_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the nested model reached by `loc` from `cls` (empty if not a model)."""
    current: Any = cls
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    return list(getattr(current, "model_fields", {}))


def dotted_paths(cls: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of `cls` as `dotted.path -> annotation` (for validating sweep grid keys)."""
    out: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        ann = field.annotation
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(dotted_paths(ann, path + "."))
        else:
            out[path] = ann
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> `{dotted.key: leaf}` (tuples and lists stay leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def load_experiment(path: str | Path | None = None, overrides: Iterable[str] = (),
                    base: Callable[[], dict[str, Any]] | None = None) -> ExperimentConfig:
    """Load an ExperimentConfig from YAML overrides plus `key=value` command-line overrides."""
    data = base() if base else {}
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    data = deep_merge(data, parse_overrides(overrides))
    return parse(ExperimentConfig, data, str(path or "config"))

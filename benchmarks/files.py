"""File helpers shared by the device-side runner and the host: hashing, atomic writes, result files."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

_CHUNK = 1 << 20
RESULTS_SCHEMA = Path(__file__).resolve().parent / "results.schema.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> Path:
    """Write through a temporary file in the same folder and ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def typical_ms(latency: dict) -> float:
    """The latency an artifact is compared by: p50, or the mean where the tool that measured gave no median
    (an imported benchmark_model run from an older LiteRT)."""
    return latency["p50"] if latency.get("p50") is not None else latency["mean"]


def results_newest_first(build_dir: Path) -> list[tuple[dict, Path]]:
    """Every benchmark results file of build/<t>/bench/, parsed once and checked against results.schema.json,
    newest ``created`` first (make verify's reports, ``"kind": "verify"``, share the folder and are left out)."""
    folder = build_dir / "bench"
    runs = [(read_json(p, "benchmark results file"), p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    runs = [(data, p) for data, p in runs if not (isinstance(data, dict) and data.get("kind") == "verify")]
    for data, path in runs:
        check_shape(data, RESULTS_SCHEMA, path, "benchmark results file")
    return sorted(runs, key=lambda run: (run[0]["created"], run[1].name), reverse=True)


# -- reading the JSON files the harness trusts (manifest, results, baselines): a corrupt, truncated, binary, empty
# or wrong-shaped file is one line naming it and what is wrong, never a traceback and never a silent pass. The
# schemas are checked here with the standard library alone (the runner travels to boards without jsonschema):
# type, enum, const, required, properties, additionalProperties, items, minItems, minimum, maximum, minLength,
# pattern, $ref into $defs, allOf, oneOf, if/then; format is a note, not a check.
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def read_json(path: Path, what: str, schema: Path | None = None):
    """``path`` parsed, and checked against ``schema``; the BenchError says which file and what is wrong."""
    from benchmarks.errors import BenchError

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BenchError(f"{path}: the {what} is not text (a binary file?); expected JSON") from None
    if not text.strip():
        raise BenchError(f"{path}: the {what} is empty; expected JSON")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"{path}: the {what} is not valid JSON ({exc}); is it truncated?") from None
    if schema is not None:
        check_shape(data, schema, path, what)
    return data


def check_shape(data, schema: Path, path: Path, what: str) -> None:
    from benchmarks.errors import BenchError

    rules = json.loads(schema.read_text())
    problem = schema_problem(data, rules, rules)
    if problem:
        raise BenchError(f"{path}: the {what} does not have the shape of {schema.name}: {problem}")


def _is(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def schema_problem(value, rule: dict, root: dict, where: str = "the top level") -> str:
    """The first place where ``value`` breaks ``rule`` (a JSON schema), as one phrase; "" when it holds."""
    if "$ref" in rule:
        rule = {**root["$defs"][rule["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in rule.items() if k != "$ref"}}
    kinds = rule.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{where} is {json.dumps(value)[:40]}, expected {' or '.join(kinds)}"
    if "enum" in rule and value not in rule["enum"]:
        return f"{where} is {json.dumps(value)[:40]}, expected one of {', '.join(map(json.dumps, rule['enum']))}"
    if "const" in rule and value != rule["const"]:
        return f"{where} is {json.dumps(value)[:40]}, expected {json.dumps(rule['const'])}"
    if _is(value, "number"):
        if "minimum" in rule and value < rule["minimum"] or "maximum" in rule and value > rule["maximum"]:
            return f"{where} = {value} is out of range [{rule.get('minimum', '')}, {rule.get('maximum', '')}]"
    if isinstance(value, str):
        if len(value) < rule.get("minLength", 0):
            return f"{where} is shorter than {rule['minLength']} characters"
        if "pattern" in rule and not re.search(rule["pattern"], value):
            return f"{where} = {value[:40]!r} does not match {rule['pattern']}"
    if isinstance(value, dict):
        for key in rule.get("required", []):
            if key not in value:
                return f"{where} lacks {key!r}"
        props, extra = rule.get("properties", {}), rule.get("additionalProperties", True)
        for key, item in value.items():
            inner = f"{key}" if where == "the top level" else f"{where}.{key}"
            if key in props:
                problem = schema_problem(item, props[key], root, inner)
            elif extra is False:
                problem = f"{inner} is not a known field"
            elif isinstance(extra, dict):
                problem = schema_problem(item, extra, root, inner)
            else:
                problem = ""
            if problem:
                return problem
    if isinstance(value, list):
        if len(value) < rule.get("minItems", 0):
            return f"{where} has fewer than {rule['minItems']} items"
        if isinstance(rule.get("items"), dict):
            for i, item in enumerate(value):
                problem = schema_problem(item, rule["items"], root, f"{where}[{i}]")
                if problem:
                    return problem
    for sub in rule.get("allOf", []):
        problem = schema_problem(value, sub, root, where)
        if problem:
            return problem
    if "oneOf" in rule:
        problems = [schema_problem(value, sub, root, where) for sub in rule["oneOf"]]
        if sum(not p for p in problems) != 1:
            return next((p for p in problems if p), f"{where} matches more than one allowed shape")
    if "if" in rule and not schema_problem(value, rule["if"], root, where):
        return schema_problem(value, rule.get("then", {}), root, where)
    return ""

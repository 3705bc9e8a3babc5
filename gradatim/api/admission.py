"""Admission without an API server: what kube-apiserver does to a TrainingStage or TrainingPipeline on create,
done here with the generated CRD's own schema and CEL rules, and worded as the API server words it.

`gradatim run` checks a recipe with this, so a recipe that runs locally is one a cluster admits, and the two
cannot drift: there is one set of rules, the one in the CRD (`gradatim/api/crd.py`, which writes `crds/`).

The steps, in the API server's order (k8s.io/apiextensions-apiserver, the version in gradatim/cluster/versions.py):

1. Decoding with strict field validation, as kubectl asks by default: any field the schema does not declare fails
   the request on its own (`strict decoding error: unknown field "spec.x"`), before anything else is checked.
2. Structural defaulting from the schema's `default`s; nulls without a default are dropped. CEL rules see the
   defaulted object (`self.batchSize % self.microBatchSize` reads the defaults).
3. Create drops `status` (it is written through the status subresource).
4. ObjectMeta (`metadata.name` must be a DNS subdomain), then the OpenAPI v3 schema (kube-openapi's checks:
   type, enum, required, bounds, pattern, lengths, item counts), then list-type set/map uniqueness.
5. The `x-kubernetes-validations` CEL rules at every node, unless step 4 found a blocking error (a wrong type, an
   unsupported value, a required field missing, too long or too many): then the API server runs no rule and says so.
   Transition rules (those reading `oldSelf`) are skipped, as on create.

The schema walker is written here rather than taken from a JSON-schema library: the API server's behaviour is
Kubernetes' own (structural pruning and defaulting, int-or-string, list types, the order and wording of messages,
which rules run when), none of which a generic validator reproduces, and the subset of OpenAPI the CRDs use is
small. Loading a CRD that uses a keyword outside that subset, or a rule calling a CEL function cel-python lacks,
fails loudly instead of skipping the check.

Beyond the API server's words: a misspelt field gets `; did you mean "learningRate"?`. Not reproduced: ObjectMeta
past the name (labels, annotations; the namespace, which a local run takes from the kustomization) and CEL cost
budgets (the rules are far below them). tests/test_api_server.py compares the problems with the real API server's.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable, Mapping

import celpy
import re2
from celpy import celtypes

from gradatim.api.crd import render_crds

# field.ErrorType, as the API server reports each problem's type (`details.causes[].reason`)
REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
TYPE_INVALID = "FieldValueTypeInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
UNKNOWN_FIELD = "UnknownField"
"""Not a field.ErrorType: strict decoding fails the whole request with `unknown field "<path>"` instead."""

# Errors after which the API server runs no CEL rule (customresource strategy's hasBlockingErr).
BLOCKING = {NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID}
RULES_NOT_CHECKED = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"

# metav1.ObjectMeta's fields: any other key under metadata is an unknown field.
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end"
    f" with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')"
)

# The OpenAPI keywords this module checks; a CRD using another one is refused at load (see _check_keywords).
KEYWORDS = {
    "type", "description", "properties", "items", "additionalProperties", "required", "default", "enum", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "maxProperties", "x-kubernetes-validations", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


@dataclass(frozen=True)
class Problem:
    """One thing the API server would refuse: the field's path, the error type, and the API server's words."""

    field: str
    type: str
    detail: str
    """What follows `field: ` in the API server's message (`Invalid value: 0: ... should be greater than ...`)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


@dataclass(frozen=True)
class _Kind:
    kind: str
    api_version: str
    schema: dict[str, Any]
    has_status: bool


@functools.cache
def _kinds() -> dict[str, _Kind]:
    """Kind → its schema, from the CRD objects `make crds` writes (generated now, not read from disk)."""
    out = {}
    for crd in render_crds().values():
        (version,) = crd["spec"]["versions"]  # one served version; a second would need conversion here too
        schema = version["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        # status is left out: create drops it before validation (and its timestamps use `format`, unchecked here)
        _check_keywords({**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "status"}}, kind)
        for rules in _all_rules(schema):
            for rule in rules:
                _program(rule["rule"])  # compile every rule once, now: a rule cel-python cannot parse fails here
                if rule.get("messageExpression"):
                    _program(rule["messageExpression"])
        out[kind] = _Kind(kind, f"{crd['spec']['group']}/{version['name']}", schema, "status" in version.get("subresources", {}))
    return out


def kinds() -> tuple[str, ...]:
    return tuple(_kinds())


def validate(body: Mapping[str, Any]) -> list[Problem]:
    """The problems the API server would report creating `body` (a TrainingStage or TrainingPipeline, as read
    from YAML), in its words; empty when it would admit it. `body` is not changed."""
    kind = _kinds().get(str(body.get("kind")))
    if kind is None:
        raise ValueError(f"kind {body.get('kind')!r} is not one of {', '.join(_kinds())}")
    obj = _plain(body)
    if obj.get("apiVersion") != kind.api_version:  # the API server would not even route it to this kind
        return [Problem("apiVersion", INVALID, f"Invalid value: {_go_value(obj.get('apiVersion'))}: must be {kind.api_version}")]

    unknown = _unknown_fields(obj, kind.schema)
    if unknown:
        return unknown
    _drop_nulls(obj, kind.schema)
    _default(obj, kind.schema)
    if kind.has_status:
        obj.pop("status", None)

    problems = _object_meta(obj.get("metadata"))
    _openapi(obj, kind.schema, "", problems)
    _list_types(obj, kind.schema, "", problems)
    if any(p.type in BLOCKING for p in problems):
        problems.append(Problem("<nil>", INVALID, f"Invalid value: null: {RULES_NOT_CHECKED}"))
    else:
        _cel_rules(obj, _cel_value(_root_for_cel(obj), kind.schema), kind.schema, "", problems)
    return problems


# --- 1. unknown fields (pruning), 2. defaults ------------------------------------------------------------------


def _unknown_fields(obj: dict[str, Any], schema: dict[str, Any]) -> list[Problem]:
    """The fields structural pruning would drop, as the API server lists them: unknown ObjectMeta keys first, then
    the rest sorted by path."""
    metadata = obj.get("metadata")
    meta = [(f"metadata.{k}", OBJECT_META_FIELDS) for k in sorted(metadata) if k not in OBJECT_META_FIELDS] if isinstance(metadata, dict) else []
    found: list[tuple[str, Iterable[str]]] = []
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key in schema["properties"]:
            _prune(value, schema["properties"][key], key, found)
        else:
            found.append((key, schema["properties"]))
    return [Problem(path, UNKNOWN_FIELD, "unknown field" + _did_you_mean(path, known)) for path, known in meta + sorted(found)]


def _prune(value: Any, schema: dict[str, Any] | None, path: str, found: list[tuple[str, Iterable[str]]]) -> None:
    """Collects (path, the declared names beside it) for each undeclared field under `value`."""
    if isinstance(value, dict):
        for key, sub in value.items():
            child = f"{path}.{key}"
            declared = _property_schema(schema, key) if schema is not None else None
            if declared is not None:
                _prune(sub, declared, child, found)
            else:
                found.append((child, (schema or {}).get("properties", {})))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _prune(item, schema.get("items") if schema else None, f"{path}[{index}]", found)


def _did_you_mean(path: str, known: Iterable[str]) -> str:
    """A hint beyond the API server's words, for a misspelt field: the declared one it is closest to."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1].lower(), list(by_lower), n=1, cutoff=0.75)
    return f'; did you mean "{by_lower[close[0]]}"?' if close else ""


def _drop_nulls(value: Any, schema: dict[str, Any] | None) -> None:
    """Removes `key: null` where the field has no default (with one, defaulting fills it in)."""
    if isinstance(value, dict) and schema is not None:
        for key in list(value):
            sub = _property_schema(schema, key)
            if value[key] is None and sub is not None and "default" not in sub:
                del value[key]
            else:
                _drop_nulls(value[key], sub)
    elif isinstance(value, list) and schema is not None:
        for item in value:
            _drop_nulls(item, schema.get("items"))


def _default(value: Any, schema: dict[str, Any] | None) -> None:
    """Structural defaulting: a missing (or null) field with a `default` gets a copy of it, then the walk goes on
    into it, so the defaults of a defaulted object's own fields apply too."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if "default" in sub and value.get(key) is None:
                value[key] = copy.deepcopy(sub["default"])
        for key, sub in value.items():
            _default(sub, _property_schema(schema, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            items = schema.get("items")
            if item is None and items is not None and "default" in items:
                value[index] = copy.deepcopy(items["default"])
            _default(value[index], items)


def _property_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, dict) else None


# --- 4. ObjectMeta, OpenAPI schema, list types ---------------------------------------------------------------------


def _object_meta(metadata: Any) -> list[Problem]:
    """The name checks the API server makes of every object's metadata (the CRD's own limits come with the schema)."""
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name")
    if not name:
        if metadata.get("generateName"):
            return []
        return [Problem("metadata.name", REQUIRED, "Required value: name or generateName is required")]
    if not isinstance(name, str):
        return []  # the schema's type check reports it
    problems = []
    if len(name) > 253:
        problems.append(Problem("metadata.name", INVALID, f"Invalid value: {_go_quote(name)}: must be no more than 253 characters"))
    if not re2.fullmatch(DNS1123_SUBDOMAIN, name):
        problems.append(Problem("metadata.name", INVALID, f"Invalid value: {_go_quote(name)}: {DNS1123_SUBDOMAIN_MESSAGE}"))
    return problems


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _openapi(value: Any, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
    """kube-openapi's SchemaValidator for one node: type, string, number, array, enum, object, in its order."""
    got = _json_type(value)
    expected = ["integer", "string"] if schema.get("x-kubernetes-int-or-string") else [schema["type"]] if "type" in schema else []
    integral_float = got == "number" and "integer" in expected and value.is_integer()
    if expected and got not in expected and not integral_float and not (got == "integer" and "number" in expected):
        problems.append(Problem(path, TYPE_INVALID, f"Invalid value: {_go_quote(got)}: {path} in body must be of type {','.join(expected)}: {_go_quote(got)}"))
    if value is None:
        return
    if got == "string":
        _string(value, schema, path, problems)
    elif got in ("integer", "number"):
        _number(value, schema, path, problems)
    elif got == "array":
        for index, item in enumerate(value):
            if "items" in schema:
                _openapi(item, schema["items"], f"{path}[{index}]", problems)
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(Problem(path, INVALID, f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(Problem(path, TOO_MANY, f"Too many: {len(value)}: must have at most {_items(schema['maxItems'])}"))
    if "enum" in schema and not any(_same_json(value, allowed) for allowed in schema["enum"]):
        supported = ", ".join(_go_quote(a if isinstance(a, str) else _go_json(a)) for a in schema["enum"])
        problems.append(Problem(path, NOT_SUPPORTED, f"Unsupported value: {_go_value(value)}: supported values: {supported}"))
    if got == "object":
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            problems.append(Problem(path, TOO_MANY, f"Too many: {len(value)}: must have at most {_items(schema['maxProperties'])}"))
        for key, sub in value.items():
            child = f"{path}.{key}" if path else key
            if key in schema.get("properties", {}):
                _openapi(sub, schema["properties"][key], child, problems)
            elif isinstance(schema.get("additionalProperties"), dict):
                _openapi(sub, schema["additionalProperties"], child, problems)
        for key in schema.get("required", []):
            if key not in value:
                problems.append(Problem(f"{path}.{key}" if path else key, REQUIRED, "Required value"))


def _string(value: str, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
    """maxLength, minLength, pattern: the first that fails is reported."""
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        n = schema["maxLength"]
        problems.append(Problem(path, TOO_LONG, f"Too long: may not be more than {n} byte{'' if n == 1 else 's'}"))
    elif "minLength" in schema and len(value) < schema["minLength"]:
        problems.append(Problem(path, INVALID, f"Invalid value: {_go_quote(value)}: {path} in body should be at least {schema['minLength']} chars long"))
    elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        problems.append(Problem(path, INVALID, f"Invalid value: {_go_quote(value)}: {path} in body should match '{schema['pattern']}'"))


def _number(value: int | float, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
    # An integer is compared with the bound truncated to an integer and printed as one, as kube-openapi does.
    as_int = isinstance(value, int)
    for bound, exclusive_key, above in (("minimum", "exclusiveMinimum", True), ("maximum", "exclusiveMaximum", False)):
        if bound not in schema:
            continue
        limit = int(schema[bound]) if as_int else float(schema[bound])
        exclusive = bool(schema.get(exclusive_key))
        fails = (value <= limit if exclusive else value < limit) if above else (value >= limit if exclusive else value > limit)
        if fails:
            words = ("greater than" if above else "less than") + ("" if exclusive else " or equal to")
            problems.append(Problem(path, INVALID, f"Invalid value: {_go_value(value)}: {path} in body should be {words} {_go_value(limit)}"))


def _list_types(value: Any, schema: dict[str, Any] | None, path: str, problems: list[Problem]) -> None:
    """x-kubernetes-list-type set and map: the second occurrence of a value (or map key) is a Duplicate value."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            _list_types(sub, _property_schema(schema, key), f"{path}.{key}" if path else key, problems)
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            keys = [_json_key(item) for item in value]
            shown = value
        elif list_type == "map":
            names = schema["x-kubernetes-list-map-keys"]
            shown = [{k: item[k] for k in names if k in item} if isinstance(item, dict) else {} for item in value]
            keys = [_json_key(s) for s in shown]
        else:
            keys = shown = []
        for index in _second_occurrences(keys):
            problems.append(Problem(f"{path}[{index}]", DUPLICATE, f"Duplicate value: {_go_value(shown[index])}"))
        for index, item in enumerate(value):
            _list_types(item, schema.get("items"), f"{path}[{index}]", problems)


def _second_occurrences(keys: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    out = []
    for index, key in enumerate(keys):
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            out.append(index)
    return out


def _json_key(value: Any) -> str:
    return json.dumps([_json_type(value), value], sort_keys=True)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return _json_key(a) == _json_key(b)


def _items(n: int) -> str:
    return f"{n} item{'' if n == 1 else 's'}"


@functools.cache
def _pattern(pattern: str) -> Any:
    return re2.compile(pattern)  # RE2, as Go's regexp: `$` is the end of the text, not before a trailing newline


# --- 5. CEL rules ----------------------------------------------------------------------------------------------------

# cel-python has every function and macro the rules use (has, size, matches with RE2, contains, startsWith, in, all,
# exists_one, filter, map literals): nothing is added. Kubernetes' own CEL libraries (quantity, isSorted, url, ...)
# are not there; _program refuses a rule that calls one, so loading the CRDs fails until it is added here.


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment()  # builds cel-python's parser (a third of a second): once, and only when needed


CEL_MACROS = {"has", "all", "exists", "exists_one", "filter", "map", "dyn"}


@dataclass(frozen=True)
class _Program:
    runner: Any
    uses_old_self: bool


@functools.cache
def _program(expression: str) -> _Program:
    """Compiled once per expression: a recipe of hundreds of stages evaluates the same few rules over and over.
    A function cel-python lacks is refused here, not found out when some object first reaches the rule."""
    ast = _environment().compile(expression)
    called = {str(t.children[1]) for t in ast.find_data("member_dot_arg")} | {str(t.children[0]) for t in ast.find_data("ident_arg")}
    missing = called - CEL_MACROS - set(celpy.evaluation.base_functions)
    if missing:
        raise NotImplementedError(f"CEL rule {expression!r} calls {', '.join(sorted(missing))}, which cel-python lacks; add it in gradatim.api.admission")
    uses_old_self = any(tree.children[0] == "oldSelf" for tree in ast.find_data("ident"))
    return _Program(_environment().program(ast), uses_old_self)


def _evaluate(expression: str, self_value: Any) -> tuple[Any, str | None]:
    """(result, None), or (None, the error as cel-go words it)."""
    try:
        result = _program(expression).runner.evaluate({"self": self_value})
    except celpy.CELEvalError as err:
        return None, _cel_error(err)
    if isinstance(result, celpy.CELEvalError):
        return None, _cel_error(result)
    return result, None


def _cel_error(err: celpy.CELEvalError) -> str:
    message, cause = (list(err.args) + [None, None])[:2]
    if cause is KeyError and (key := re.search(r"'(.*)'", str(message))):
        return f"no such key: {key.group(1)}"
    if cause is ZeroDivisionError:
        return "modulus by zero" if "modulo" in str(err.args[2:]) else "division by zero"
    return str(message)


def _root_for_cel(obj: dict[str, Any]) -> dict[str, Any]:
    """At the root `self.metadata` holds only name and generateName, as in the API server."""
    metadata = obj.get("metadata") or {}
    return {**obj, "metadata": {k: metadata[k] for k in ("name", "generateName") if k in metadata}}


def _cel_value(value: Any, schema: dict[str, Any] | None) -> Any:
    """The object as CEL sees it: typed by the schema (an `integer` is an int, a `number` a double even when
    written as 1), maps keyed by strings."""
    schema = schema or {}
    if value is None:
        return None
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): _cel_value(v, _property_schema(schema, k)) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([_cel_value(v, schema.get("items")) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if schema.get("type") == "number":
        return celtypes.DoubleType(value)
    if isinstance(value, int) or schema.get("type") == "integer":
        return celtypes.IntType(int(value))
    return celtypes.DoubleType(value)


def _cel_rules(value: Any, cel: Any, schema: dict[str, Any] | None, path: str, problems: list[Problem]) -> None:
    """Each node's rules, then its children's, as the API server walks them."""
    if schema is None or value is None:
        return
    node_type = schema.get("type", "")
    for rule in schema.get("x-kubernetes-validations", []):
        if _program(rule["rule"]).uses_old_self:
            continue  # a transition rule: on create there is no old object
        result, error = _evaluate(rule["rule"], cel)
        here = path or "<nil>"
        if error is not None:
            problems.append(Problem(here, INVALID, f"Invalid value: {_go_quote(node_type)}: {error} evaluating rule: {_rule_text(rule)}"))
        elif not (isinstance(result, celtypes.BoolType) and result):  # anything but true fails, as in the API server
            if rule.get("fieldPath"):
                here = f"{path}.{rule['fieldPath'].lstrip('.')}" if path else rule["fieldPath"].lstrip(".")
            problems.append(_rule_problem(here, node_type, _rule_message(rule, cel), rule.get("reason")))
    if isinstance(value, dict):
        for key, sub in value.items():
            child = _property_schema(schema, key)
            if child is not None:
                _cel_rules(sub, cel[celtypes.StringType(key)], child, f"{path}.{key}" if path else key, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _cel_rules(item, cel[index], schema.get("items"), f"{path}[{index}]", problems)


def _rule_message(rule: dict[str, Any], cel: Any) -> str:
    """messageExpression when it gives a one-line string, else message, else `failed rule: <rule>`."""
    if rule.get("messageExpression"):
        text, error = _evaluate(rule["messageExpression"], cel)
        if error is None and isinstance(text, str) and text.strip() and "\n" not in text.strip():
            return text.strip()
    return rule["message"].strip() if rule.get("message") else f"failed rule: {_rule_text(rule)}"


def _rule_text(rule: dict[str, Any]) -> str:
    return (rule.get("message") or rule["rule"]).strip()


def _rule_problem(path: str, node_type: str, message: str, reason: str | None) -> Problem:
    if reason == FORBIDDEN:
        return Problem(path, FORBIDDEN, f"Forbidden: {message}")
    if reason == REQUIRED:
        return Problem(path, REQUIRED, f"Required value: {message}")
    if reason == DUPLICATE:
        return Problem(path, DUPLICATE, f"Duplicate value: {_go_quote(node_type)}")
    return Problem(path, INVALID, f"Invalid value: {_go_quote(node_type)}: {message}")


def _all_rules(schema: Any) -> Any:
    if isinstance(schema, dict):
        if "x-kubernetes-validations" in schema:
            yield schema["x-kubernetes-validations"]
        for sub in schema.get("properties", {}).values():
            yield from _all_rules(sub)
        for key in ("items", "additionalProperties"):
            yield from _all_rules(schema.get(key))


def _check_keywords(schema: dict[str, Any], where: str) -> None:
    """Refuses a schema keyword this module does not check, so a new one in the CRD cannot go unchecked locally."""
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise NotImplementedError(f"{where}: gradatim.api.admission does not check {', '.join(sorted(unknown))}; add it there")
    for name, sub in schema.get("properties", {}).items():
        _check_keywords(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _check_keywords(schema[key], f"{where}.{key}")


# --- values as Go prints them --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A deep copy with YAML's dates as the strings kubectl sends (PyYAML reads `2025-01-01` as a date)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _go_value(value: Any) -> str:
    """A bad value as field.Error prints it: %v for numbers and booleans, %q for strings, JSON for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    return _go_json(value)


def _go_quote(text: str) -> str:
    """Go's strconv.Quote."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _shortest_digits(value: float) -> tuple[str, int]:
    """The fewest significant digits that read back as `value` (Python's repr and Go agree on them), and the
    decimal exponent of the first."""
    _, digits, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    return text, exponent + len(text) - 1


def _go_float(value: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest): `1`, `0.5`, `123456`, `1e-05`, `1e+06`."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits, exp = _shortest_digits(value)
    sign = "-" if value < 0 else ""
    if exp < -4 or exp >= 6:
        return f"{sign}{_mantissa(digits)}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return sign + _fixed(digits, exp)


def _mantissa(digits: str) -> str:
    return digits[0] + ("." + digits[1:] if len(digits) > 1 else "")


def _fixed(digits: str, exp: int) -> str:
    if exp < 0:
        return "0." + "0" * (-exp - 1) + digits
    whole = digits[: exp + 1].ljust(exp + 1, "0")
    frac = digits[exp + 1:]
    return whole + ("." + frac if frac else "")


def _go_json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, floats as `1`, `0.5` or `2.5e-7`, <, > and & escaped."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_json(str(k))}:{_go_json(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        digits, exp = _shortest_digits(value)
        sign = "-" if value < 0 else ""
        if abs(value) < 1e-6 or abs(value) >= 1e21:
            return f"{sign}{_mantissa(digits)}e{'-' if exp < 0 else '+'}{abs(exp)}"
        return sign + _fixed(digits, exp)
    if isinstance(value, float):
        return "0"
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

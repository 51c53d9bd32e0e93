"""pydantic validation errors as one line per bad key: ``key.path[0]: message, got value``.

Used by every configuration edgebed reads (experiment files, tier configs, link topologies), so a
user sees the same shape of message whatever they got wrong: the dotted key path, what is
allowed (the range from the field's constraints, the allowed keys of the enclosing section, the
allowed literal values) and the value given.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import annotated_types
from pydantic import BaseModel, ValidationError

_NO_INPUT_ERRORS = ("model_type", "dict_type", "missing", "extra_forbidden")
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def key_path(loc: tuple[Any, ...]) -> str:
    """``("links", "a", "up", "delay_ms")`` → ``links.a.up.delay_ms``; list indices as ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *get_args(annotation),
                 *(a for t in get_args(annotation) for a in get_args(t))):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def field_at(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """(model class, FieldInfo) of the field a pydantic error location points at, if found."""
    model: Any = root
    info = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(part)
            if info is None:  # a dict key (a tier or link name): stay on the value model
                continue
            model = _model_of(info.annotation)
        else:
            model = None
    return model, info


def range_text(info: Any) -> str | None:
    """``must be within 0..100`` from a field's ge/gt/le/lt constraints (None without any)."""
    lo: Any = None
    hi: Any = None
    lo_op, hi_op = ">=", "<="
    for m in getattr(info, "metadata", []):
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_op = m.gt, ">"
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_op = m.lt, "<"
    if lo is not None and hi is not None and lo_op == ">=" and hi_op == "<=":
        return f"must be within {lo}..{hi}"
    if lo is not None and hi is not None:
        return f"must be {lo_op} {lo} and {hi_op} {hi}"
    if lo is not None:
        return f"must be {lo_op} {lo}"
    if hi is not None:
        return f"must be {hi_op} {hi}"
    return None


def _shown(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problems(exc: ValidationError, root: type[BaseModel], prefix: tuple[Any, ...] = ()) -> list[str]:
    """One ``key.path: message`` line per error of ``exc`` raised validating ``root``."""
    out: list[str] = []
    for err in exc.errors():
        # drop pydantic's internal union/validator tags from the location
        loc = tuple(p for p in err["loc"]
                    if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent, _ = field_at(root, loc[:-1]) if len(loc) > 1 else (root, None)
            allowed = f"; allowed keys: {', '.join(parent.model_fields)}" if parent else ""
            msg = f"unknown key{allowed}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] in _RANGE_ERRORS:
            msg = range_text(field_at(root, loc)[1]) or msg
        elif err["type"] == "literal_error":
            msg = f"must be one of {err['ctx']['expected']}"
        elif err["type"] in ("finite_number",):
            msg = "must be a finite number"
        if "input" in err and err["type"] not in _NO_INPUT_ERRORS:
            got = err["input"]
            if not isinstance(got, dict | list) and "got " not in msg:
                msg += f", got {_shown(got)}"
        line = f"{key_path((*prefix, *loc))}: {msg}"
        if line not in out:
            out.append(line)
    return out

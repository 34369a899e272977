"""Field values as labels and records state them, turned into numbers or a typed error.

Every reader goes through these few functions so that a bad value anywhere (a missing key, a
string that is not a number, NaN, a vector with the wrong count) raises one
``LabelError(path, problem, field=...)`` naming the file and the field.

Records state vectors as strings ``"(0.95,0.34,-1.89)"``, as JSON lists, or (ODL) as tuples;
``"UNK"``, ``"N/A"``, ``"NULL"`` and empty strings mean "unknown" and become None where a field
is optional.
"""

from __future__ import annotations

import math
import re

from ..errors import LabelError, ModelError
from ..models import model_from_components

UNKNOWN = frozenset({"", "UNK", "UNKNOWN", "N/A", "NA", "NULL", "NONE", "NAN_UNK"})

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def is_unknown(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().strip("\"'").upper() in UNKNOWN)


def number(value, path, field, *, optional=False):
    """A finite float from a number or a numeric string; None for unknown when optional."""
    if is_unknown(value):
        if optional:
            return None
        raise LabelError(path, "missing or unknown value", field=field)
    if isinstance(value, bool):
        raise LabelError(path, f"expected a number, got {value!r}", field=field)
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str):
        s = value.strip().strip("\"'")
        # A unit suffix as PDS3 writes it ("0.42 <m>") is not part of the number.
        s = re.sub(r"\s*<[^>]*>\s*$", "", s)
        if s.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise LabelError(path, f"not finite: {_short(value)}", field=field)
        if not _NUMBER.match(s):
            raise LabelError(path, f"expected a number, got {_short(value)}", field=field)
        v = float(s)
    else:
        raise LabelError(path, f"expected a number, got {_short(value)}", field=field)
    if not math.isfinite(v):
        raise LabelError(path, f"not finite: {_short(value)}", field=field)
    return v


def integer(value, path, field, *, optional=False):
    """An int from a number or numeric string with no fractional part."""
    v = number(value, path, field, optional=optional)
    if v is None:
        return None
    if v != int(v):
        raise LabelError(path, f"expected an integer, got {_short(value)}", field=field)
    return int(v)


def split_tuple(value, path, field):
    """The items of ``"(a,b,c)"``, ``"a,b,c"``, a list or a tuple (strings stay strings)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("(") and s.endswith(")"):
            s = s[1:-1]
        elif s.startswith("[") and s.endswith("]"):
            s = s[1:-1]
        if not s.strip():
            return []
        return [p.strip() for p in s.split(",")]
    raise LabelError(path, f"expected a list of numbers, got {_short(value)}", field=field)


def vector(value, path, field, n=3, *, optional=False):
    """A tuple of ``n`` finite floats (``n=None``: any count); None for unknown when optional."""
    if is_unknown(value):
        if optional:
            return None
        raise LabelError(path, "missing or unknown value", field=field)
    items = split_tuple(value, path, field)
    if n is not None and len(items) != n:
        raise LabelError(path, f"expected {n} numbers, got {len(items)} in {_short(value)}", field=field)
    return tuple(number(v, path, f"{field}[{i}]") for i, v in enumerate(items))


def text(value, path, field, *, optional=True):
    """A stripped string; None for unknown when optional."""
    if is_unknown(value):
        if optional:
            return None
        raise LabelError(path, "missing or unknown value", field=field)
    if isinstance(value, (dict, list, tuple)):
        raise LabelError(path, f"expected text, got {_short(value)}", field=field)
    return str(value).strip().strip("\"'")


def quaternion(value, path, field, *, optional=True):
    """A scalar-first quaternion (4 finite numbers, not all zero); None for unknown when optional."""
    q = vector(value, path, field, n=4, optional=optional)
    if q is None:
        return None
    if math.fsum(x * x for x in q) < 1e-12:
        raise LabelError(path, "zero quaternion", field=field)
    return q


def require(mapping, key, path, field=None):
    """``mapping[key]`` or a LabelError naming the missing field."""
    if not isinstance(mapping, dict):
        raise LabelError(path, f"expected an object, got {_short(mapping)}", field=field or key)
    if key not in mapping:
        raise LabelError(path, "missing", field=field or key)
    return mapping[key]


def _short(value, limit=60) -> str:
    s = repr(value)
    s = s.replace("\n", " ").replace("\r", " ")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def camera_model(model_type, components, path, field):
    """A camera model from its type and ordered components; errors name ``field`` and the part.

    Components are already numbers (vectors as 3-tuples, T and P as scalars). A and O are
    re-normalised by the model classes.
    """
    try:
        return model_from_components(model_type, components, source=path)
    except ModelError as e:
        part = f"{field}.{e.field}" if e.field and e.field != "model_components" else field
        raise ModelError(path, e.problem, field=part) from None

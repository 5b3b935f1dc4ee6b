"""Tinybird JWT scopes as immutable, validated values.

A scope becomes one object of the JWT ``scopes`` claim. Tinybird JWTs take
three scope types: ``PIPES:READ`` (with optional ``fixed_params``),
``DATASOURCES:READ`` (with an optional SQL ``filter``) and
``DATASOURCES:APPEND``. Tinybird's JWT documentation lists only the two read
types; ``DATASOURCES:APPEND`` comes from the ``@tinybirdco/sdk`` types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeAlias, TypeGuard

from ._errors import InvalidScopeError

__all__ = [
    "DatasourceAppend",
    "DatasourceRead",
    "ParamValue",
    "PipeRead",
    "Scope",
    "quote_literal",
    "sql_filter",
]

ParamValue: TypeAlias = str | int | float | bool
"""A value allowed in ``fixed_params``."""

# Tinybird names are identifiers; a shared datasource is referenced as
# ``workspace.datasource``. Resource ids (``t_...``) have the same shape.
_RESOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_RESOURCE_LENGTH = 255


# Policies build the same few scopes on every request, so names that passed
# their pattern are remembered and skip the regular expression next time. The
# sets keep only exact str values, stop growing at _MAX_REMEMBERED names, and
# need no lock because set.add is atomic under the GIL.
_MAX_REMEMBERED = 4096
_valid_resources: set[str] = set()
_valid_param_names: set[str] = set()


def _check_resource(resource: object, kind: str) -> str:
    if not isinstance(resource, str):
        raise InvalidScopeError(
            f"{kind} resource must be a str, not {type(resource).__name__}.",
            field="resource",
        )
    if type(resource) is str and resource in _valid_resources:
        return resource
    if len(resource) > _MAX_RESOURCE_LENGTH or not _RESOURCE.fullmatch(resource):
        raise InvalidScopeError(
            f"{kind} resource {resource[:80]!r} is not a valid Tinybird name or id; "
            "use letters, digits and underscores, not starting with a digit.",
            field="resource",
        )
    if type(resource) is str and len(_valid_resources) < _MAX_REMEMBERED:
        _valid_resources.add(resource)
    return resource


def _is_param_name(key: object) -> TypeGuard[str]:
    if not isinstance(key, str):
        return False
    if type(key) is str and key in _valid_param_names:
        return True
    if not _IDENTIFIER.fullmatch(key):
        return False
    if type(key) is str and len(_valid_param_names) < _MAX_REMEMBERED:
        _valid_param_names.add(key)
    return True


def _check_param(key: object, value: object) -> tuple[str, ParamValue]:
    if not _is_param_name(key):
        raise InvalidScopeError(
            f"fixed_params key {key!r} is not a valid parameter name; "
            "use letters, digits and underscores, not starting with a digit.",
            field="fixed_params",
        )
    # bool is a subclass of int, so it passes the int check below as intended.
    # The error's field name is formatted only on failure, because this runs
    # for every parameter of every scope a policy builds.
    if isinstance(value, str):
        if not value:
            field = f"fixed_params[{key!r}]"
            raise InvalidScopeError(
                f"{field} is an empty string; an empty tenant value can widen "
                "access, so pass a non-empty value or drop the parameter.",
                field=field,
            )
        return key, value
    if isinstance(value, int):
        return key, value
    if isinstance(value, float):
        if not math.isfinite(value):
            field = f"fixed_params[{key!r}]"
            raise InvalidScopeError(
                f"{field} is {value!r}; JSON has no NaN or infinity, "
                "so pass a finite number.",
                field=field,
            )
        return key, value
    field = f"fixed_params[{key!r}]"
    if value is None:
        raise InvalidScopeError(
            f"{field} is None; a missing tenant value can widen access, "
            "so the token is not signed. Check that the principal has this value.",
            field=field,
        )
    raise InvalidScopeError(
        f"{field} has type {type(value).__name__}; "
        "fixed_params values must be str, int, float or bool.",
        field=field,
    )


def _value_tag(value: ParamValue) -> tuple[str, str]:
    # Python treats True == 1 == 1.0 and 0.0 == -0.0, but they serialise to
    # different JSON; equality and hashing go through this tag so that two
    # scopes compare equal only when their claims are byte-identical.
    return type(value).__name__, repr(value)


class Scope:
    """Base class of the scope values; build one of the subclasses."""

    __slots__ = ("_claim", "_key", "resource")

    type: ClassVar[str]
    resource: str
    _claim: dict[str, Any]
    _key: tuple[object, ...]

    def to_claim(self) -> dict[str, Any]:
        """Return a copy of this scope as an object of the JWT ``scopes`` claim."""
        claim = dict(self._claim)
        if "fixed_params" in claim:
            claim["fixed_params"] = dict(claim["fixed_params"])
        return claim

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scope):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(
        self, resource: str, extra: tuple[str, Any] | None, key: tuple[object, ...]
    ) -> None:
        claim: dict[str, Any] = {"type": self.type, "resource": resource}
        if extra is not None:
            claim[extra[0]] = extra[1]
        object.__setattr__(self, "resource", resource)
        object.__setattr__(self, "_claim", claim)
        object.__setattr__(self, "_key", key)


class PipeRead(Scope):
    """``PIPES:READ`` on one pipe, optionally with ``fixed_params``.

    Tinybird passes ``fixed_params`` to the pipe's template, and they override
    any parameter of the same name in the request URL. A pipe that does not
    use a parameter is not filtered by it: Tinybird does not check that.
    """

    __slots__ = ("_params",)
    type = "PIPES:READ"
    _params: tuple[tuple[str, ParamValue], ...]

    def __init__(
        self, resource: str, fixed_params: Mapping[str, ParamValue] | None = None
    ) -> None:
        resource = _check_resource(resource, "PipeRead")
        params: tuple[tuple[str, ParamValue], ...] = ()
        if fixed_params is not None:
            if type(fixed_params) is not dict and not isinstance(fixed_params, Mapping):
                raise InvalidScopeError(
                    "PipeRead fixed_params must be a mapping of parameter names "
                    f"to values, not {type(fixed_params).__name__}.",
                    field="fixed_params",
                )
            params = tuple(sorted(_check_param(k, v) for k, v in fixed_params.items()))
        tags = tuple((k, _value_tag(v)) for k, v in params)
        extra = ("fixed_params", dict(params)) if params else None
        object.__setattr__(self, "_params", params)
        self._init(resource, extra, (self.type, resource, tags))

    @property
    def fixed_params(self) -> dict[str, ParamValue] | None:
        """A copy of the fixed parameters, or ``None`` when there are none."""
        return dict(self._params) if self._params else None

    def __repr__(self) -> str:
        return f"PipeRead({self.resource!r}, fixed_params={self.fixed_params!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # __setattr__ rejects writes, so copy and pickle rebuild through __init__.
        return (PipeRead, (self.resource, self.fixed_params))


class DatasourceRead(Scope):
    """``DATASOURCES:READ`` on one datasource, optionally with a SQL ``filter``.

    Tinybird appends ``filter`` as a raw SQL ``WHERE`` clause to every query on
    the datasource. Build it with :func:`sql_filter` rather than formatting
    user values into SQL.
    """

    __slots__ = ("filter",)
    type = "DATASOURCES:READ"
    filter: str | None

    def __init__(self, resource: str, filter: str | None = None) -> None:
        resource = _check_resource(resource, "DatasourceRead")
        if filter is not None:
            if not isinstance(filter, str):
                raise InvalidScopeError(
                    "DatasourceRead filter must be a str, "
                    f"not {type(filter).__name__}.",
                    field="filter",
                )
            if not filter.strip():
                raise InvalidScopeError(
                    "DatasourceRead filter is empty; pass None for no filter "
                    "or a SQL condition built with sql_filter().",
                    field="filter",
                )
            if "\x00" in filter:
                raise InvalidScopeError(
                    "DatasourceRead filter contains a NUL character; "
                    "build it with sql_filter().",
                    field="filter",
                )
        object.__setattr__(self, "filter", filter)
        extra = ("filter", filter) if filter is not None else None
        self._init(resource, extra, (self.type, resource, filter))

    def __repr__(self) -> str:
        return f"DatasourceRead({self.resource!r}, filter={self.filter!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (DatasourceRead, (self.resource, self.filter))


class DatasourceAppend(Scope):
    """``DATASOURCES:APPEND`` on one datasource.

    NOTE: Tinybird's JWT page lists only the read scopes; the TypeScript SDK
    offers this one, but whether Tinybird honours it in a JWT is unconfirmed.
    """

    __slots__ = ()
    type = "DATASOURCES:APPEND"

    def __init__(self, resource: str) -> None:
        resource = _check_resource(resource, "DatasourceAppend")
        self._init(resource, None, (self.type, resource))

    def __repr__(self) -> str:
        return f"DatasourceAppend({self.resource!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (DatasourceAppend, (self.resource,))


_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\x00": "\\0",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)

SqlValue: TypeAlias = str | int | float | bool


def quote_literal(value: SqlValue) -> str:
    """Render ``value`` as a ClickHouse literal.

    Strings become single-quoted string literals with backslash, quote and
    control characters escaped as ClickHouse's string-literal syntax defines,
    so ``o'brien\\`` becomes ``'o\\'brien\\\\'``.

    :raises InvalidScopeError: for ``None``, NaN, infinity and other types.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.translate(_ESCAPE_TABLE) + "'"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidScopeError(
                f"SQL value {value!r} is not a finite number.", field="filter"
            )
        return repr(value)
    raise InvalidScopeError(
        f"SQL value of type {type(value).__name__} cannot be quoted; "
        "use str, int, float or bool.",
        field="filter",
    )


def sql_filter(**conditions: SqlValue | Iterable[SqlValue]) -> str:
    """Build a ``DatasourceRead`` filter that matches every condition.

    Each keyword is a column name. A scalar value gives ``column = value``; a
    list, tuple, set or frozenset gives ``column IN (...)``. Conditions are
    joined with ``AND`` in keyword order::

        sql_filter(org_id="acme", region=["eu", "us"])
        # "org_id = 'acme' AND region IN ('eu', 'us')"

    :raises InvalidScopeError: for an invalid column name, an empty
        collection, ``None`` or a value that :func:`quote_literal` rejects.
    """
    if not conditions:
        raise InvalidScopeError(
            "sql_filter() needs at least one column=value condition.", field="filter"
        )
    parts = []
    for column, value in conditions.items():
        if not _IDENTIFIER.fullmatch(column):
            raise InvalidScopeError(
                f"sql_filter column {column!r} is not a valid column name.",
                field="filter",
            )
        if value is None:
            raise InvalidScopeError(
                f"sql_filter value for {column!r} is None; a missing tenant "
                "value must not reach a filter.",
                field="filter",
            )
        if isinstance(value, (list, tuple, set, frozenset)):
            items: list[SqlValue] = list(value)
            if not items:
                raise InvalidScopeError(
                    f"sql_filter value for {column!r} is an empty collection, "
                    "which would match no rows; pass at least one value.",
                    field="filter",
                )
            if isinstance(value, (set, frozenset)):
                items.sort(key=repr)
            for item in items:
                _reject_empty_string(column, item)
            quoted = ", ".join(quote_literal(item) for item in items)
            parts.append(f"{column} IN ({quoted})")
        elif isinstance(value, (str, int, float)):
            _reject_empty_string(column, value)
            parts.append(f"{column} = {quote_literal(value)}")
        else:
            raise InvalidScopeError(
                f"sql_filter value for {column!r} has type {type(value).__name__}; "
                "use str, int, float, bool or a list of them.",
                field="filter",
            )
    return " AND ".join(parts)


def _reject_empty_string(column: str, value: object) -> None:
    if value == "":
        raise InvalidScopeError(
            f"sql_filter value for {column!r} is an empty string; a missing tenant "
            "value must not reach a filter, so pass a non-empty value.",
            field="filter",
        )

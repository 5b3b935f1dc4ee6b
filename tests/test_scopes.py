"""Scope values, parameter validation and ClickHouse quoting."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import pytest

from tinybird_asgi import (
    DatasourceAppend,
    DatasourceRead,
    InvalidScopeError,
    PipeRead,
    quote_literal,
    sql_filter,
)

# PipeRead


def test_pipe_read_claim_without_params() -> None:
    assert PipeRead("sales").to_claim() == {"type": "PIPES:READ", "resource": "sales"}


def test_pipe_read_claim_with_params() -> None:
    scope = PipeRead("sales", fixed_params={"org_id": "acme", "limit": 10})

    assert scope.to_claim() == {
        "type": "PIPES:READ",
        "resource": "sales",
        "fixed_params": {"limit": 10, "org_id": "acme"},
    }


def test_pipe_read_empty_params_omitted() -> None:
    assert PipeRead("sales", fixed_params={}).to_claim() == {
        "type": "PIPES:READ",
        "resource": "sales",
    }


def test_pipe_read_fixed_params_property() -> None:
    scope = PipeRead("sales", fixed_params={"org_id": "acme"})

    assert scope.fixed_params == {"org_id": "acme"}
    assert PipeRead("sales").fixed_params is None


@pytest.mark.parametrize("value", ["acme", 7, -3, 0, 2.5, 0.0, True, False], ids=repr)
def test_pipe_read_accepts_value(value: object) -> None:
    scope = PipeRead("sales", fixed_params={"p": value})  # type: ignore[dict-item]

    assert scope.to_claim()["fixed_params"] == {"p": value}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "is None"),
        ("", "empty string"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (b"acme", "has type bytes"),
        (["acme"], "has type list"),
        ({"id": "acme"}, "has type dict"),
        (("acme",), "has type tuple"),
        ({"acme"}, "has type set"),
    ],
    ids=[
        "none",
        "empty",
        "nan",
        "inf",
        "-inf",
        "bytes",
        "list",
        "dict",
        "tuple",
        "set",
    ],
)
def test_pipe_read_rejects_value(value: object, message: str) -> None:
    with pytest.raises(InvalidScopeError, match=message) as caught:
        PipeRead("sales", fixed_params={"org_id": value})  # type: ignore[dict-item]

    assert caught.value.field == "fixed_params['org_id']"
    assert "org_id" in str(caught.value)


@pytest.mark.parametrize("key", ["", "1org", "org-id", "org id", "org.id", 3, None])
def test_pipe_read_rejects_key(key: object) -> None:
    with pytest.raises(InvalidScopeError, match="not a valid parameter name") as caught:
        PipeRead("sales", fixed_params={key: "acme"})  # type: ignore[dict-item]

    assert caught.value.field == "fixed_params"


def test_pipe_read_rejects_params_not_mapping() -> None:
    with pytest.raises(InvalidScopeError, match="must be a mapping") as caught:
        PipeRead("sales", fixed_params=[("org_id", "acme")])  # type: ignore[arg-type]

    assert caught.value.field == "fixed_params"


def test_pipe_read_repr() -> None:
    scope = PipeRead("sales", fixed_params={"org_id": "acme"})

    assert repr(scope) == "PipeRead('sales', fixed_params={'org_id': 'acme'})"


# Resources


@pytest.mark.parametrize(
    "resource", ["sales", "_tmp", "Sales_2024", "t_0123abcd", "shared.events"]
)
def test_resource_accepted(resource: str) -> None:
    assert PipeRead(resource).resource == resource


@pytest.mark.parametrize(
    "resource",
    ["", " ", "2024_sales", "sales-eu", "sales eu", "a.b.c", ".sales", "sales/x"],
)
@pytest.mark.parametrize("kind", [PipeRead, DatasourceRead, DatasourceAppend])
def test_resource_rejected(resource: str, kind: type[Any]) -> None:
    with pytest.raises(InvalidScopeError, match="not a valid Tinybird name") as caught:
        kind(resource)

    assert caught.value.field == "resource"


def test_resource_rejects_too_long() -> None:
    with pytest.raises(InvalidScopeError, match="not a valid Tinybird name"):
        PipeRead("a" * 256)


@pytest.mark.parametrize("kind", [PipeRead, DatasourceRead, DatasourceAppend])
def test_resource_rejects_non_str(kind: type[Any]) -> None:
    with pytest.raises(InvalidScopeError, match="must be a str") as caught:
        kind(b"sales")

    assert caught.value.field == "resource"


# DatasourceRead and DatasourceAppend


def test_datasource_read_claim_without_filter() -> None:
    assert DatasourceRead("events").to_claim() == {
        "type": "DATASOURCES:READ",
        "resource": "events",
    }


def test_datasource_read_claim_with_filter() -> None:
    scope = DatasourceRead("events", filter="org_id = 'acme'")

    assert scope.to_claim() == {
        "type": "DATASOURCES:READ",
        "resource": "events",
        "filter": "org_id = 'acme'",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("org_id = 'a'\x00", "NUL"),
        (b"org_id = 1", "must be a str"),
    ],
    ids=["empty", "blank", "nul", "bytes"],
)
def test_datasource_read_rejects_filter(value: object, message: str) -> None:
    with pytest.raises(InvalidScopeError, match=message) as caught:
        DatasourceRead("events", filter=value)  # type: ignore[arg-type]

    assert caught.value.field == "filter"


def test_datasource_append_claim() -> None:
    assert DatasourceAppend("events").to_claim() == {
        "type": "DATASOURCES:APPEND",
        "resource": "events",
    }


# Value semantics


def test_scope_is_immutable() -> None:
    scope = PipeRead("sales")

    with pytest.raises(AttributeError, match="immutable"):
        scope.resource = "other"
    with pytest.raises(AttributeError, match="immutable"):
        del scope.resource


def test_scope_claim_copy_is_detached() -> None:
    scope = PipeRead("sales", fixed_params={"org_id": "acme"})

    claim = scope.to_claim()
    claim["fixed_params"]["org_id"] = "other"
    claim["resource"] = "other"

    assert scope.to_claim() == {
        "type": "PIPES:READ",
        "resource": "sales",
        "fixed_params": {"org_id": "acme"},
    }


def test_scope_params_input_is_detached() -> None:
    params = {"org_id": "acme"}
    scope = PipeRead("sales", fixed_params=params)

    params["org_id"] = "other"

    assert scope.fixed_params == {"org_id": "acme"}


def test_scope_equal_regardless_of_key_order() -> None:
    first = PipeRead("sales", fixed_params={"a": "1", "b": "2"})
    second = PipeRead("sales", fixed_params={"b": "2", "a": "1"})

    assert first == second
    assert hash(first) == hash(second)


@pytest.mark.parametrize(
    ("left", "right"),
    [(1, True), (1, 1.0), (0.0, -0.0), ("1", 1)],
    ids=["int-bool", "int-float", "zero-sign", "str-int"],
)
def test_scope_unequal_when_json_differs(left: object, right: object) -> None:
    first = PipeRead("sales", fixed_params={"p": left})  # type: ignore[dict-item]
    second = PipeRead("sales", fixed_params={"p": right})  # type: ignore[dict-item]

    assert first != second


def test_scope_kinds_unequal() -> None:
    assert DatasourceRead("events") != DatasourceAppend("events")


def test_scope_usable_in_set() -> None:
    scopes = {PipeRead("sales"), PipeRead("sales"), DatasourceRead("events")}

    assert len(scopes) == 2


@pytest.mark.parametrize(
    "scope",
    [
        PipeRead("sales", fixed_params={"org_id": "acme", "n": 1}),
        DatasourceRead("events", filter="org_id = 'acme'"),
        DatasourceAppend("events"),
    ],
    ids=["pipe", "read", "append"],
)
def test_scope_copy_and_pickle(scope: Any) -> None:
    assert copy.copy(scope) == scope
    assert copy.deepcopy(scope) == scope
    assert pickle.loads(pickle.dumps(scope)) == scope  # noqa: S301 - round trip of our own bytes


# quote_literal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("acme", "'acme'"),
        ("o'brien\\", "'o\\'brien\\\\'"),
        ("' OR 1=1 --", "'\\' OR 1=1 --'"),
        ("\\'", "'\\\\\\''"),
        ("a\nb\tc\rd\x00e\bf\fg", "'a\\nb\\tc\\rd\\0e\\bf\\fg'"),
        ("", "''"),
        ("é", "'é'"),
        (42, "42"),
        (-7, "-7"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
    ],
    ids=repr,
)
def test_quote_literal_renders(value: Any, expected: str) -> None:
    assert quote_literal(value) == expected


_UNESCAPES = {"0": "\x00", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _read_literal(text: str) -> tuple[str, int]:
    """Read a ClickHouse string literal at the start of ``text``.

    Returns the decoded value and the index of the closing quote, following
    ClickHouse's lexer: a backslash escapes the next character.
    """
    assert text[0] == "'"
    value = []
    index = 1
    while text[index] != "'":
        if text[index] == "\\":
            index += 1
            value.append(_UNESCAPES.get(text[index], text[index]))
        else:
            value.append(text[index])
        index += 1
    return "".join(value), index


@pytest.mark.parametrize(
    "value",
    ["o'brien\\", "\\", "'", "\\'", "'; DROP TABLE t; --", "a\nb\x00c", "''\\\\"],
    ids=repr,
)
def test_quote_literal_round_trips(value: str) -> None:
    quoted = quote_literal(value)

    decoded, closing = _read_literal(quoted + " OR 1 = 1")

    assert decoded == value
    assert closing == len(quoted) - 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "NoneType cannot be quoted"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (b"x", "bytes cannot be quoted"),
        (["x"], "list cannot be quoted"),
    ],
    ids=["none", "nan", "inf", "bytes", "list"],
)
def test_quote_literal_rejects(value: Any, message: str) -> None:
    with pytest.raises(InvalidScopeError, match=message):
        quote_literal(value)


# sql_filter


def test_sql_filter_single_condition() -> None:
    assert sql_filter(org_id="o'brien\\") == "org_id = 'o\\'brien\\\\'"


def test_sql_filter_joins_with_and() -> None:
    assert sql_filter(org_id="acme", level=3) == "org_id = 'acme' AND level = 3"


def test_sql_filter_list_gives_in() -> None:
    assert sql_filter(region=["eu", "us"]) == "region IN ('eu', 'us')"


def test_sql_filter_tuple_gives_in() -> None:
    assert sql_filter(n=(1, 2)) == "n IN (1, 2)"


def test_sql_filter_set_is_sorted() -> None:
    assert sql_filter(region={"us", "eu", "ap"}) == "region IN ('ap', 'eu', 'us')"


def test_sql_filter_bool_value() -> None:
    assert sql_filter(active=True) == "active = true"


def test_sql_filter_builds_datasource_filter() -> None:
    scope = DatasourceRead("events", filter=sql_filter(org_id="acme"))

    assert scope.filter == "org_id = 'acme'"


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({}, "at least one"),
        ({"org_id": None}, "is None"),
        ({"org_id": ""}, "empty string"),
        ({"org_id": ["acme", ""]}, "empty string"),
        ({"org_id": []}, "empty collection"),
        ({"org_id": [None]}, "NoneType cannot be quoted"),
        ({"org_id": b"acme"}, "has type bytes"),
        ({"org_id": {"a": 1}}, "has type dict"),
        ({"org_id": math.nan}, "not a finite number"),
        ({"org-id": "acme"}, "not a valid column name"),
        ({"1org": "acme"}, "not a valid column name"),
    ],
    ids=[
        "none-given",
        "none",
        "empty",
        "empty-item",
        "empty-list",
        "none-item",
        "bytes",
        "dict",
        "nan",
        "dash",
        "digit",
    ],
)
def test_sql_filter_rejects(conditions: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidScopeError, match=message) as caught:
        sql_filter(**conditions)

    assert caught.value.field == "filter"

"""Property tests of the wire format: every message round-trips, and ``decode`` never raises.

Strategies are derived from each model's own field declarations, so a message added to
the union is covered without touching this file (and a field type the derivation does not
know fails loudly instead of being skipped).
"""

from __future__ import annotations

import json
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hiscrm_bus import messages
from hiscrm_bus.messages import (
    CONFIG_UPDATE,
    CONFIG_UPDATE_ACK,
    AccountConfigUpdate,
    AccountConfigUpdateAck,
    DecodeError,
    Message,
    decode,
    encode,
)

MODELS: list[type[BaseModel]] = list(get_args(get_args(Message)[0]))
TYPE_NAMES: list[str] = [m.model_fields["type"].default for m in MODELS]
FEW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
timezones = st.sampled_from(
    [UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5, minutes=30))]
)
datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=timezones
)


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, at.MinLen):
            out["min_len"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out["max_len"] = m.max_length
        elif isinstance(m, at.Ge):
            out["ge"] = m.ge
        elif isinstance(m, at.Gt):
            out["gt"] = m.gt
        elif isinstance(m, at.Le):
            out["le"] = m.le
        elif isinstance(m, at.Lt):
            out["lt"] = m.lt
    return out


def _strategy(annotation: Any, bounds: dict[str, Any]) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        return st.one_of([_strategy(a, bounds) for a in get_args(annotation)])
    if annotation is type(None):
        return st.none()
    if annotation is str:
        # keep strings short; the max length still applies when it is smaller
        return st.text(
            min_size=bounds.get("min_len", 0), max_size=min(bounds.get("max_len", 30), 30)
        )
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = bounds.get("ge", bounds["gt"] + 1 if "gt" in bounds else -(2**63))
        return st.integers(min_value=low, max_value=bounds.get("le", 2**63))
    if annotation is float:
        return st.floats(
            min_value=bounds.get("ge", bounds.get("gt")),
            max_value=bounds.get("le", bounds.get("lt")),
            exclude_min="gt" in bounds,
            exclude_max="lt" in bounds,
            allow_nan=False,
            allow_infinity=False,
        )
    if annotation is datetime:
        return datetimes
    if origin is tuple:
        item, dots = get_args(annotation)
        assert dots is Ellipsis, annotation
        size = min(bounds.get("max_len", 3), 3)
        low = bounds.get("min_len", 0)
        return st.lists(_strategy(item, {}), min_size=low, max_size=max(size, low)).map(tuple)
    if origin is dict and get_args(annotation) == (str, Any):
        return json_objects
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_strategy(annotation)
    raise NotImplementedError(f"no strategy for {annotation!r}; teach _strategy about it")


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    fields = {
        name: _strategy(info.annotation, _bounds(info.metadata))
        for name, info in model.model_fields.items()
    }
    return st.builds(model, **fields)


any_message = st.one_of([model_strategy(m) for m in MODELS])


def _as_dict(message: BaseModel) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(encode(message))  # type: ignore[arg-type]
    return value


# -- the wire names ---------------------------------------------------------------------


def test_wire_names_are_the_seed_names() -> None:
    assert CONFIG_UPDATE == "master:account:config_update"
    assert CONFIG_UPDATE_ACK == "master:account:config_update:ack"
    update = AccountConfigUpdate(
        sender="master-1", update_id="u1", account_id="a", config_version=2, reason="admin_update"
    )
    ack = AccountConfigUpdateAck(
        sender="w1", account_id="a", worker_id="w1", applied_version=2, seen_version=2, ok=True
    )
    assert json.loads(encode(update))["type"] == "master:account:config_update"
    assert json.loads(encode(ack))["type"] == "master:account:config_update:ack"


def test_type_names_are_unique_and_every_model_has_a_strategy() -> None:
    assert len(set(TYPE_NAMES)) == len(MODELS)
    assert {CONFIG_UPDATE, CONFIG_UPDATE_ACK} <= set(TYPE_NAMES)
    for model in MODELS:
        model_strategy(model)  # raises if a field type is unknown here


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FEW
@given(data=st.data())
def test_every_message_round_trips(model: type[BaseModel], data: st.DataObject) -> None:
    message = data.draw(model_strategy(model))
    wire = encode(message)  # type: ignore[arg-type]
    decoded = decode(wire)
    assert not isinstance(decoded, DecodeError), decoded.reason
    assert type(decoded) is model
    assert decoded == message
    # the str form (what a decode_responses client hands over) decodes the same
    assert decode(wire.decode()) == message
    # encoding is stable
    assert encode(decoded) == wire


# -- decode never raises ----------------------------------------------------------------


def _check_decode_error(raw: bytes, result: object) -> None:
    assert isinstance(result, DecodeError)
    assert result.reason
    assert result.raw == raw


@FEW
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = decode(raw)
    if not isinstance(result, DecodeError):
        # only a genuine message may come out of random bytes
        assert decode(encode(result)) == result
    else:
        _check_decode_error(raw, result)


@FEW
@given(text=st.text(alphabet=st.characters(codec=None), max_size=100))
def test_arbitrary_text_including_lone_surrogates_never_raises(text: str) -> None:
    result = decode(text)
    assert isinstance(result, DecodeError)
    assert result.raw == text.encode("utf-8", "surrogatepass")


@FEW
@given(value=json_values)
def test_arbitrary_json_is_a_decode_error(value: Any) -> None:
    raw = json.dumps(value).encode()
    _check_decode_error(raw, decode(raw))


# objects whose "type" is often a real tag, but which lack the required "sender"
typed_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPE_NAMES) | json_values},
    optional={name: json_values for name in ("message_id", "account_id", "worker_id", "ok")},
).flatmap(
    lambda base: st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in ("sender", "type")), json_values, max_size=5
    ).map(lambda extra: {**extra, **base})
)


@FEW
@given(value=typed_objects)
def test_objects_with_a_type_field_but_invalid_are_decode_errors(value: dict[str, Any]) -> None:
    raw = json.dumps(value).encode()
    _check_decode_error(raw, decode(raw))


@FEW
@given(message=any_message, field=st.text(min_size=1, max_size=20), value=json_values)
def test_unknown_extra_field_is_a_decode_error(message: BaseModel, field: str, value: Any) -> None:
    if field in type(message).model_fields:
        field += "_x"
    body = _as_dict(message)
    body[field] = value
    raw = json.dumps(body).encode()
    result = decode(raw)
    _check_decode_error(raw, result)
    assert isinstance(result, DecodeError)
    assert "Extra inputs are not permitted" in result.reason


@FEW
@given(message=any_message, data=st.data())
def test_removing_a_field_fails_exactly_when_the_field_is_required(
    message: BaseModel, data: st.DataObject
) -> None:
    body = _as_dict(message)
    field = data.draw(st.sampled_from(sorted(body)))
    del body[field]
    raw = json.dumps(body).encode()
    result = decode(raw)
    info = type(message).model_fields[field]
    if info.is_required() or field == "type":  # "type" is the tag that picks the model
        _check_decode_error(raw, result)
    else:
        assert type(result) is type(message)


@FEW
@given(message=any_message, data=st.data(), value=json_values)
def test_replacing_a_field_with_any_json_never_raises(
    message: BaseModel, data: st.DataObject, value: Any
) -> None:
    body = _as_dict(message)
    field = data.draw(st.sampled_from(sorted(body)))
    body[field] = value
    raw = json.dumps(body).encode()
    result = decode(raw)
    if isinstance(result, DecodeError):
        _check_decode_error(raw, result)
    else:
        assert type(result) is type(message)
        assert decode(encode(result)) == result


def test_extra_field_inside_a_nested_model_is_a_decode_error() -> None:
    batch = messages.CrawlBatch(
        sender="w1",
        account_id="a",
        worker_id="w1",
        items=(
            messages.CrawledItem(
                kind="comment", item_id="c1", text="hi", created_at=datetime.now(UTC)
            ),
        ),
    )
    body = _as_dict(batch)
    body["items"][0]["surprise"] = 1
    result = decode(json.dumps(body))
    assert isinstance(result, DecodeError)
    assert "Extra inputs are not permitted" in result.reason


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"\xff\xfe\x00",
        b'{"type": "master:account:config_update"',
        b"1e999999",
        json.dumps({"type": CONFIG_UPDATE, "sender": "m", "config_version": 10**400}).encode(),
    ],
    ids=[
        "empty",
        "null",
        "deep-list",
        "deep-object",
        "not-utf8",
        "truncated",
        "huge-float",
        "huge-int",
    ],
)
def test_hostile_inputs_are_decode_errors(raw: bytes) -> None:
    _check_decode_error(raw, decode(raw))


def test_decode_error_reason_names_the_field() -> None:
    body = _as_dict(
        AccountConfigUpdate(
            sender="m", update_id="u1", account_id="a", config_version=1, reason="assignment"
        )
    )
    body["config_version"] = -1
    result = decode(json.dumps(body))
    assert isinstance(result, DecodeError)
    assert "config_version" in result.reason

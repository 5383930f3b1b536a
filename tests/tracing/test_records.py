"""Ingestion's gate: every kind of bad input is normalised (and noted) or rejected with a clear reason."""
import json
import math
import time

import pytest

from apps.tracing.records import InvalidEvent, caller_attributes, normalise

NOW = time.time_ns()


def record(**overrides):
    base = {"trace_id": "a" * 32, "span_id": "b" * 16, "parent_span_id": "", "name": "op", "kind": "operation",
            "span_kind": "internal", "service": "svc", "start_ns": NOW - 1_000_000, "end_ns": NOW,
            "status": "ok", "attributes": {"k": "v"}}
    return {**base, **overrides}


def test_a_good_record_passes_unchanged():
    fields = normalise(record(), NOW)
    assert fields["issues"] == []
    assert fields["attributes"] == {"k": "v"}
    assert fields["end_ns"] - fields["start_ns"] == 1_000_000


@pytest.mark.parametrize("field, value, message", [
    ("trace_id", "xyz", "trace_id must be 32 hex digits"),
    ("trace_id", "0" * 32, "trace_id must be 32 hex digits, not all zero"),
    ("trace_id", 12345, "trace_id must be 32 hex digits"),
    ("span_id", "b" * 15, "span_id must be 16 hex digits"),
    ("span_id", None, "span_id must be 16 hex digits"),
    ("name", "", "name must be a non-empty string"),
    ("start_ns", "yesterday", "start_ns must be a number of nanoseconds"),
    ("start_ns", float("nan"), "start_ns must be a number of nanoseconds"),
])
def test_malformed_ids_names_and_times_are_rejected_with_the_reason(field, value, message):
    with pytest.raises(InvalidEvent, match=message):
        normalise(record(**{field: value}), NOW)


def test_a_non_object_is_rejected():
    with pytest.raises(InvalidEvent, match="an event must be a JSON object, got list"):
        normalise([1, 2], NOW)


def test_uppercase_ids_are_lowercased_and_a_malformed_parent_makes_a_root():
    fields = normalise(record(trace_id="A" * 32, parent_span_id="nothex"), NOW)
    assert fields["trace_id"] == "a" * 32
    assert fields["parent_span_id"] == ""
    assert any("parent_span_id must be 16 hex digits" in issue for issue in fields["issues"])


@pytest.mark.parametrize("offset_s, word", [(3600, "future"), (-400 * 24 * 3600, "past")])
def test_timestamps_far_in_the_future_or_past_move_to_ingestion_time_keeping_the_duration(offset_s, word):
    start = NOW + offset_s * 10**9
    fields = normalise(record(start_ns=start, end_ns=start + 5_000_000), NOW)
    assert fields["end_ns"] == NOW and fields["start_ns"] == NOW - 5_000_000
    assert any(f"too far in the {word}" in issue and str(start) in issue for issue in fields["issues"])


def test_end_before_start_is_set_to_start():
    fields = normalise(record(start_ns=NOW, end_ns=NOW - 10), NOW)
    assert fields["end_ns"] == fields["start_ns"] == NOW
    assert "before start_ns" in fields["issues"][0]


def test_oversized_attributes_are_truncated_capped_and_noted(settings):
    settings.TRACING_MAX_ATTRIBUTE_LENGTH = 100
    settings.TRACING_MAX_ATTRIBUTES = 5
    settings.TRACING_MAX_ATTRIBUTES_BYTES = 400
    attributes = {"long": "x" * 10_000, **{f"a{i}": i for i in range(10)}}
    fields = normalise(record(attributes=attributes), NOW)
    assert len(fields["attributes"]["long"]) == 100
    assert len(fields["attributes"]) == 5
    issues = " | ".join(fields["issues"])
    assert "truncated from 10000 to 100 characters" in issues
    assert "11 attributes, kept the first 5" in issues

    many_big = {f"k{i}": "y" * 90 for i in range(5)}
    fields = normalise(record(attributes=many_big), NOW)
    assert len(fields["attributes"]) < 5
    assert any("over 400 bytes of JSON" in issue for issue in fields["issues"])


def test_values_json_or_the_databases_cannot_hold_are_converted_and_noted():
    attributes = {"nan": math.nan, "inf": math.inf, "huge": 2**80, "nested": {"a": [1, {"b": 2}]},
                  "nul": "a\x00b", "surrogate": "x\ud800y", "ok": [1, 2]}
    fields = normalise(record(attributes=attributes, name="na\x00me"), NOW)
    attrs = fields["attributes"]
    assert attrs["nan"] == "nan" and attrs["inf"] == "inf" and attrs["huge"] == str(2**80)
    assert attrs["nested"] == '{"a": [1, {"b": 2}]}'
    assert "\x00" not in attrs["nul"] and "\x00" not in fields["name"]
    attrs["surrogate"].encode("utf-8")  # would raise on a lone surrogate
    assert attrs["ok"] == [1, 2]
    issues = " | ".join(fields["issues"])
    for expected in ("'nan': nan is not valid JSON", "'huge': integer outside int64", "'nested': nested value",
                     "NUL characters replaced", "lone surrogates"):
        assert expected in issues


def test_attributes_that_are_not_an_object_are_dropped_and_noted():
    fields = normalise(record(attributes=["not", "a", "dict"]), NOW)
    assert fields["attributes"] == {}
    assert "expected an object, got list" in fields["issues"][0]


def test_unknown_kind_status_and_span_kind_become_documented_defaults():
    fields = normalise(record(kind="weird", status="meh", span_kind="sideways"), NOW)
    assert (fields["kind"], fields["status"], fields["span_kind"]) == ("other", "unset", "internal")
    assert len(fields["issues"]) == 3


def test_caller_attributes_turn_non_serialisable_values_into_text_and_say_so():
    class Thing:
        def __repr__(self):
            return "<Thing>"

    out = caller_attributes({"ok": 1, "obj": Thing(), "d": {"a": 1}, "none": None, "mixed": [1, "a"]})
    assert out["ok"] == 1 and out["obj"] == "<Thing>" and out["d"] == '{"a": 1}' and out["none"] == "null"
    assert out["mixed"] == '[1, "a"]'
    assert sorted(out["tracing.normalised"]) == ["d", "mixed", "none", "obj"]


@pytest.mark.parametrize("field", ["kind", "status", "span_kind"])
@pytest.mark.parametrize("value", [["a", "list"], {"an": "object"}, 7, None])
def test_a_kind_status_or_span_kind_that_is_not_a_string_is_normalised_not_raised(field, value):
    """A list is not even hashable: the membership test itself used to raise TypeError out of ingestion."""
    fields = normalise(record(**{field: value}), NOW)
    assert fields[field] == {"kind": "other", "status": "unset", "span_kind": "internal"}[field]
    assert f"{field} " in fields["issues"][0] and "is unknown" in fields["issues"][0]


# Values at and beyond every limit the fast path checks; each must come out exactly as the slow path has it.
TRICKY = [
    {}, {"k": "v"}, {"i": 1, "f": 1.5, "b": True, "n": None}, {"big": 2**63}, {"big": -(2**63) - 1},
    {"edge": 2**63 - 1}, {"nan": math.nan}, {"inf": -math.inf}, {"nul": "a\x00b"}, {"ctl": "a\x01b"},
    {"é": "ascii value"}, {"k": "non-ascii é"}, {"k": "x\ud800y"}, {"k": "line\nbreak"}, {"k": "back\\u0041slash"},
    {"k" * 257: 1}, {"k" * 256: 1}, {"long": "y" * 120}, {"long": "y" * 121}, {"list": [1, 2]}, {"d": {"a": 1}},
    {1: "int key"}, {f"a{i}": i for i in range(6)}, {f"a{i}": i for i in range(5)}, {"k": "z" * 60, "l": "z" * 60},
]


@pytest.mark.parametrize("attributes", TRICKY, ids=range(len(TRICKY)))
def test_the_attribute_fast_path_agrees_with_the_slow_path_on_every_limit(attributes, monkeypatch):
    from apps.tracing import records as records_module
    from apps.tracing.records import ATTRIBUTES_JSON, Limits

    limits = Limits(max_attributes=5, max_attribute_length=120, max_attributes_bytes=160,
                    max_future_skew_ns=300 * 10**9, max_past_age_ns=7 * 24 * 3600 * 10**9)
    fast = normalise(record(attributes=dict(attributes)), NOW, limits)
    monkeypatch.setattr(records_module, "plain_json", lambda attributes, limits: None)
    slow = normalise(record(attributes=dict(attributes)), NOW, limits)
    assert fast["attributes"] == slow["attributes"]
    assert fast["issues"] == slow["issues"]
    obj, text = fast[ATTRIBUTES_JSON]
    assert obj is fast["attributes"]
    if text is not None:  # the fast path took it: its text is what is stored, so it must be exact JSON of it
        assert not fast["issues"] and json.loads(text) == fast["attributes"]
        assert len(text) <= limits.max_attributes_bytes

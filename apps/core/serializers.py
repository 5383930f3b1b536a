"""Serializer helpers shared by the API apps."""
from __future__ import annotations

import copy

from rest_framework import fields as drf_fields
from rest_framework import serializers
from rest_framework.fields import SkipField
from rest_framework.relations import PKOnlyObject
from rest_framework.settings import api_settings

# Fields whose to_representation returns a value of this exact type unchanged (str(s), int(i), the JSON value
# itself); any other value still goes through the field.
_UNCHANGED = {drf_fields.CharField: str, drf_fields.IntegerField: int, drf_fields.BooleanField: bool}
_ANY = object()
# Fields whose output depends on nothing but the value (not on the serializer, its context or the request).
_VALUE_ONLY = (drf_fields.CharField, drf_fields.ChoiceField, drf_fields.IntegerField, drf_fields.BigIntegerField,
               drf_fields.BooleanField, drf_fields.FloatField, drf_fields.DateTimeField, drf_fields.DateField,
               drf_fields.UUIDField, drf_fields.JSONField, drf_fields.DecimalField, drf_fields.DurationField)


class OutputModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer for output whose fields are built once per class and whose rendering skips the work
    that gives the same answer on every call.

    DRF's ``ModelSerializer`` introspects the model and builds every field on each instantiation (about a
    fifth of a detail GET in the profile), then asks each field for its attribute and its representation.
    Here the fields are built once per class (later instances get shallow copies, for schemas and the rare
    field that needs its serializer), and ``to_representation`` follows a plan made once per class:
    a model attribute whose value already has its output type (a str for a CharField, an int, a bool, a JSON
    value) is taken as it is; fields whose output depends only on the value (dates, decimals, dotted sources)
    run on a bound copy kept by the class; method fields call this instance's method; anything else (nested
    serializers, related fields, which may need the context) goes through this instance's own fields as DRF
    would. The output is the same as DRF's (tests/control/test_api_request_path.py compares them).
    """

    @classmethod
    def _cached(cls, name, build):
        value = cls.__dict__.get(name)  # per class: set on cls itself, so a subclass builds its own
        if value is None:
            value = build()
            setattr(cls, name, value)
        return value

    def get_fields(self):
        built = self._cached("_built_fields", super().get_fields)
        return {name: copy.copy(field) for name, field in built.items()}

    def to_representation(self, instance):
        plan = self._cached("_plan", self._make_plan)
        out = {}
        for name, kind, arg in plan:
            if kind == "attr":  # arg: (attribute name, the type passed through unchanged or None, bound field)
                attr, unchanged, field = arg
                value = getattr(instance, attr)
                if value is None:
                    out[name] = None
                elif unchanged is _ANY or type(value) is unchanged:
                    out[name] = value
                else:
                    out[name] = field.to_representation(value)
            elif kind == "method":
                out[name] = getattr(self, arg)(instance)
            else:  # "field": a value-only field on the class's bound copy, or "own": this instance's field
                field = arg if kind == "field" else self.fields[name]
                try:
                    value = field.get_attribute(instance)
                except SkipField:
                    continue
                check = value.pk if isinstance(value, PKOnlyObject) else value
                out[name] = None if check is None else field.to_representation(value)
        return out

    def _make_plan(self) -> list:
        prototype = type(self)()  # its fields are bound to it: used only for value-only fields
        model_fields = self.Meta.model._meta.concrete_fields
        plain_attrs = {f.attname for f in model_fields if not f.is_relation}
        plan = []
        for name, field in prototype.fields.items():
            if field.write_only:
                continue
            if isinstance(field, serializers.SerializerMethodField):
                plan.append((name, "method", field.method_name))
            elif type(field) in _VALUE_ONLY and len(field.source_attrs) == 1 and field.source_attrs[0] in plain_attrs:
                unchanged = _UNCHANGED.get(type(field))
                if type(field) is drf_fields.JSONField and not field.binary:
                    unchanged = _ANY  # DRF returns a non-binary JSON value as it is
                elif type(field) is drf_fields.BigIntegerField and not getattr(
                        field, "coerce_to_string", api_settings.COERCE_BIGINT_TO_STRING):
                    unchanged = int
                plan.append((name, "attr", (field.source_attrs[0], unchanged, field)))
            elif type(field) in _VALUE_ONLY:
                plan.append((name, "field", field))
            else:
                plan.append((name, "own", None))
        return plan

"""Serializer helpers shared by the API apps."""
from __future__ import annotations

import copy

from rest_framework import serializers


class CachedFieldsModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer that builds its fields from the model once per class, not once per instance.

    DRF's ``ModelSerializer.get_fields`` introspects the model and constructs every field on each
    instantiation: about a fifth of a detail GET's time in the profile (docs/benchmarks.md). The fields a
    class builds depend only on the class (its Meta and declared fields), so the first instance's are kept
    and later instances get shallow copies (binding sets the copy's parent and name, never the original's).
    For output serializers; a subclass whose fields depend on the instance or the request must not use it.
    """

    def get_fields(self):
        cls = type(self)
        built = cls.__dict__.get("_built_fields")
        if built is None:
            built = super().get_fields()
            cls._built_fields = built  # per class: set on cls itself, so a subclass builds its own
        return {name: copy.copy(field) for name, field in built.items()}

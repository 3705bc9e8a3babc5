"""Building blocks shared by the CRD types: the camelCase model base, CEL rules, conditions, named types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "gradatim.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubeflow names a replica's pod and service `<job>-worker-<i>` (12 characters for 1023 workers); with
# `<stage>-a<attempt>` as the job name (5 for attempt 999), a 46-character stage name keeps every child within
# a 63-character DNS label.
MAX_STAGE_NAME = 46
MAX_PIPELINE_NAME = 63

DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource.Quantity, as apimachinery's regexp spells it.
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
# The same, above zero: no sign, and a digit other than 0 before the suffix (no CPU, memory or shm size of 0 or less
# means anything). A pattern, not a CEL rule, so that pydantic and the API server say the same.
POSITIVE_QUANTITY = r"^\+?(([0-9]*[1-9][0-9]*(\.[0-9]*)?)|([0-9]*\.[0-9]*[1-9][0-9]*))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


@dataclass(frozen=True)
class Rule:
    """A CEL rule the API server enforces at admission (`x-kubernetes-validations`).

    `field` is the path, relative to the object the rule sits on, that the error names (`fieldPath`).
    """

    rule: str
    message: str
    field: str | None = None
    reason: Literal["FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden", "FieldValueDuplicate"] | None = None
    message_expression: str | None = None

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field:
            out["fieldPath"] = self.field
        if self.reason:
            out["reason"] = self.reason
        return out


def rules(*items: Rule) -> dict[str, Any]:
    """`json_schema_extra` that attaches CEL rules to a model's schema."""
    return {"x-kubernetes-validations": [r.to_schema() for r in items]}


class Model(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields rejected, docstrings kept for the CRD."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _positive_quantity(value: Any) -> Any:
    ok = value >= 1 if isinstance(value, int) and not isinstance(value, bool) else isinstance(value, str) and re.match(POSITIVE_QUANTITY, value)
    if not ok:
        raise ValueError("must be a positive quantity such as 32, 500m or 8Gi")
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_positive_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": POSITIVE_QUANTITY, "minimum": 1}),
]
"""A resource quantity above zero (CPU, memory, shm size): an integer, or a string such as `500m` or `8Gi`."""

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """One observation of the object's state, as `metav1.Condition`."""

    type: str = Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
    """Kind of condition: `Ready`, `Reconciling` or `Stalled` (kstatus), or a Gradatim-specific one."""
    status: ConditionStatus
    """`True`, `False` or `Unknown`."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` this condition was computed from."""
    last_transition_time: datetime
    """When the condition last changed status."""
    reason: str = Field(max_length=1024, min_length=1, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """A CamelCase word that says why, for machines."""
    message: str = Field(default="", max_length=32768)
    """What happened and, when a user must act, what to do, for humans."""


def conditions_field(description: str) -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class KeyRef(Model):
    """One key of a Secret or ConfigMap in the stage's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the Secret or ConfigMap."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key whose value becomes the variable."""
    optional: bool = False
    """Start the trainer even if the Secret/ConfigMap or key is missing (the variable is then unset)."""


class SecretKeyRef(Model):
    """A reference to S3 credentials kept in a Secret in the pipeline's namespace; they are never copied."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the Secret."""
    access_key_id_key: str = Field(default="AWS_ACCESS_KEY_ID", min_length=1, max_length=253)
    """Key in the Secret that holds the access key id."""
    secret_access_key_key: str = Field(default="AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253)
    """Key in the Secret that holds the secret access key."""

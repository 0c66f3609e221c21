"""The bundled, compiled OCSF schemas: loading them, class and enum look-ups, and the one
fixed Arrow schema per (OCSF version, event class) that every Parquet file of that class uses.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_VERSION",
    "MAX_OBJECT_DEPTH",
    "ClassInfo",
    "EnumInfo",
    "OcsfSchema",
    "bundled_versions",
    "load_schema",
    "type_uid",
]

import functools
import gzip
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from securitylake_sink.errors import SchemaError

DEFAULT_VERSION = "1.1.0"
# Objects nest at most this many levels below the event: an event attribute is a level-1
# object, its object attributes level 2, and so on. actor.user.account.uid is kept; an object
# that would sit at level 4 is left out. This also cuts self-reference (process.parent_process).
MAX_OBJECT_DEPTH = 3

_DATA_PACKAGE = "securitylake_sink.ocsf"
_FILE_RE = re.compile(r"^ocsf-(?P<version>.+)\.json\.gz$")

# Arrow type per OCSF base (primitive) type. rc.2 declares uuid_t and bytestring_t as
# primitives of their own (no base); both are text.
_PRIMITIVES: Mapping[str, pa.DataType] = MappingProxyType(
    {
        "string_t": pa.string(),
        "integer_t": pa.int32(),
        "long_t": pa.int64(),
        "float_t": pa.float64(),
        "boolean_t": pa.bool_(),
        "json_t": pa.string(),  # any JSON value, stored as JSON text
        "uuid_t": pa.string(),
        "bytestring_t": pa.string(),
    }
)
# Types decided by name before following the base chain (AWS's own files use these).
_TIMESTAMP_MS = pa.int64()  # timestamp_t: epoch milliseconds, never a Parquet timestamp
_DATETIME = pa.timestamp("ms", tz="UTC")  # datetime_t (*_dt): never nanoseconds
_UNMAPPED = pa.map_(pa.string(), pa.string())  # keys are flattened dotted paths


def _version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """Sort key: numeric release parts, then pre-releases (``-rc.2``) before the release."""
    release, _, pre = version.partition("-")
    nums = tuple(int(p) if p.isdigit() else 0 for p in release.split("."))
    return nums, (0 if pre else 1), pre


@functools.cache
def bundled_versions() -> tuple[str, ...]:
    """The OCSF versions whose compiled schema ships in the package, oldest first."""
    data = resources.files(_DATA_PACKAGE).joinpath("data")
    found = [m["version"] for e in data.iterdir() if (m := _FILE_RE.match(e.name))]
    return tuple(sorted(found, key=_version_key))


def load_schema(version: str = DEFAULT_VERSION) -> OcsfSchema:
    """The bundled schema of ``version`` (loaded once per version and then shared)."""
    return _load(version)


@functools.cache
def _load(version: str) -> OcsfSchema:
    known = bundled_versions()
    if version not in known:
        raise SchemaError(
            f"OCSF version {version!r} is not bundled; bundled versions: {', '.join(known)}"
        )
    res = resources.files(_DATA_PACKAGE).joinpath("data", f"ocsf-{version}.json.gz")
    with res.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as text:
        raw: dict[str, Any] = json.load(text)
    if raw.get("version") != version:
        raise SchemaError(f"bundled file for OCSF {version} says version {raw.get('version')!r}")
    return OcsfSchema(raw)


def type_uid(class_uid: int, activity_id: int) -> int:
    """OCSF ``type_uid``: ``class_uid * 100 + activity_id`` (Authentication Logon = 300201)."""
    return class_uid * 100 + activity_id


@dataclass(frozen=True, slots=True)
class EnumInfo:
    """An integer enum of one attribute: id -> caption."""

    values: Mapping[int, str]

    def caption(self, value: int) -> str | None:
        """The caption of ``value``, or None when the enum does not list it."""
        return self.values.get(value)


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """One event class of one OCSF version."""

    uid: int
    name: str
    caption: str
    category_uid: int
    category_name: str
    profiles: tuple[str, ...]
    activities: Mapping[int, str]  # the activity_id enum
    required: tuple[str, ...]  # top-level attributes required without any profile
    # the raw resolved attribute dicts, all profiles (left out of repr: it is large)
    attributes: Mapping[str, Mapping[str, Any]] = field(repr=False)


def _int_enum(attr: Mapping[str, Any]) -> EnumInfo | None:
    """The attribute's enum when every key is an integer; None otherwise (or no enum)."""
    enum = attr.get("enum")
    if not isinstance(enum, Mapping):
        return None
    try:
        values = {int(k): str(v.get("caption", "")) for k, v in enum.items()}
    except ValueError:  # string-keyed enums (http_method, cvss.depth, tlp)
        return None
    return EnumInfo(MappingProxyType(dict(sorted(values.items()))))


class OcsfSchema:
    """One compiled OCSF version (the legacy export layout of ocsf-schema-compiler -l)."""

    __slots__ = ("_arrow", "_by_uid", "_enums", "_infos", "_objects", "_struct_cache", "_types", "version")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.version: str = str(raw["version"])
        self._objects: Mapping[str, Mapping[str, Any]] = raw["objects"]
        self._types: Mapping[str, Mapping[str, Any]] = raw["types"]
        by_uid: dict[int, Mapping[str, Any]] = {0: raw["base_event"]}
        for cls in raw["classes"].values():
            by_uid.setdefault(int(cls["uid"]), cls)
        self._by_uid: Mapping[int, Mapping[str, Any]] = dict(sorted(by_uid.items()))
        self._infos: dict[int, ClassInfo] = {}
        self._arrow: dict[int, pa.Schema] = {}
        self._struct_cache: dict[tuple[str, int], pa.DataType | None] = {}
        self._enums: dict[tuple[int, str], EnumInfo | None] = {}

    def __repr__(self) -> str:
        return f"OcsfSchema(version={self.version!r}, classes={len(self._by_uid)})"

    # ----------------------------------------------------------------- classes

    def class_uids(self) -> tuple[int, ...]:
        """Every class uid of this version, ascending; 0 is base_event."""
        return tuple(self._by_uid)

    def _class_raw(self, class_uid: int) -> Mapping[str, Any]:
        try:
            return self._by_uid[class_uid]
        except KeyError:
            uids = self.class_uids()
            raise SchemaError(
                f"OCSF {self.version} has no event class {class_uid!r} "
                f"({len(uids)} classes, uids {uids[0]}..{uids[-1]}; "
                f"class uids differ between 1.0.0-rc.2 and 1.x; bundled versions: "
                f"{', '.join(bundled_versions())})"
            ) from None

    def class_info(self, class_uid: int) -> ClassInfo:
        """The class ``class_uid`` (0 = base_event); SchemaError when this version lacks it."""
        info = self._infos.get(class_uid)
        if info is None:
            info = self._infos[class_uid] = self._build_info(self._class_raw(class_uid))
        return info

    def _build_info(self, cls: Mapping[str, Any]) -> ClassInfo:
        attrs: Mapping[str, Mapping[str, Any]] = cls["attributes"]
        category_uid = int(cls.get("category_uid", 0))
        category_name = cls.get("category_name")
        if not category_name:  # base_event: take the caption from its category_uid enum
            cat_enum = _int_enum(attrs.get("category_uid", {}))
            category_name = cat_enum.caption(category_uid) if cat_enum else None
        activity_enum = _int_enum(attrs.get("activity_id", {}))
        return ClassInfo(
            uid=int(cls["uid"]),
            name=str(cls["name"]),
            caption=str(cls.get("caption", cls["name"])),
            category_uid=category_uid,
            category_name=str(category_name or ""),
            profiles=tuple(cls.get("profiles") or ()),
            activities=activity_enum.values if activity_enum else MappingProxyType({}),
            required=tuple(
                sorted(
                    n
                    for n, a in attrs.items()
                    if a.get("requirement") == "required" and not a.get("profile")
                )
            ),
            attributes=MappingProxyType(dict(attrs)),
        )

    # ------------------------------------------------------------------- enums

    def enum(self, class_uid: int, dotted_path: str) -> EnumInfo | None:
        """The integer enum at ``dotted_path`` in the class (e.g. ``"severity_id"``,
        ``"actor.user.type_id"``); None when that attribute has no integer enum.
        SchemaError when the class or any segment of the path does not exist."""
        key = (class_uid, dotted_path)
        if key not in self._enums:
            self._enums[key] = self._find_enum(class_uid, dotted_path)
        return self._enums[key]

    def _find_enum(self, class_uid: int, dotted_path: str) -> EnumInfo | None:
        attrs: Mapping[str, Mapping[str, Any]] = self._class_raw(class_uid)["attributes"]
        *parents, leaf = dotted_path.split(".")
        for i, part in enumerate(parents):
            attr = attrs.get(part)
            obj = self._objects.get(str(attr.get("object_type", ""))) if attr else None
            if attr is None or obj is None:
                where = ".".join(parents[: i + 1])
                what = "has no attribute" if attr is None else "has a non-object"
                raise SchemaError(
                    f"OCSF {self.version} class {class_uid} {what} {where!r}, "
                    f"so {dotted_path!r} does not exist"
                )
            attrs = obj["attributes"]
        if leaf not in attrs:
            raise SchemaError(
                f"OCSF {self.version} class {class_uid} has no attribute {dotted_path!r}"
            )
        return _int_enum(attrs[leaf])

    # ------------------------------------------------------------------- arrow

    def arrow_schema(self, class_uid: int) -> pa.Schema:
        """The fixed Arrow schema of the class: every attribute of every profile, fields sorted
        by name at every level, all nullable, objects cut at MAX_OBJECT_DEPTH. Carries schema
        metadata ``ocsf.version`` and ``ocsf.class_uid``."""
        schema = self._arrow.get(class_uid)
        if schema is None:
            attrs: Mapping[str, Mapping[str, Any]] = self._class_raw(class_uid)["attributes"]
            fields = self._fields(attrs, level=1)
            schema = pa.schema(fields).with_metadata(
                {"ocsf.version": self.version, "ocsf.class_uid": str(class_uid)}
            )
            self._arrow[class_uid] = schema
        return schema

    def _fields(self, attrs: Mapping[str, Mapping[str, Any]], level: int) -> list[pa.Field]:
        """Fields for ``attrs``; object-typed ones become level-``level`` objects."""
        fields = []
        for name in sorted(attrs):
            t = self._attr_type(name, attrs[name], level)
            if t is not None:
                fields.append(pa.field(name, t, nullable=True))
        return fields

    def _attr_type(self, name: str, attr: Mapping[str, Any], level: int) -> pa.DataType | None:
        t: pa.DataType | None
        if attr.get("type") == "object_t":
            obj_name = str(attr.get("object_type", ""))
            if obj_name == "object":  # the empty, free-form object
                t = _UNMAPPED if name == "unmapped" else pa.string()
            else:
                t = self._struct(obj_name, level)
        else:
            t = self._scalar(name, attr)
        if t is None:
            return None
        return pa.list_(t) if attr.get("is_array") else t

    def _struct(self, obj_name: str, level: int) -> pa.DataType | None:
        """A struct of the object's attributes at ``level``; None past the depth limit or
        when no field is left."""
        if level > MAX_OBJECT_DEPTH:
            return None
        key = (obj_name, level)
        if key not in self._struct_cache:
            obj = self._objects.get(obj_name)
            if obj is None:
                raise SchemaError(f"OCSF {self.version} refers to unknown object {obj_name!r}")
            fields = self._fields(obj["attributes"], level + 1)
            self._struct_cache[key] = pa.struct(fields) if fields else None
        return self._struct_cache[key]

    def _scalar(self, name: str, attr: Mapping[str, Any]) -> pa.DataType:
        t = str(attr.get("type", ""))
        seen: set[str] = set()
        while t not in seen:  # follow types[t]["type"] down to the primitive
            if t == "timestamp_t":
                return _TIMESTAMP_MS
            if t == "datetime_t":
                return _DATETIME
            seen.add(t)
            base = self._types.get(t, {}).get("type")
            if base and base != "object_t":
                t = str(base)
        arrow = _PRIMITIVES.get(t)
        if arrow is None:
            raise SchemaError(
                f"OCSF {self.version}: attribute {name!r} has type {attr.get('type')!r} "
                f"with no Arrow mapping (base {t!r})"
            )
        if name == "type_uid":
            return pa.int64()  # long_t from 1.0.0 on; rc.2 says integer_t, AWS writes int64
        if name.endswith("_id") and "enum" in attr and pa.types.is_integer(arrow):
            return pa.int32()  # every *_id enum is int32, as AWS's own files have it
        return arrow

"""Tests for securitylake_sink.ocsf.schema: bundled versions, class look-ups, Arrow schemas."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from importlib import resources

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securitylake_sink.errors import SchemaError
from securitylake_sink.ocsf.schema import (
    DEFAULT_VERSION,
    MAX_OBJECT_DEPTH,
    OcsfSchema,
    bundled_versions,
    load_schema,
    type_uid,
)

EXPECTED_VERSIONS = ("1.0.0-rc.2", "1.1.0", "1.2.0", "1.3.0", "1.5.0", "1.8.0")


def field_at(schema: pa.Schema, path: str) -> pa.Field | None:
    """The field at a dotted path, looking through lists; None when any step is missing."""
    fields: pa.Schema | pa.StructType = schema
    found: pa.Field | None = None
    for part in path.split("."):
        idx = fields.get_field_index(part)
        if idx < 0:
            return None
        found = fields.field(idx)
        t = found.type
        while pa.types.is_list(t):
            t = t.value_type
        fields = t if pa.types.is_struct(t) else pa.struct([])
    return found


def all_types(t: pa.DataType) -> Iterator[pa.DataType]:
    yield t
    if pa.types.is_struct(t):
        for f in t:
            yield from all_types(f.type)
    elif pa.types.is_list(t):
        yield from all_types(t.value_type)


def all_fields(fields: pa.Schema | pa.StructType) -> Iterator[pa.Field]:
    for f in fields:
        yield f
        t = f.type
        while pa.types.is_list(t):
            t = t.value_type
        if pa.types.is_struct(t):
            yield from all_fields(t)


def struct_depth(t: pa.DataType) -> int:
    """How many struct levels ``t`` holds (a scalar is 0)."""
    while pa.types.is_list(t):
        t = t.value_type
    if not pa.types.is_struct(t):
        return 0
    return 1 + max((struct_depth(f.type) for f in t), default=0)


@pytest.fixture(scope="module")
def v110() -> OcsfSchema:
    return load_schema("1.1.0")


# ------------------------------------------------------------------ loading


def test_bundled_versions_oldest_first() -> None:
    assert bundled_versions() == EXPECTED_VERSIONS


@pytest.mark.parametrize("version", EXPECTED_VERSIONS)
def test_every_bundled_version_loads_and_builds(version: str) -> None:
    schema = load_schema(version)
    assert schema.version == version
    assert schema.class_uids()[0] == 0
    for uid in schema.class_uids():
        arrow = schema.arrow_schema(uid)
        assert arrow.field("class_uid").type == pa.int32()
        assert arrow.metadata == {
            b"ocsf.version": version.encode(),
            b"ocsf.class_uid": str(uid).encode(),
        }


def test_load_schema_is_cached_including_the_default() -> None:
    assert DEFAULT_VERSION == "1.1.0"
    assert load_schema() is load_schema("1.1.0")


@pytest.mark.parametrize("version", ["9.9.9", "1.1", "v1.1.0", ""])
def test_unknown_version_names_the_bundled_ones(version: str) -> None:
    with pytest.raises(SchemaError, match="not bundled") as err:
        load_schema(version)
    for known in EXPECTED_VERSIONS:
        assert known in str(err.value)


# ------------------------------------------------------------------ classes

CLASSES_110 = [
    # uid, name, category_uid, category_name, required (no profile, not base)
    (0, "base_event", 0, "Uncategorized", set()),
    (3002, "authentication", 3, "Identity & Access Management", {"user"}),
    (1007, "process_activity", 1, "System Activity", {"actor", "device", "process"}),
    (
        4002,
        "http_activity",
        4,
        "Network Activity",
        {"dst_endpoint", "http_request", "http_response", "src_endpoint"},
    ),
    (6003, "api_activity", 6, "Application Activity", {"actor", "api", "src_endpoint"}),
    (2004, "detection_finding", 2, "Findings", {"finding_info"}),
]
BASE_REQUIRED = {"time", "class_uid", "category_uid", "activity_id", "type_uid", "severity_id"}


@pytest.mark.parametrize("case", CLASSES_110, ids=lambda c: str(c[0]))
def test_class_info_110(v110: OcsfSchema, case: tuple[int, str, int, str, set[str]]) -> None:
    uid, name, cat_uid, cat_name, required = case
    info = v110.class_info(uid)
    assert (info.uid, info.name, info.category_uid, info.category_name) == (
        uid,
        name,
        cat_uid,
        cat_name,
    )
    assert set(info.required) == BASE_REQUIRED | {"metadata"} | required
    assert "cloud" not in info.required  # required only under the cloud profile
    assert "cloud" in info.profiles and "cloud" in info.attributes
    assert info.activities[0] == "Unknown" and info.activities[99] == "Other"


def test_activities_and_type_uid(v110: OcsfSchema) -> None:
    assert v110.class_info(3002).activities[1] == "Logon"
    assert type_uid(3002, 1) == 300201
    assert type_uid(0, 99) == 99


def test_unknown_class_raises_helpfully(v110: OcsfSchema) -> None:
    for call in (v110.class_info, v110.arrow_schema):
        with pytest.raises(SchemaError, match=r"OCSF 1\.1\.0 has no event class 9999"):
            call(9999)
    with pytest.raises(SchemaError, match="no event class 9999"):
        v110.enum(9999, "severity_id")


@pytest.mark.parametrize("version", EXPECTED_VERSIONS)
def test_category_uid_is_class_uid_div_1000(version: str) -> None:
    schema = load_schema(version)
    for uid in schema.class_uids():
        if uid:
            assert schema.class_info(uid).category_uid == uid // 1000, uid


@pytest.mark.parametrize("version", EXPECTED_VERSIONS)
def test_type_uid_enum_matches_formula(version: str) -> None:
    schema = load_schema(version)
    for uid in schema.class_uids():
        info = schema.class_info(uid)
        enum = schema.enum(uid, "type_uid")
        assert enum is not None
        assert set(enum.values) == {type_uid(uid, a) for a in info.activities}, uid


# -------------------------------------------------------------------- enums


@pytest.mark.parametrize(
    ("uid", "path", "expected"),
    [
        (3002, "severity_id", {0: "Unknown", 1: "Informational", 5: "Critical", 99: "Other"}),
        (3002, "status_id", {1: "Success", 2: "Failure"}),
        (3002, "actor.user.type_id", {1: "User", 2: "Admin"}),
        (3002, "observables.type_id", {2: "IP Address"}),
        (3002, "metadata.product", None),  # an object, no enum
        (3002, "user.name", None),  # a string, no enum
        (4002, "http_request.http_method", None),  # string-keyed enum
    ],
)
def test_enum(v110: OcsfSchema, uid: int, path: str, expected: dict[int, str] | None) -> None:
    info = v110.enum(uid, path)
    if expected is None:
        assert info is None
    else:
        assert info is not None
        assert expected.items() <= dict(info.values).items()
        assert info.caption(12345) is None


@pytest.mark.parametrize("path", ["nope", "user.nope", "user.name.first", "metadata.nope.x"])
def test_enum_unknown_path_raises(v110: OcsfSchema, path: str) -> None:
    with pytest.raises(SchemaError, match="3002"):
        v110.enum(3002, path)


# -------------------------------------------------------------------- arrow

AUTH_TYPES_110: list[tuple[str, pa.DataType | None]] = [
    ("time", pa.int64()),
    ("start_time", pa.int64()),
    ("time_dt", pa.timestamp("ms", tz="UTC")),
    ("class_uid", pa.int32()),
    ("category_uid", pa.int32()),
    ("activity_id", pa.int32()),
    ("type_uid", pa.int64()),
    ("severity_id", pa.int32()),
    ("status_id", pa.int32()),
    ("timezone_offset", pa.int32()),
    ("message", pa.string()),
    ("src_endpoint.port", pa.int32()),
    ("src_endpoint.ip", pa.string()),
    ("user.name", pa.string()),
    ("user.uid", pa.string()),
    ("unmapped", pa.map_(pa.string(), pa.string())),
    ("metadata.profiles", pa.list_(pa.string())),
    ("metadata.version", pa.string()),
    ("metadata.product.vendor_name", pa.string()),
    ("metadata.logged_time", pa.int64()),
    ("actor.user.account.uid", pa.string()),  # level 3 object: kept
    ("actor.user.account.type_id", pa.int32()),
    ("cloud.region", pa.string()),  # from the cloud profile
    ("actor.process.parent_process.pid", pa.int32()),  # level 3
    ("actor.process.parent_process.user", None),  # would be level 4
    ("actor.process.parent_process.parent_process", None),
    ("actor.process.file.owner", None),
    ("actor.process.xattributes", pa.string()),  # object_type "object", not unmapped: JSON
]


@pytest.mark.parametrize(("path", "expected"), AUTH_TYPES_110)
def test_authentication_110_types(
    v110: OcsfSchema, path: str, expected: pa.DataType | None
) -> None:
    found = field_at(v110.arrow_schema(3002), path)
    if expected is None:
        assert found is None, path
    else:
        assert found is not None, path
        assert found.type == expected, path


def test_observables_is_list_of_struct(v110: OcsfSchema) -> None:
    t = v110.arrow_schema(3002).field("observables").type
    assert pa.types.is_list(t) and pa.types.is_struct(t.value_type)
    assert t.value_type.field("type_id").type == pa.int32()


def test_process_activity_self_reference_is_cut_by_depth(v110: OcsfSchema) -> None:
    schema = v110.arrow_schema(1007)
    # process is level 1, process.parent_process level 2, its parent_process level 3 (a struct
    # of scalars only), and the next parent_process would be level 4: cut.
    assert field_at(schema, "process.parent_process.pid") is not None
    assert field_at(schema, "process.parent_process.parent_process.pid") is not None
    assert field_at(schema, "process.parent_process.parent_process.parent_process") is None
    assert field_at(schema, "process.parent_process.parent_process.user") is None
    assert field_at(schema, "actor.process.parent_process") is not None
    assert field_at(schema, "actor.process.parent_process.parent_process") is None


@pytest.mark.parametrize("version", EXPECTED_VERSIONS)
def test_depth_nullability_and_time_units_everywhere(version: str) -> None:
    schema = load_schema(version)
    for uid in schema.class_uids():
        arrow = schema.arrow_schema(uid)
        assert all(f.nullable for f in all_fields(arrow))
        assert max(struct_depth(f.type) for f in arrow) <= MAX_OBJECT_DEPTH
        for f in arrow:
            for t in all_types(f.type):
                assert not pa.types.is_struct(t) or t.num_fields > 0
                if pa.types.is_timestamp(t):
                    assert (t.unit, t.tz) == ("ms", "UTC")
        assert arrow.field("time").type == pa.int64()
        assert arrow.field("type_uid").type == pa.int64()
        assert arrow.field("unmapped").type == pa.map_(pa.string(), pa.string())
        names = [f.name for f in arrow]
        assert names == sorted(names)


def test_schema_is_fixed(v110: OcsfSchema) -> None:
    first = v110.arrow_schema(3002)
    assert v110.arrow_schema(3002) is first
    fresh = OcsfSchema(_raw_110())  # built again from the same data: the same schema
    assert fresh.arrow_schema(3002).equals(first, check_metadata=True)
    assert v110.arrow_schema(1007) is not first
    assert not v110.arrow_schema(1007).equals(first)


def _raw_110() -> dict[str, object]:
    res = resources.files("securitylake_sink.ocsf").joinpath("data", "ocsf-1.1.0.json.gz")
    with res.open("rb") as fh:
        raw: dict[str, object] = json.loads(gzip.decompress(fh.read()))
    return raw


def test_from_pylist_and_parquet_round_trip(v110: OcsfSchema) -> None:
    schema = v110.arrow_schema(3002)
    row = {
        "class_uid": 3002,
        "time": 1700000000000,
        "user": {"name": "a"},
        "unmapped": {"x.y": "1"},
    }
    table = pa.Table.from_pylist([row], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    buf.seek(0)
    back = pq.read_table(buf)
    assert back.schema.equals(schema, check_metadata=False)
    assert back.schema.metadata[b"ocsf.version"] == b"1.1.0"
    assert back.schema.metadata[b"ocsf.class_uid"] == b"3002"
    assert back.equals(table)
    got = back.to_pylist()[0]
    assert got["class_uid"] == 3002 and got["time"] == 1700000000000
    assert got["user"]["name"] == "a" and got["user"]["uid"] is None
    assert got["unmapped"] == [("x.y", "1")]
    assert got["severity_id"] is None and got["actor"] is None

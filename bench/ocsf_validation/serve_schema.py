"""Answer the OCSF schema server's JSON-schema requests offline, from the bundled schema.

AWS's OCSF validation tool for Security Lake (aws-samples/amazon-security-lake-ocsf-validation)
fetches ``https://schema.ocsf.io/<version>/schema/classes/<class>?profiles=<p1,p2>`` for every
record it checks. Without schema.ocsf.io, run this server and point the tool's base URL at it
(see README.md beside this file). It builds the same JSON schema (draft-07) as the OCSF server's
``Schema.JsonSchema`` generator from ``plugin/securitylake_sink/ocsf/data/ocsf-<version>.json.gz``:

* the class and every object it references (transitively, in ``$defs``), attributes filtered by
  the ``profiles`` query parameter (absent: no filtering; empty: no profile attributes);
* ``title`` from the caption, ``type: object``, ``required`` from ``requirement: required``;
* ``integer_t``/``string_t`` enums as ``enum`` (or ``const`` for one value), ``object_t`` as
  ``$ref: #/$defs/<object>``, ``json_t`` untyped, other types by their base type, arrays as
  ``type: array`` with ``items``.

Two flavours, because the public server changed:

* ``current`` (default): the ocsf-server generator since 2024-10/2025-08, i.e. what
  schema.ocsf.io answers today: ``additionalProperties: false`` on every object, sorted
  ``required`` and enums, and object ``constraints`` as ``anyOf`` (at_least_one) / ``oneOf``
  (just_one), the constrained attributes then left out of ``required``;
* ``2023``: the generator of 2023 whose output the tool's own sample
  (``samples/1.1.0/EKS/schemas/6003-cloud,datetime-1.1.0.json``) shows: no
  ``additionalProperties`` on nested objects, no constraints, schema order kept.

Routes: ``/<version>/schema/classes/<name>``, ``/<version>/schema/objects/<name>`` and the same
without ``/<version>`` (the ``--default-version``); ``/<version>/export/schema`` returns the
bundled legacy export as is. Requests are logged to stderr.

    .venv/bin/python bench/ocsf_validation/serve_schema.py --port 8999 [--flavor current|2023]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DATA_DIR = Path(__file__).resolve().parents[2] / "plugin" / "securitylake_sink" / "ocsf" / "data"
SCHEMA_BASE_URI = "https://schema.ocsf.io/schema/classes"
DRAFT = "http://json-schema.org/draft-07/schema#"
# the server's encode_type: these base types (a type or its direct base) map to JSON types
BASE_JSON_TYPES = {
    "string_t": "string",
    "integer_t": "integer",
    "long_t": "integer",
    "float_t": "number",
    "boolean_t": "boolean",
}

Json = dict[str, Any]


@cache
def load(data_dir: Path, version: str) -> Json:
    path = data_dir / f"ocsf-{version}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def filter_profiles(item: Json, profiles: set[str] | None) -> Json:
    """The item with the attributes of profiles not asked for removed (None: keep all)."""
    if profiles is None:
        return item
    attrs = {k: a for k, a in item["attributes"].items() if not a.get("profile") or a["profile"] in profiles}
    return {**item, "attributes": attrs}


def referenced_objects(item: Json, objects: Json) -> dict[str, Json]:
    """Every object the item references, transitively (before profile filtering, as the server)."""
    found: dict[str, Json] = {}
    stack = [item]
    while stack:
        for attr in stack.pop()["attributes"].values():
            name = attr.get("object_type")
            if name and name not in found:
                found[name] = objects[name]
                stack.append(objects[name])
    return found


def json_type(types: Json, type_name: str) -> str:
    """The server's ``encode_type``: the type itself or its direct base type, else the raw name."""
    for base, jtype in BASE_JSON_TYPES.items():
        if type_name == base or types.get(type_name, {}).get("type") == base:
            return jtype
    return type_name


def encode_enum(schema: Json, attr: Json, jtype: str, *, ordered: bool) -> Json:
    if attr.get("enum"):
        keys = list(attr["enum"])
        values: list[Any] = [int(k) for k in keys] if jtype == "integer" else keys
        if ordered:
            values.sort()
        if len(values) == 1:
            schema["const"] = values[0]
        else:
            schema["enum"] = values
    schema["type"] = jtype
    return schema


def encode_attribute(attr: Json, types: Json, *, ordered: bool) -> Json:
    schema: Json = {"title": attr.get("caption")}
    t = attr["type"]
    if t == "integer_t":
        encode_enum(schema, attr, "integer", ordered=ordered)
    elif t == "string_t":
        encode_enum(schema, attr, "string", ordered=ordered)
    elif t == "object_t":
        schema["$ref"] = "#/$defs/" + attr["object_type"].replace("/", "_")
    elif t != "json_t":
        schema["type"] = json_type(types, t)
    if attr.get("is_array"):
        if "type" not in schema:
            items: Json = {"$ref": schema.pop("$ref")} if "$ref" in schema else {}
        else:
            items = {"type": schema["type"]}
            if "enum" in schema:
                items["enum"] = schema.pop("enum")
        schema["type"] = "array"
        schema["items"] = items
    return schema


def encode_item(item: Json, types: Json, *, flavor: str, is_class: bool, objects: dict[str, Json] | None) -> Json:
    current = flavor == "current"
    constraints = (item.get("constraints") or {}) if current else {}
    just_one_names = set(constraints.get("just_one") or [])
    at_least_one_names = set(constraints.get("at_least_one") or [])
    attributes = item["attributes"]
    names = sorted(attributes) if current else list(attributes)
    properties: Json = {}
    required: list[str] = []
    just_one: list[str] = []  # constrained attributes the item has, in name order (as the server)
    at_least_one: list[str] = []
    for name in names:
        attr = attributes[name]
        if name in just_one_names:
            just_one.append(name)
        elif name in at_least_one_names:
            at_least_one.append(name)
        elif attr.get("requirement") == "required":
            required.append(name)
        properties[name] = encode_attribute(attr, types, ordered=current)
    schema: Json = {"$schema": DRAFT, "$id": f"{SCHEMA_BASE_URI}/{item['name']}"} if is_class else {}
    schema["title"] = item.get("caption")
    schema["type"] = "object"
    schema["properties"] = properties
    if current:
        schema["additionalProperties"] = False
    if required:
        schema["required"] = required
    if just_one:
        schema["oneOf"] = [{"required": [n], "not": {"required": [o for o in just_one if o != n]}} for n in just_one]
    if at_least_one:
        schema["anyOf"] = [{"required": [n]} for n in at_least_one]
    if objects:
        schema["$defs"] = {
            name.replace("/", "_"): encode_item(obj, types, flavor=flavor, is_class=False, objects=None)
            for name, obj in objects.items()
        }
    if not properties:
        schema["additionalProperties"] = True
    return schema


def class_schema(schema: Json, name: str, profiles: set[str] | None, flavor: str) -> Json | None:
    item = schema["classes"].get(name) or (schema["base_event"] if name == "base_event" else None)
    if item is None:
        return None
    objects = {n: filter_profiles(o, profiles) for n, o in referenced_objects(item, schema["objects"]).items()}
    return encode_item(filter_profiles(item, profiles), schema["types"], flavor=flavor, is_class=True, objects=objects)


def object_schema(schema: Json, name: str, profiles: set[str] | None, flavor: str) -> Json | None:
    item = schema["objects"].get(name)
    if item is None:
        return None
    objects = {n: filter_profiles(o, profiles) for n, o in referenced_objects(item, schema["objects"]).items()}
    return encode_item(filter_profiles(item, profiles), schema["types"], flavor=flavor, is_class=False, objects=objects)


def parse_profiles(query: dict[str, list[str]]) -> set[str] | None:
    if "profiles" not in query:
        return None
    return {p.strip() for p in query["profiles"][0].split(",") if p.strip()}


def make_handler(data_dir: Path, default_version: str, flavor: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            version = default_version
            if parts and parts[0][:1].isdigit():
                version, parts = parts[0], parts[1:]
            try:
                schema = load(data_dir, version)
            except FileNotFoundError:
                return self.reply(404, {"error": f"OCSF version {version} is not bundled"})
            query = parse_qs(url.query, keep_blank_values=True)
            profiles = parse_profiles(query)
            body: Json | None = None
            if len(parts) == 3 and parts[:2] == ["schema", "classes"]:
                body = class_schema(schema, parts[2], profiles, flavor)
            elif len(parts) == 3 and parts[:2] == ["schema", "objects"]:
                body = object_schema(schema, parts[2], profiles, flavor)
            elif parts == ["export", "schema"]:
                body = schema
            if body is None:
                return self.reply(404, {"error": f"not found: {url.path}"})
            return self.reply(200, body)

        def reply(self, status: int, body: Json) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write("serve_schema: " + (format % args) + "\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder of ocsf-<version>.json.gz")
    parser.add_argument("--default-version", default="1.1.0", help="for paths without /<version>/")
    parser.add_argument("--flavor", choices=["current", "2023"], default="current")
    parser.add_argument("--dump", metavar="CLASS", help="print the JSON schema of CLASS and exit")
    parser.add_argument("--profiles", default=None, help="with --dump: comma-separated profiles")
    args = parser.parse_args(argv)
    if args.dump:
        profiles = parse_profiles({"profiles": [args.profiles]}) if args.profiles is not None else None
        body = class_schema(load(args.data_dir, args.default_version), args.dump, profiles, args.flavor)
        print(json.dumps(body, indent=1))
        return
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.data_dir, args.default_version, args.flavor))
    sys.stderr.write(f"serve_schema: http://{args.host}:{server.server_port}/ ({args.flavor}, {args.data_dir})\n")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()

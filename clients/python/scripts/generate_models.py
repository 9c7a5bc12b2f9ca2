"""Generates src/tokenvault/models.py (TypedDicts for every schema) from
tokenvault's served /openapi.json.

    python scripts/generate_models.py openapi.json          # writes the file
    python scripts/generate_models.py openapi.json --check  # exit 1 when stale

TypedDicts, not classes: bodies stay the plain JSON objects the service
sends, and mypy checks every key. Only `typing` is used, in forms Python 3.9
evaluates (List, Dict, Optional, Union, Literal), and definitions come in
dependency order, so the module needs nothing at import time.
"""

from __future__ import annotations

import argparse
import json
import keyword
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "src" / "tokenvault" / "models.py"
REF = "#/components/schemas/"


def ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref[len(REF):] if isinstance(ref, str) and ref.startswith(REF) else None


def refs_in(schema: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        name = ref_name(schema)
        if name:
            found.add(name)
        for value in schema.values():
            found |= refs_in(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= refs_in(value)
    return found


def literal(values: list[Any]) -> str:
    return "Literal[" + ", ".join(json.dumps(v) for v in values) + "]"


def type_of(schema: dict[str, Any]) -> str:
    name = ref_name(schema)
    if name:
        return name
    if "enum" in schema:
        return literal(schema["enum"])
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return "Union[" + ", ".join(type_of(s) for s in schema[combinator]) + "]"
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_of(schema["allOf"][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        inner = [k for k in kind if k != "null"]
        base = type_of({**schema, "type": inner[0]}) if len(inner) == 1 else "Any"
        return f"Optional[{base}]" if "null" in kind else base
    if kind == "string":
        return "str"
    if kind == "integer":
        return "int"
    if kind == "number":
        return "float"
    if kind == "boolean":
        return "bool"
    if kind == "null":
        return "None"
    if kind == "array":
        return f"List[{type_of(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"Dict[str, {type_of(schema['additionalProperties'])}]"
    return "Dict[str, Any]" if kind == "object" else "Any"


def fields_of(schema: dict[str, Any], schemas: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Properties and required names, with allOf flattened."""
    properties: dict[str, Any] = {}
    required: set[str] = set()
    for part in schema.get("allOf", []):
        name = ref_name(part)
        props, req = fields_of(schemas[name] if name else part, schemas)
        properties.update(props)
        required |= req
    properties.update(schema.get("properties", {}))
    required |= set(schema.get("required", []))
    return properties, required


def is_object(schema: dict[str, Any]) -> bool:
    return "properties" in schema or "allOf" in schema and len(schema["allOf"]) > 1


def comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.strip().splitlines()]


def group(class_name: str, names: list[str], properties: dict[str, Any], total: bool) -> list[str]:
    """One TypedDict: class syntax, or the functional one when a key is
    not an identifier (`class`, `import`)."""
    lines: list[str] = []
    if any(keyword.iskeyword(p) or not p.isidentifier() for p in names):
        lines.append(f"{class_name} = TypedDict(")
        lines.append(f"    {json.dumps(class_name)},")
        lines.append("    {")
        for prop in names:
            if "description" in properties[prop]:
                lines.extend(comment(properties[prop]["description"], "        "))
            lines.append(f"        {json.dumps(prop)}: {type_of(properties[prop])},")
        lines.append("    },")
        if not total:
            lines.append("    total=False,")
        lines.append(")")
        return lines
    lines.append(f"class {class_name}(TypedDict{'' if total else ', total=False'}):")
    for prop in names:
        if "description" in properties[prop]:
            lines.extend(comment(properties[prop]["description"], "    "))
        lines.append(f"    {prop}: {type_of(properties[prop])}")
    if not names:
        lines.append("    pass")
    return lines


def typed_dict(name: str, schema: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    """Required and optional keys as two TypedDicts (Python 3.9 has no
    NotRequired) joined by one that carries the name and description."""
    properties, required = fields_of(schema, schemas)
    mandatory = sorted(p for p in properties if p in required)
    optional = sorted(p for p in properties if p not in required)
    doc = comment(schema.get("description", ""), "")
    if not (mandatory and optional):
        return doc + group(name, mandatory or optional, properties, total=bool(mandatory) or not optional)
    lines = group(f"_{name}Required", mandatory, properties, total=True)
    lines += ["", ""] + group(f"_{name}Optional", optional, properties, total=False)
    lines += ["", ""] + doc + [f"class {name}(_{name}Required, _{name}Optional):", "    pass"]
    return lines


def generate(document: dict[str, Any]) -> str:
    schemas: dict[str, Any] = document["components"]["schemas"]
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise SystemExit(f"recursive schema {name}: not supported")
        visiting.add(name)
        for dependency in sorted(refs_in(schemas[name])):
            visit(dependency)
        visiting.discard(name)
        ordered.append(name)

    for name in sorted(schemas):
        visit(name)

    out = [
        '"""Every body of the tokenvault API as a TypedDict.',
        "",
        "Generated by clients/python/scripts/generate_models.py from the service's",
        '/openapi.json (version {}). Do not edit: regenerate."""'.format(document["info"]["version"]),
        "",
        "from typing import Any, Dict, List, Literal, Optional, TypedDict, Union",
        "",
        "__all__ = [" + ", ".join(json.dumps(n) for n in sorted(schemas)) + ', "OPERATION_IDS"]',
    ]
    operations = sorted(
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    )
    out.extend(["", "", "# Every operation of the API (the clients' completeness test checks them)."])
    out.append("OPERATION_IDS = (")
    out.extend(f"    {json.dumps(op)}," for op in operations)
    out.append(")")
    for name in ordered:
        schema = schemas[name]
        out.extend(["", ""])
        if is_object(schema):
            out.extend(typed_dict(name, schema, schemas))
        else:
            if "description" in schema:
                out.extend(comment(schema["description"], ""))
            out.append(f"{name} = {type_of(schema)}")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openapi", type=Path, help="the served /openapi.json")
    parser.add_argument("--check", action="store_true", help="fail when the checked-in file differs")
    args = parser.parse_args()
    text = generate(json.loads(args.openapi.read_text(encoding="utf-8")))
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is stale: run python scripts/generate_models.py <served /openapi.json>")
        return
    OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

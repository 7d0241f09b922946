"""The OpenAPI 3.1 document of the REST API, generated from the route table and the models."""

from __future__ import annotations

import html
import re
from typing import Any

import msgspec

from fleetchat import __version__
from fleetchat.server.rest import ROUTES, STATUS_BY_CODE, Route
from fleetchat.server.schemas import ErrorBody

__all__ = ["docs_page", "openapi_document"]

_REF = "#/components/schemas/{name}"


def _schema_of(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    return list(refs), components


def _operation(route: Route, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "responses": {},
    }
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in re.findall(r"{(\w+)}", route.path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": {"type": q.type},
        }
        for q in route.query
    ]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[route.body]}},
        }
    elif route.raw_body is not None:
        schema = {"$ref": _REF.format(name=route.raw_body)}
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}, "application/yaml": {}},
        }
    if route.response is not None:
        op["responses"][str(route.status)] = {
            "description": "OK",
            "content": {"application/json": {"schema": refs[route.response]}},
        }
    else:
        op["responses"][str(route.status)] = {"description": "Done"}
    error = {"content": {"application/json": {"schema": refs[ErrorBody]}}}
    statuses = sorted({400, 401, 403, 404, 409, 413, 429, 503, 504} & set(STATUS_BY_CODE.values()))
    for status in statuses:
        op["responses"][str(status)] = {"description": "Error (see the error code)", **error}
    if True:
        op["security"] = [{"bearer": []}]
    return op


def _raw_bodies() -> dict[str, Any]:
    """Schemas of the bodies routes read themselves: a workflow definition, its ``$defs``
    moved into the components as ``Workflow<Name>``."""
    from fleetchat.workflows.schema import WORKFLOW_SCHEMA

    text = msgspec.json.encode(WORKFLOW_SCHEMA).decode()
    text = text.replace('"#/$defs/', '"' + _REF.format(name="Workflow"))
    schema: dict[str, Any] = msgspec.json.decode(text)
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    defs = schema.pop("$defs", {})
    return {"WorkflowDefinition": schema, **{f"Workflow{k}": v for k, v in defs.items()}}


def openapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    types: list[Any] = [ErrorBody]
    for r in ROUTES:
        for t in (r.body, r.response):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = _schema_of(types)
    components.update(_raw_bodies())
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetchat hub",
            "version": __version__,
            "description": "REST API of a fleetchat hub. Agents use the WebSocket at /v1/ws "
            '(see docs/protocol.md). Errors are {"error": {"code", "message", "details"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_page() -> str:
    """A readable, self-contained HTML page of the REST API."""
    doc = openapi_document()
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            body_ref = body.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            ok = next(iter(op["responses"]))
            resp = op["responses"][ok].get("content", {}).get("application/json", {})
            resp_ref = resp.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(
                f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td><td>{html.escape(params)}</td>"
                f"<td>{_link(body_ref)}</td><td>{ok} {_link(resp_ref)}</td></tr>"
            )
    schemas = "".join(
        f"<h3 id='{n}'>{n}</h3><pre>{html.escape(_pretty(s))}</pre>"
        for n, s in sorted(doc["components"]["schemas"].items())
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fleetchat API</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
td,th{{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}}
table{{border-collapse:collapse}}pre{{background:#f6f6f6;padding:.6em;overflow:auto}}</style>
</head><body><h1>fleetchat hub REST API v{html.escape(doc["info"]["version"])}</h1>
<p>{html.escape(doc["info"]["description"])}
Machine-readable: <a href="/v1/openapi.json">/v1/openapi.json</a>.
With auth on, send <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>body</th><th>response</th></tr>
{"".join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"""


def _pretty(schema: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(schema)).decode()


def _link(name: str) -> str:
    return f"<a href='#{name}'>{name}</a>" if name else ""

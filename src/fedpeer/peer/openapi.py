"""OpenAPI 3.1 document generated from the route table (one source of truth)."""

from __future__ import annotations

import re

from .._version import __version__
from ..errors import all_codes
from ._routing import RouteSpec

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

# Errors any route may answer with, by the shared wrapper.
_COMMON = {"RATE_LIMITED", "INTERNAL", "NOT_ACCEPTABLE"}
_AUTH = {"AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED", "SCOPE_FORBIDDEN"}
_BODY = {
    "BODY_TOO_LARGE",
    "BODY_TIMEOUT",
    "MALFORMED",
    "UNSUPPORTED_MEDIA_TYPE",
    "NON_CANONICAL",
}


def _openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)


def _content(schema: object) -> dict[str, object]:
    return {"application/json": {"schema": schema}, "application/cbor": {"schema": schema}}


def operation(spec: RouteSpec) -> dict[str, object]:
    """The OpenAPI operation object for one route, including its scope and error codes."""
    codes = set(spec.errors) | _COMMON
    if spec.scope != "public":
        codes |= _AUTH
    # A bearer is optional on public routes, and any bearer sent is checked.
    codes |= {"AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED"}
    if spec.request_schema is not None:
        codes |= _BODY | {"INVALID_REQUEST"}
    if "{" in spec.path:  # a path segment the router cannot place (empty, say) is a 404
        codes |= {"NOT_FOUND"}
    if spec.method != "GET":  # a write on a full disk
        codes |= {"STORE_FULL"}
    registry = all_codes()
    by_status: dict[int, list[str]] = {}
    for code in sorted(codes):
        by_status.setdefault(registry[code].http_status, []).append(code)
    responses: dict[str, object] = {}
    ok: dict[str, object] = {"description": "success", "content": _content(spec.response_schema)}
    if spec.stream:
        ok["content"] = {
            **_content(spec.response_schema),
            "text/event-stream": {"schema": {"type": "string"}},
        }
    responses[str(spec.success_status)] = ok
    if spec.method == "POST" and spec.success_status == 201:
        responses["200"] = {"description": "already stored", "content": _content({})}
    for status, names in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "error: " + ", ".join(names),
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
            "x-fedpeer-error-codes": names,
        }
    op: dict[str, object] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "x-fedpeer-scope": spec.scope,
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": dict(p.schema),
                **({"description": p.description} if p.description else {}),
            }
            for p in spec.params
        ],
        "responses": responses,
    }
    if spec.scope != "public":
        op["security"] = [{"bearer": []}]
    if spec.request_schema is not None:
        op["requestBody"] = {"required": True, "content": _content(spec.request_schema)}
    return op


def openapi_document(routes: list[RouteSpec]) -> dict[str, object]:
    """The OpenAPI 3.1 document covering every route in ``routes``."""
    paths: dict[str, dict[str, object]] = {}
    for spec in routes:
        paths.setdefault(_openapi_path(spec.path), {})[spec.method.lower()] = operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedpeer node", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR_SCHEMA},
        },
    }

"""The OpenAPI document covers every route, and schemathesis finds no 500 and no
response that breaks the document, against a real node on loopback.

schemathesis drives requests synchronously, so the node runs in its own thread
with its own trio loop for this module.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fedpeer.errors import all_codes
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer._routes import ROUTES
from fedpeer.peer.openapi import openapi_document

pytestmark = pytest.mark.filterwarnings("ignore:Skipped test cases with unsupported payload")

DOC = openapi_document(ROUTES)
schema = schemathesis.openapi.from_dict(DOC)


def test_document_covers_every_route_with_scope_and_errors() -> None:
    paths = DOC["paths"]
    assert isinstance(paths, dict)
    for spec in ROUTES:
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", spec.path)
        op = paths[path][spec.method.lower()]
        assert op["x-fedpeer-scope"] == spec.scope
        codes = [c for r in op["responses"].values() for c in r.get("x-fedpeer-error-codes", [])]
        for code in spec.errors:
            assert code in codes
        for code in codes:
            assert code in all_codes()
        if spec.scope != "public":
            assert op["security"] == [{"bearer": []}]
            assert "SCOPE_FORBIDDEN" in codes


class LiveNode:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ready = threading.Event()
        self.url = ""
        self.token = ""
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        cfg = NodeConfig(rate_burst=100_000, rate_per_s=100_000, longpoll_max_s=0.5)
        async with open_node(self.data_dir, config=cfg) as node:
            await node.append(namespace="ns", thread="t", kind="k", body={"hello": "world"})
            self.url = node.url
            assert node.admin_token_path is not None
            self.token = node.admin_token_path.read_text().strip()
            self.ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30), "node did not start"

    def stop(self) -> None:
        assert self._stop is not None
        assert self._token is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path_factory.mktemp("schemathesis"))
    node.start()
    yield node
    node.stop()


_FRAMING_HEADERS = frozenset({"transfer-encoding", "content-length", "connection", "host"})


# Bodies of POST /v1/service-accounts include DIDs and scope names that random data
# rarely hits; the strategy still explores every field's shape and error path.
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms(case: schemathesis.Case, live: LiveNode) -> None:
    if case.path == "/v1/sync/changes" and (case.query or {}).get("feed") == "continuous":
        case.query = {**(case.query or {}), "feed": "longpoll"}
    if case.headers:
        # Framing headers belong to HTTP, not to the API the schema describes: a
        # generated "transfer-encoding: VG" is answered 501 by h11 before any route
        # runs (RFC 9112 6.1), whatever the schema says.
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in _FRAMING_HEADERS}
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {live.token}"},
        timeout=10,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )

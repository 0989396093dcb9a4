"""Embed a fedpeer node in an asyncio web app (Starlette here; FastAPI is the same).

The app's lifespan runs the node for as long as the app runs; its routes call the
node's services in-process (``node.records``), no HTTP round trip to itself.
Other nodes still reach this one over its own HTTP port (``node.url``).

Run: .venv/bin/python examples/embed_asyncio.py [DATA_DIR]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import fedpeer


def make_app(data_dir: str) -> Starlette:
    """The host application: POST /notes adds a note, GET /notes lists them, newest first."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with fedpeer.open_node(data_dir) as node:
            app.state.node = node
            yield

    async def add_note(request: Request) -> JSONResponse:
        node: fedpeer.Node = request.app.state.node
        text = (await request.json())["text"]
        entry = await node.records.append(namespace="notes", thread="inbox", kind="note", body=text)
        return JSONResponse({"cid": str(entry.cid), "seq": entry.seq}, status_code=201)

    async def list_notes(request: Request) -> JSONResponse:
        node: fedpeer.Node = request.app.state.node
        page = await node.records.list(namespace="notes", newest_first=True, limit=10)
        return JSONResponse([e.record.body for e in page.records])

    routes = [Route("/notes", add_note, methods=["POST"]), Route("/notes", list_notes)]
    return Starlette(routes=routes, lifespan=lifespan)


async def main(data_dir: str) -> None:
    app = make_app(data_dir)
    # Run the app's lifespan and talk to it in-process, as an ASGI server would.
    async with app.router.lifespan_context(app):
        node: fedpeer.Node = app.state.node
        print("loop:", type(asyncio.get_running_loop()).__module__)
        print("did:", node.did)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as http:
            for text in ("milk", "eggs"):
                (await http.post("/notes", json={"text": text})).raise_for_status()
            print("notes:", (await http.get("/notes")).json())
        # The node serves other nodes (and operators) over its own port, too.
        async with fedpeer.AdminClient(node.url, node.admin_token) as admin:
            newest = (await admin.records.list(newest_first=True, limit=1)).records[0]
            print("over HTTP, newest:", newest.record.body, newest.cid)
        async with fedpeer.PeerClient(node.url) as peer:
            verified = await peer.manifest(expected_did=node.did)
            print("manifest verified, signed by", verified.did)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fedpeer-")))

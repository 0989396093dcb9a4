"""Embed a fedpeer node in a trio program: append records, read them back in-process
and over HTTP (as another node would).

Run: .venv/bin/python examples/embed.py [DATA_DIR]
"""

from __future__ import annotations

import sys
import tempfile

import trio

import fedpeer


async def main(data_dir: str) -> None:
    async with fedpeer.open_node(data_dir) as node:
        print("did:", node.did)
        print("url:", node.url)
        first = await node.records.append(
            namespace="notes", thread="groceries", kind="item", body="milk"
        )
        await node.records.append(
            namespace="notes", thread="groceries", kind="item", body="eggs", parents=[first.cid]
        )
        newest = await node.records.list(namespace="notes", newest_first=True, limit=1)
        print("newest:", newest.records[0].record.body)
        async with fedpeer.PeerClient(node.url, token=node.admin_token) as client:
            manifest = await client.manifest(expected_did=node.did)
            print("manifest verified, signed by", manifest.did)
            async for _cursor, rec in client.iter_changes(follow=False):
                print(rec.cid, rec.record.kind, rec.record.body)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fedpeer-"))

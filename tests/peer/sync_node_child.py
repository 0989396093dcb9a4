"""Child process of test_sync_kill: a node that pulls from a source until killed.

Usage: ``python sync_node_child.py DATA_DIR SOURCE_URL TOKEN PAGE_LIMIT``.

Runs ``open_node(DATA_DIR)``; on the first run creates the pair to SOURCE_URL
(later runs find it in the store and resume from its cursor). Prints one JSON
line per event: ``{"event": "started" | "page" | "retry" | ... | "caught_up",
"seq": <the pair's cursor seq>, ...}``, flushing each, and waits to be killed.
"""

from __future__ import annotations

import json
import sys

import trio

from fedpeer.peer import open_node
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.feed import Cursor
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import Pair, PairState


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def seq_of(pair: Pair) -> int:
    return Cursor.decode(pair.cursor).seq if pair.cursor else 0


async def main(data_dir: str, url: str, token: str, page_limit: int) -> None:
    # up to three pages per transaction: kills also land inside multi-page commits, and
    # progress per round stays small enough for every kill to land mid-sync
    opts = SyncOptions(
        page_limit=page_limit,
        backoff=Backoff(base_s=0.05, cap_s=0.5),
        commit_max_records=3 * page_limit,
    )
    async with open_node(data_dir, sync=opts) as node:

        def on_event(ev: SyncEvent) -> None:
            emit(event=ev.kind, seq=seq_of(ev.pair), records=ev.records, code=ev.code)

        node.pairs.add_listener(on_event)
        pairs = node.pairs.list()
        pair = pairs[0] if pairs else await node.pair_with(url, token=token)
        emit(event="started", pair=pair.id, seq=seq_of(node.pairs.get(pair.id)))
        done = await node.pairs.wait_for(pair.id, lambda p: p.state is PairState.CAUGHT_UP)
        emit(event="caught_up", seq=seq_of(done), count=await node.store.count())
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

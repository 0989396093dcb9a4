"""Helper for the e2e tests that runs INSIDE a namespace (``ip netns exec``).

The test process lives in the root namespace and cannot reach anything in the
namespaces, so it runs this script there. ``add`` and ``wait`` talk to the node
of DATA_DIR over loopback (the URL in ``node.url``, the admin token in
``admin.token``)::

    ns_tool.py add DATA_DIR --count N --label L [--threads K (2)]
        append N records (POST /v1/records, body {"from": L, "i": i}) over K
        keep-alive connections; print {"cids": [...]}.
    ns_tool.py wait DATA_DIR --count N [--timeout S]
        read the whole changes feed from the start; while that is fewer than N
        records, longpoll (the node answers as soon as a record lands: no
        polling) and read on; ``--count 0`` is a snapshot. Print {"count": n,
        "t": unix time when it had them, "cids": [...in feed order...]}.
        Exit 3 (with what it has) when S seconds pass first.
    ns_tool.py caught-up DATA_DIR --seq N [--timeout S] [--interval I]
        (for bench/discovery.py) wait until the node has at least one pair and
        every pair is ``caught_up`` with its cursor at seq >= N on its source;
        print {"t": unix time when first seen, "pairs": [...]}. A pair's state has
        no event to wait on, so this asks GET /v1/sync/pairs every I seconds
        (default 0.05: the resolution of the measurement), bounded by S.
    ns_tool.py txt INSTANCE [--timeout S]
        resolve the mDNS service INSTANCE (``name._fedpeer._tcp.local.``) on this
        LAN with zeroconf and print its TXT as a JSON object (for an impostor
        that replays someone's signed announcement). Exit 3 when unresolved.

Exit 0 on success, 1 on an HTTP error (printed on stderr), 3 on timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx

from fedpeer.cli.config import admin_token, read_node_url
from fedpeer.peer.tls import local_client_context

EXIT_TIMEOUT = 3
PAGE = 10_000


def _link(value: object) -> str:
    if isinstance(value, dict) and isinstance(value.get("/"), str):
        return str(value["/"])
    return str(value)


def _client(data_dir: Path, timeout: float) -> httpx.Client:
    url = read_node_url(data_dir)
    if url is None:
        raise SystemExit(f"no node.url in {data_dir}: is the node running?")
    return httpx.Client(
        base_url=url,
        verify=local_client_context(data_dir) or True,  # the node's own certificate: a pin
        headers={
            "Authorization": f"Bearer {admin_token(data_dir)}",
            "Accept": "application/json",
        },
        timeout=timeout,
    )


def add(data_dir: Path, count: int, label: str, threads: int) -> list[str]:
    """Append ``count`` records; their CIDs in ``i`` order."""
    cids: list[str | None] = [None] * count
    errors: list[str] = []

    def worker(indexes: range) -> None:
        with _client(data_dir, 30.0) as http:
            for i in indexes:
                if errors:
                    return
                r = http.post(
                    "/v1/records",
                    json={
                        "namespace": "e2e",
                        "thread": f"from-{label}",
                        "kind": "note",
                        "body": {"from": label, "i": i},
                    },
                )
                if r.status_code != 201:
                    errors.append(f"POST /v1/records -> {r.status_code}: {r.text[:300]}")
                    return
                cids[i] = _link(r.json()["cid"])

    workers = [
        threading.Thread(target=worker, args=(range(k, count, threads),)) for k in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(errors[0])
    return [c for c in cids if c is not None]


def wait(data_dir: Path, count: int, timeout: float) -> tuple[list[str], bool]:
    """CIDs of the whole feed, from the start, once it holds at least ``count``.

    Reads everything the node holds (so ``count=0`` is a snapshot); while that is
    fewer than ``count``, holds a longpoll until records land. Returns ``(cids,
    reached)``; ``reached`` is False when ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    cids: list[str] = []
    since: str | None = None
    with _client(data_dir, 60.0) as http:
        for _ in range(100_000):  # bounded: each turn gets records or waits on the node
            params: dict[str, str] = {"limit": str(PAGE), "feed": "normal"}
            if since is not None:
                params["since"] = since
            r = http.get("/v1/sync/changes", params=params)
            r.raise_for_status()
            page = r.json()
            cids.extend(_link(rec["cid"]) for rec in page["records"])
            since = page["next_cursor"]
            if page["has_more"]:
                continue
            if len(cids) >= count:
                return cids, True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return cids, False
            # Read everything but short: hold a longpoll until something lands.
            hold = min(remaining, 20.0)
            lp = http.get(
                "/v1/sync/changes",
                params={
                    "limit": str(PAGE),
                    "feed": "longpoll",
                    "since": since,
                    "timeout": f"{hold:.2f}",
                },
                timeout=hold + 15.0,
            )
            lp.raise_for_status()
            page = lp.json()
            cids.extend(_link(rec["cid"]) for rec in page["records"])
            since = page["next_cursor"]
    return cids, len(cids) >= count


def caught_up(data_dir: Path, seq: int, timeout: float, interval: float) -> list[object] | None:
    """The node's pair rows once all are caught up at ``seq`` or beyond; None on timeout."""
    deadline = time.monotonic() + timeout
    with _client(data_dir, 30.0) as http:
        for _ in range(int(timeout / interval) + 1):  # bounded, paced by ``interval``
            r = http.get("/v1/sync/pairs")
            r.raise_for_status()
            rows = r.json()["pairs"]
            if rows and all(
                p["state"] == "caught_up" and (p["lag"]["cursor_seq"] or 0) >= seq for p in rows
            ):
                return list(rows)
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
    return None


def resolve_txt(instance: str, timeout: float) -> dict[str, str] | None:
    """The decoded TXT of the mDNS service ``instance``, or None when unresolved."""
    from zeroconf import Zeroconf

    from fedpeer.peer.discovery import SERVICE_TYPE, decode_txt

    zc = Zeroconf()
    try:
        info = zc.get_service_info(SERVICE_TYPE, instance, timeout=int(timeout * 1000))
    finally:
        zc.close()
    return None if info is None else decode_txt(info.properties)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_add = sub.add_parser("add")
    p_add.add_argument("data_dir", type=Path)
    p_add.add_argument("--count", type=int, required=True)
    p_add.add_argument("--label", required=True)
    p_add.add_argument("--threads", type=int, default=2)
    p_wait = sub.add_parser("wait")
    p_wait.add_argument("data_dir", type=Path)
    p_wait.add_argument("--count", type=int, required=True)
    p_wait.add_argument("--timeout", type=float, default=30.0)
    p_cu = sub.add_parser("caught-up")
    p_cu.add_argument("data_dir", type=Path)
    p_cu.add_argument("--seq", type=int, required=True)
    p_cu.add_argument("--timeout", type=float, default=30.0)
    p_cu.add_argument("--interval", type=float, default=0.05)
    p_txt = sub.add_parser("txt")
    p_txt.add_argument("instance")
    p_txt.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.cmd == "txt":
        txt = resolve_txt(args.instance, args.timeout)
        print(json.dumps(txt))
        sys.exit(0 if txt is not None else EXIT_TIMEOUT)
    if args.cmd == "caught-up":
        rows = caught_up(args.data_dir, args.seq, args.timeout, args.interval)
        print(json.dumps({"t": time.time(), "pairs": rows}))
        sys.exit(0 if rows is not None else EXIT_TIMEOUT)
    try:
        if args.cmd == "add":
            print(json.dumps({"cids": add(args.data_dir, args.count, args.label, args.threads)}))
            return
        cids, reached = wait(args.data_dir, args.count, args.timeout)
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"ns_tool: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"count": len(cids), "t": time.time(), "cids": cids}))
    if not reached:
        sys.exit(EXIT_TIMEOUT)


if __name__ == "__main__":
    main()

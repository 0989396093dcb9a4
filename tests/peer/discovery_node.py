"""A fedpeer node with mDNS discovery, for namespace tests; reports JSON lines.

Run it inside a network namespace (``ip netns exec NS python discovery_node.py``)::

    discovery_node.py --handle alice [--seed HEX] [--port N] [--poll S] [--backend asyncio]
    discovery_node.py --handle mallory --impostor-of DID --replay-txt JSON --port N

Normal mode starts ``open_node(host="0.0.0.0", config=NodeConfig(discovery=True))``
(or, with ``--poll``, the same Discovery with a shorter address poll) and prints,
one JSON object per line on stdout:

- ``{"event": "ready", "t", "did", "url", "port"}`` once the node serves;
- ``{"event": "discovery", "t", "status", "last_error", "instance", "addresses",
  "txt", "peers": [...]}`` at start and after every discovery change;
- ``{"event": "stopped", "t"}`` after a clean shutdown (SIGTERM or SIGINT).

Impostor mode serves a node with a *different* key on ``--port`` and announces,
with zeroconf directly, two services claiming ``--impostor-of``: one whose TXT
is signed by the impostor's key (bad signature for that DID), one replaying the
real node's signed TXT (``--replay-txt``) with the impostor's own address, so
only the manifest check can catch it. It prints ``{"event": "impostor", ...}``.

``--backend`` picks the event loop the node runs on (trio, the default, or
asyncio): zeroconf is bridged into either. ``t`` is ``time.time()`` when the line
is written (same clock for every
namespace), for the discovery benchmark.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import socket
import sys
import time

import anyio
import anyio.abc
from zeroconf import ServiceInfo, Zeroconf

from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node
from fedpeer.peer.discovery import SERVICE_TYPE, Discovery, sign_txt


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def report(disc: Discovery) -> None:
    emit(
        "discovery",
        status=disc.status,
        last_error=disc.last_error,
        instance=disc.instance_name,
        addresses=list(disc.advertised_addresses),
        txt=disc.announcement,
        peers=[e.to_json() for e in disc.roster.entries()],
    )


async def until_signal(cancel: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            cancel.cancel()
            return


async def normal(args: argparse.Namespace, key: SigningKey) -> None:
    cfg = NodeConfig(handle=args.handle, discovery=args.poll is None)
    async with anyio.create_task_group() as outer:
        outer.start_soon(until_signal, outer.cancel_scope)
        async with open_node(None, host="0.0.0.0", port=args.port, config=cfg, key=key) as node:
            emit("ready", did=node.did, url=node.url, port=int(node.url.rsplit(":", 1)[1]))
            disc = node.discovery
            if disc is None:  # --poll: the same Discovery, polling addresses faster
                tls = node.tls
                pin = None if tls is None else (lambda: tls.current.pin)
                disc = Discovery.for_node(
                    node.key, cfg, url=node.url, bind_host="0.0.0.0", tls_pin=pin
                )
                disc.poll_s = args.poll
                node.state.discovery = disc
                await node.nursery.start(functools.partial(disc.run, stop=node.state.closing))
            seen = disc.version
            report(disc)
            while True:  # ends when a signal cancels the outer scope
                seen = await disc.wait_changed(seen)
                report(disc)
    emit("stopped")


def _announce(
    key: SigningKey, target_did: str, replay: dict[str, str], port: int, addr: str
) -> tuple[Zeroconf, list[ServiceInfo]]:
    zc = Zeroconf()
    forged = sign_txt(key, handle=replay.get("handle", "x"), port=port, seq=int(time.time() * 1000))
    forged["did"] = target_did  # signed by the impostor's key: the signature no longer matches
    infos = [
        ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=port,
            properties=txt,
            server=f"mallory-{i}.local.",
            addresses=[socket.inet_aton(addr)],
            host_ttl=120,
            other_ttl=120,
        )
        for i, (name, txt) in enumerate([("impostor-forged", forged), ("impostor-replay", replay)])
    ]
    for info in infos:
        zc.register_service(info)
    return zc, infos


def _withdraw(zc: Zeroconf, infos: list[ServiceInfo]) -> None:
    for info in infos:
        zc.unregister_service(info)
    zc.close()


async def impostor(args: argparse.Namespace, key: SigningKey) -> None:
    replay = json.loads(args.replay_txt)
    async with anyio.create_task_group() as outer:
        outer.start_soon(until_signal, outer.cancel_scope)
        cfg = NodeConfig(handle=args.handle)
        async with open_node(None, host="0.0.0.0", port=args.port, config=cfg, key=key) as node:
            emit("ready", did=node.did, url=node.url, port=args.port)
            zc, infos = await anyio.to_thread.run_sync(
                _announce, key, args.impostor_of, replay, args.port, args.address
            )
            try:
                emit("impostor", names=[i.name for i in infos])
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_withdraw, zc, infos)
    emit("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handle", required=True)
    parser.add_argument("--seed", help="hex seed of the node key (default: random)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--poll", type=float, default=None, help="address poll interval, s")
    parser.add_argument("--impostor-of", help="DID to impersonate")
    parser.add_argument("--replay-txt", help="the real node's TXT (JSON) to replay")
    parser.add_argument("--address", help="this host's address (impostor mode)")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    key = SigningKey.from_seed(bytes.fromhex(args.seed)) if args.seed else SigningKey.generate()
    if args.impostor_of:
        anyio.run(impostor, args, key, backend=args.backend)
    else:
        anyio.run(normal, args, key, backend=args.backend)


if __name__ == "__main__":
    main()

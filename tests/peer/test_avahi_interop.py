"""Interop with Avahi: the other mDNS stack on most Linux desktops.

Two network namespaces on one veth link (``tests.netns``): host A runs a real
fedpeer node with discovery on (``tests/peer/discovery_node.py``, zeroconf);
host B runs avahi-daemon with a private ``/run`` and its own
``dbus-daemon --system`` (``tests.avahi``), plus Avahi's command-line clients.

- ``avahi-browse`` on B sees A's advertisement: instance name, address, port
  and the whole TXT record, whose signature still verifies after Avahi's
  handling; A's goodbye on shutdown reaches Avahi too.
- Services that ``avahi-publish`` announces on B reach A's roster. An unsigned
  one is listed (name, address, port) but ``invalid`` and never fetched, even
  when it points at a real node with the DID it claims: fedpeer never trusts
  an unsigned announcement. One carrying a TXT signed by a real node on B
  becomes ``verified`` (its manifest checks out); when avahi-publish ends,
  Avahi's goodbye removes it.

Root only (namespaces); skipped, with the reason, without ``ip`` or the Avahi
tools (``make test`` installs ``avahi-daemon avahi-utils`` when root).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fedpeer.identity.keys import SigningKey
from fedpeer.peer.discovery import SERVICE_TYPE, sign_txt, verify_txt
from tests import avahi, netns

e2e = pytest.mark.e2e

HELPER = str(Path(__file__).with_name("discovery_node.py"))
BROWSE_TYPE = SERVICE_TYPE.removesuffix(".local.")  # "_fedpeer._tcp"
CAROL_SEED = bytes(range(7, 39))

# A fedpeer node without discovery (only its HTTP API and well-known manifest),
# listening on all addresses of its namespace; prints its port, then serves.
PLAIN_NODE = """
import sys, trio
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, open_node

async def main() -> None:
    key = SigningKey.from_seed(bytes.fromhex(sys.argv[1]))
    cfg = NodeConfig(handle="carol")
    async with open_node(None, host="0.0.0.0", port=0, config=cfg, key=key) as node:
        assert node.tls is not None  # 0.0.0.0: HTTPS by default
        print("port", node.url.rsplit(":", 1)[1], node.tls.current.pin, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.fixture
def lan2() -> Iterator[netns.Lan]:
    reason = avahi.skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.lan(2) as net:
        yield net


@pytest.fixture
async def group() -> AsyncIterator[avahi.ProcessGroup]:
    async with avahi.ProcessGroup() as g:
        yield g


# --- reading discovery_node.py's JSON lines --------------------------------------------------

Event = dict[str, object]


def event_of(line: str) -> Event | None:
    if not line.startswith("{"):
        return None  # a log line (stderr is merged)
    event = json.loads(line)
    assert isinstance(event, dict)
    return event


def peers(event: Event | None) -> list[dict[str, object]]:
    if event is None or event.get("event") != "discovery":
        return []
    found = event["peers"]
    assert isinstance(found, list)
    return found


def on_event(pred: Callable[[Event], bool]) -> Callable[[str], bool]:
    return lambda line: (e := event_of(line)) is not None and pred(e)


def entry(event: Event | None, name: str) -> dict[str, object] | None:
    """The roster entry for the service instance ``name`` (a label), if listed."""
    full = f"{name}.{SERVICE_TYPE}".lower()
    for peer in peers(event):
        if str(peer["name"]).lower() == full:
            return peer
    return None


def node_argv(host: netns.Host, handle: str) -> list[str]:
    return host.exec_args(sys.executable, HELPER, "--handle", handle)


async def node_ready(node: avahi.Lines) -> Event:
    line = await node.wait_for(on_event(lambda e: e["event"] == "ready"), 20, "the node to start")
    event = event_of(line)
    assert event is not None
    return event


# --- avahi-browse's parsable output: pure -------------------------------------------------


def test_parse_browse_lines() -> None:
    new = avahi.parse_browse_line("+;eth0;IPv4;avahi\\032un\\.signed;_fedpeer._tcp;local")
    assert new == avahi.BrowseEvent("+", "eth0", "IPv4", "avahi un.signed", BROWSE_TYPE, "local")
    line = (
        "=;eth0;IPv4;alice-XUgz47rF;_fedpeer._tcp;local;fedpeer-r7.local;10.203.0.1;34713;"
        '"sig=asmI3_ke" "ns=" "say=a \\"quoted\\" \\\\ word" "flag" "did=did:key:z6Mkw7"'
    )
    ev = avahi.parse_browse_line(line)
    assert ev is not None
    assert (ev.kind, ev.name, ev.host_name, ev.address, ev.port) == (
        "=", "alice-XUgz47rF", "fedpeer-r7.local", "10.203.0.1", 34713,
    )  # fmt: skip
    assert ev.txt_dict() == {
        "sig": "asmI3_ke",
        "ns": "",
        "say": 'a "quoted" \\ word',
        "flag": "",
        "did": "did:key:z6Mkw7",
    }
    assert avahi.unescape("caf\\195\\169 \\\\ é") == "café \\ é"
    for junk in ("", "Failed to create client object: Daemon not running", "=;eth0;IPv4;x"):
        assert avahi.parse_browse_line(junk) is None


# --- Avahi in a namespace (e2e) --------------------------------------------------------------


@e2e
async def test_avahi_browse_sees_the_node_and_its_goodbye(
    lan2: netns.Lan, group: avahi.ProcessGroup, tmp_path: Path
) -> None:
    a_host, b_host = lan2.hosts
    env = {"PYTHONUNBUFFERED": "1"}
    node = await group.start("fedpeer node A", node_argv(a_host, "alice"), env)
    async with avahi.open_avahi(group, b_host, tmp_path) as daemon:
        argv = ["avahi-browse", "--parsable", "--resolve", "--no-db-lookup", BROWSE_TYPE]
        browse = await group.start("avahi-browse", daemon.client_args(*argv))
        did = str((await node_ready(node))["did"])
        line = await node.wait_for(
            on_event(lambda e: e["event"] == "discovery" and bool(e["txt"])), 20, "A to register"
        )
        registered = event_of(line)
        assert registered is not None
        announced = registered["txt"]
        assert isinstance(announced, dict)
        label = str(registered["instance"]).removesuffix(f".{SERVICE_TYPE}")

        def resolved(text: str) -> bool:
            ev = avahi.parse_browse_line(text)
            return ev is not None and ev.kind == "=" and ev.name == label

        seen = avahi.parse_browse_line(
            await browse.wait_for(resolved, 15, f"avahi-browse to resolve {label!r}")
        )
        assert seen is not None
        assert (seen.interface, seen.protocol, seen.service_type, seen.domain) == (
            "eth0",
            "IPv4",
            BROWSE_TYPE,
            "local",
        )
        assert seen.address == a_host.address
        assert seen.port == int(announced["port"])
        txt = seen.txt_dict()
        assert txt["did"] == did
        assert txt == announced  # every key and value, as the node signed them
        # Avahi passed the record through intact: its signature still verifies.
        ann = verify_txt(txt, now=time.time(), expected_did=did)
        assert (ann.handle, ann.port) == ("alice", seen.port)

        # A shuts down: its goodbye makes Avahi drop it at once (no TTL wait).
        mark = len(browse.lines)
        assert await node.stop() == 0
        assert any((e := event_of(x)) and e["event"] == "stopped" for x in node.lines)

        def removed(text: str) -> bool:
            ev = avahi.parse_browse_line(text)
            return ev is not None and ev.kind == "-" and ev.name == label

        # (10 s: far below the records' TTLs, 120 s and more, so only a goodbye does it.)
        await browse.wait_for(removed, 10, "Avahi to see A's goodbye", since=mark)


@e2e
async def test_node_sees_avahi_published_services(
    lan2: netns.Lan, group: avahi.ProcessGroup, tmp_path: Path
) -> None:
    a_host, b_host = lan2.hosts
    env = {"PYTHONUNBUFFERED": "1"}
    carol_key = SigningKey.from_seed(CAROL_SEED)
    node = await group.start("fedpeer node A", node_argv(a_host, "alice"), env)
    carol = await group.start(
        "plain node C", b_host.exec_args(sys.executable, "-c", PLAIN_NODE, CAROL_SEED.hex()), env
    )
    async with avahi.open_avahi(group, b_host, tmp_path) as daemon:
        did_a = str((await node_ready(node))["did"])
        assert did_a != carol_key.did
        port_line = await carol.wait_for(lambda s: s.startswith("port "), 20, "C to listen")
        carol_port, carol_pin = int(port_line.split()[1]), port_line.split()[2]

        async def publish(name: str, txt: dict[str, str], port: int) -> avahi.Lines:
            strings = [f"{k}={v}" for k, v in txt.items()]
            argv = daemon.client_args(
                "stdbuf", "-oL", "avahi-publish", "--service", name, BROWSE_TYPE, str(port),
                *strings,
            )  # fmt: skip
            pub = await group.start(f"avahi-publish {name!r}", argv)
            await pub.wait_for(
                lambda s: "Established under name" in s, 15, f"Avahi to publish {name!r}"
            )
            return pub

        # Unsigned, but claiming C's DID and pointing at C's real, reachable node.
        unsigned = {"v": "1", "did": carol_key.did, "handle": "carol-unsigned"}
        await publish("avahi unsigned", unsigned, carol_port)
        # What fedpeer itself would announce for C: signed by C's key.
        signed = sign_txt(
            carol_key, handle="carol", port=carol_port, capabilities=("sync",),
            seq=int(time.time() * 1000), tls_pin=carol_pin,
        )  # fmt: skip
        signed_pub = await publish("avahi signed", signed, carol_port)

        def judged(e: Event) -> bool:
            bad, good = entry(e, "avahi unsigned"), entry(e, "avahi signed")
            return (
                bad is not None
                and bad["status"] == "invalid"
                and good is not None
                and good["status"] == "verified"
            )

        event = event_of(await node.wait_for(on_event(judged), 20, "A to judge both services"))
        bad, good = entry(event, "avahi unsigned"), entry(event, "avahi signed")
        assert bad is not None
        assert good is not None
        # Seen: listed with what mDNS said (name, address, port, claimed identity)...
        assert bad["name"] == f"avahi unsigned.{SERVICE_TYPE}"
        assert bad["addresses"] == [b_host.address]
        assert bad["port"] == carol_port
        assert bad["did"] == carol_key.did
        assert bad["handle"] == "carol-unsigned"
        # ...but refused for the missing signature, before any connection.
        assert str(bad["reason"]).startswith("MALFORMED")
        assert "sig" in str(bad["reason"])
        assert bad["checked_at_ms"] is None
        # The signed one checked out against C's manifest at B's address.
        assert good["did"] == carol_key.did
        assert good["handle"] == "carol"
        assert good["addresses"] == [b_host.address]
        assert good["port"] == carol_port
        assert good["url"] == f"https://{b_host.address}:{carol_port}"
        assert good["capabilities"] == ["sync"]
        assert good["seq"] == int(signed["seq"])
        assert isinstance(good["checked_at_ms"], int)
        # Never, in any report, was the unsigned announcement anything but invalid.
        history = [p for line in node.lines if (p := entry(event_of(line), "avahi unsigned"))]
        assert history
        assert {p["status"] for p in history} == {"invalid"}
        # Avahi's own host record is not a fedpeer peer; A lists itself nowhere.
        assert all(p["did"] != did_a for line in node.lines for p in peers(event_of(line)))

        # avahi-publish ends: Avahi withdraws the service with a goodbye.
        mark = len(node.lines)
        await signed_pub.stop()
        await node.wait_for(
            on_event(lambda e: e["event"] == "discovery" and entry(e, "avahi signed") is None),
            10,
            "Avahi's goodbye to remove the signed service",
            since=mark,
        )
        assert await node.stop() == 0

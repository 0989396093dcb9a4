"""The embeddable node: ``async with fedpeer.open_node(...) as node``.

A node owns an identity (``node.key`` in the data dir), a store
(``store.sqlite3`` by default) and an HTTP server (hypercorn's trio worker)
running in a nursery that lives as long as the ``async with`` block. Leaving
the block shuts down cleanly: longpolls and streams end at once, the server
drains, the store closes. Several nodes can run in one process; there is no
global state.

Files in the data dir (a contract, other tools rely on these names):

- ``node.key``      the Ed25519 identity, mode 0600
- ``store.sqlite3`` the SQLite store (WAL)
- ``admin.token``   the admin bearer token minted on first start, mode 0600
- ``node.lock``     held (``flock``) while a node runs on the data dir, so a second
                    one fails with DATA_DIR_LOCKED naming the holder's PID
                    (:mod:`fedpeer._datadir`)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig

from .._datadir import DataDirLock, ensure_data_dir
from .._files import write_private
from ..consent import tokens
from ..consent.ratelimit import RateLimiter
from ..errors import DataDirError, KeyFileMissing
from ..identity.canonical import CID, dagcbor_decode
from ..identity.keys import SigningKey
from ..store import MemoryStore, SQLiteStore
from ..store.base import StateTx, Store
from ..sync._manager import PairManager
from ..sync._puller import SyncOptions
from ..sync.pairs import Pair, PairFilter
from ..sync.records import DEFAULT_LIMITS, Limits, SignedRecord, build_record
from ._config import NodeConfig
from ._invite_pairing import InvitePairing, pair_from_invite, reverse_pair_after_redeem
from ._pairing import PeerPageSource, create_pair
from ._startup import serve_reporting_bind_errors
from .app import AppState, build_app
from .discovery import Discovery
from .manifest import ManifestSigner

log = logging.getLogger("fedpeer.node")

KEY_FILE = "node.key"
STORE_FILE = "store.sqlite3"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name, not a secret)


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600."""
    write_private(path, text.encode())


def load_or_create_key(data_dir: Path) -> SigningKey:
    """Load ``data_dir/node.key``, creating the dir (0700) and a fresh key if absent.

    Raises DataDirError (the dir cannot be created), KeyFileError and subclasses."""
    ensure_data_dir(data_dir)
    path = data_dir / KEY_FILE
    try:
        return SigningKey.load(path)
    except KeyFileMissing:
        key = SigningKey.generate()
        key.save(path)
        log.info("created identity %s in %s", key.did, path)
        return key


@attrs.define(eq=False)
class Node:
    """A running node. Create it with :func:`open_node`.

    ``did``, ``url``, ``store`` and ``key`` are fixed for its lifetime;
    ``nursery`` runs the node's background tasks (server, pullers).
    ``discovery`` is the running mDNS :class:`~fedpeer.peer.discovery.Discovery`
    when ``config.discovery`` is on, else None.
    """

    key: SigningKey
    store: Store
    config: NodeConfig
    url: str
    urls: list[str]
    data_dir: Path | None
    nursery: trio.Nursery
    state: AppState
    pairs: PairManager
    http: httpx.AsyncClient
    _append_lock: trio.Lock = attrs.field(factory=trio.Lock)
    discovery: Discovery | None = None

    @property
    def did(self) -> str:
        """This node's did:key."""
        return self.key.did

    async def pair_with(
        self,
        peer_url: str,
        *,
        token: str | None,
        peer_did: str | None = None,
        filter: PairFilter | None = None,
        author_allowlist: Sequence[str] | None = None,
    ) -> Pair:
        """Pull from the node at ``peer_url`` (showing it ``token``); return the pair.

        Fetches and verifies the peer's manifest to learn its DID (which must be
        ``peer_did`` when given), refuses this node's own URL or DID (PAIR_SELF),
        then creates the pair and starts pulling; the same peer and filter again
        returns the existing pair. For two-way sync each side calls this for the
        other. Raises PairSelf, InvalidRequest, PeerUnreachable, DidMismatch,
        PeerInvalid, DidInvalid. Blocks on one HTTP request (at most 10 s).
        """
        pair, _created = await self.create_pair(
            peer_url,
            token=token,
            peer_did=peer_did,
            filter=filter,
            author_allowlist=author_allowlist,
        )
        return pair

    async def create_pair(
        self,
        peer_url: str,
        *,
        token: str | None,
        peer_did: str | None = None,
        filter: PairFilter | None = None,
        author_allowlist: Sequence[str] | None = None,
    ) -> tuple[Pair, bool]:
        """:meth:`pair_with`, also saying whether the pair is new (``POST /v1/sync/pairs``)."""
        return await create_pair(
            self.pairs,
            own_urls=self.urls,
            peer_url=peer_url,
            token=token,
            peer_did=peer_did,
            filter=filter,
            author_allowlist=author_allowlist,
        )

    async def pair_from_invite(
        self, invite_url: str, *, bidirectional: bool = True, label: str | None = None
    ) -> InvitePairing:
        """Redeem an invite from another node and set up sync with it.

        One-way: this node pulls from the issuer. Two-way (the default): this
        node also hands the issuer a read credential for itself, and the issuer
        creates the reverse pair during the redemption. Both sides get the same
        confirmation code (``result.confirmation_code``) for people to compare.
        See :func:`fedpeer.peer._invite_pairing.pair_from_invite` for the error
        codes. Blocks on a few HTTP requests to the issuer.
        """
        return await pair_from_invite(self, invite_url, bidirectional=bidirectional, label=label)

    @property
    def admin_token_path(self) -> Path | None:
        """Where the admin token was written (None for a node without a data dir)."""
        return None if self.data_dir is None else self.data_dir / ADMIN_TOKEN_FILE

    async def append(
        self,
        *,
        namespace: str,
        thread: str,
        kind: str,
        body: object,
        parents: Sequence[CID] = (),
    ) -> SignedRecord:
        """Build, sign and store a record authored by this node; return it.

        ``clock`` is a Lamport clock: one more than the largest of this node's
        last clock and the parents' clocks. Raises RecordInvalid,
        RecordTooLarge (limits), never stores a partial record.
        """
        async with self._append_lock:
            meta = await self.store.get_state("meta", "clock")
            clock = int(str(meta["value"])) if meta else 0
            if parents:
                for prow in await self.store.get_many([p.raw for p in parents]):
                    pmap = dagcbor_decode(prow.data)
                    if isinstance(pmap, dict) and isinstance(pmap.get("clock"), int):
                        clock = max(clock, int(pmap["clock"]))
            signed = build_record(
                self.key,
                namespace=namespace,
                thread=thread,
                kind=kind,
                body=body,
                parents=tuple(parents),
                clock=clock + 1,
                ts=int(time.time() * 1000),
                limits=self.state.limits,
            )
            new = signed.to_new()
            next_clock = clock + 1

            def commit(tx: StateTx) -> None:
                tx.put_records([new])
                tx.put("meta", "clock", {"value": next_clock})

            await self.store.transact(commit)
            return signed


async def _serve(
    app: object,
    host: str,
    port: int,
    cfg: NodeConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    hconf = HypercornConfig()
    hconf.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconf.graceful_timeout = cfg.graceful_timeout_s
    hconf.accesslog = None
    hconf.errorlog = logging.getLogger("fedpeer.hypercorn")
    hconf.keep_alive_timeout = 75
    hconf.h11_max_incomplete_size = 64 * 1024
    await serve_reporting_bind_errors(app, hconf, shutdown, task_status, f"{host}:{port}")


@contextlib.asynccontextmanager
async def open_node(
    data_dir: str | os.PathLike[str] | None = None,
    store: Store | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    config: NodeConfig | None = None,
    key: SigningKey | None = None,
    limits: Limits = DEFAULT_LIMITS,
    sync: SyncOptions | None = None,
) -> AsyncIterator[Node]:
    """Start a node for the duration of the ``async with`` block.

    ``data_dir`` holds the identity, the SQLite store and the admin token; with
    ``data_dir=None`` the node is ephemeral (fresh key, MemoryStore unless a
    ``store`` is given). A ``store`` passed in is used as is and not closed.
    ``port=0`` picks a free port; ``node.url`` tells which.

    On a fresh data dir the node mints an admin service account bound to its
    own DID and writes the token to ``admin.token`` (mode 0600), unless
    ``config.write_admin_token_file`` is False: then
    ``POST /v1/bootstrap/service-account`` mints it once.

    ``sync`` tunes the pullers (:class:`~fedpeer.sync._puller.SyncOptions`);
    the stored pairs start pulling as the node starts (``node.pairs``).

    A node with a ``data_dir`` holds its lock (``node.lock``) while it runs: a
    second node on the same data dir, in this process or another, fails with
    DataDirLocked naming the holder's PID.

    Start-up errors name their cause: DataDirLocked / DataDirError (the data
    dir), KeyFileInsecure / KeyFileError (the key file), StoreCorrupt /
    SchemaTooNew / StoreFull / StoreError (the store), StartFailed (the port
    cannot be bound). They may arrive wrapped in an exception group.
    """
    cfg = config or NodeConfig()
    ddir = None if data_dir is None else Path(data_dir)
    lock = None
    if ddir is not None:
        with trio.CancelScope(shield=True):  # a lock taken must never be dropped unreleased
            lock = await trio.to_thread.run_sync(DataDirLock.acquire, ddir)
    owned_store = store is None
    try:
        if key is None:
            key = (
                SigningKey.generate()
                if ddir is None
                else await trio.to_thread.run_sync(load_or_create_key, ddir)
            )
        if store is None:
            store = MemoryStore() if ddir is None else await SQLiteStore.open(ddir / STORE_FILE)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        if ddir is not None and cfg.write_admin_token_file:
            await _ensure_admin_token(store, key.did, ddir)
        state = AppState(
            key=key,
            store=store,
            config=cfg,
            limits=limits,
            rate_limiter=RateLimiter(cfg.rate_per_s, cfg.rate_burst),
            signer=ManifestSigner(key, cfg.manifest_ttl_s, cfg.manifest_resign_after_s),
            append=_unbound_append,
        )
        app = build_app(state)
        shutdown = trio.Event()
        sync_opts = sync or SyncOptions()
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        async with http, trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(_serve, app, host, port, cfg, shutdown)
            state.urls = list(urls)
            pairs = PairManager(
                store,
                local_did=key.did,
                source=PeerPageSource(http, longpoll_s=sync_opts.longpoll_s, limits=limits),
                limits=limits,
                options=sync_opts,
            )
            node = Node(
                key=key,
                store=store,
                config=cfg,
                url=urls[0],
                urls=list(urls),
                data_dir=ddir,
                nursery=nursery,
                state=state,
                pairs=pairs,
                http=http,
            )
            state.append = node.append
            log.info("node %s serving at %s", key.did, node.url)
            state.extra["pairs"] = pairs
            state.extra["create_pair"] = node.create_pair
            state.extra["health"] = pairs.health_summary
            state.extra["reverse_pair"] = functools.partial(reverse_pair_after_redeem, node)
            state.extra["pair_from_invite"] = node.pair_from_invite
            await nursery.start(pairs.run)
            if cfg.discovery:
                # mDNS trouble never stops the node: run() reports started at
                # once and retries in the background; it ends on state.closing.
                node.discovery = Discovery.for_node(key, cfg, url=node.url, bind_host=host)
                state.extra["discovery"] = node.discovery
                await nursery.start(functools.partial(node.discovery.run, stop=state.closing))
            try:
                yield node
            finally:
                pairs.stop()
                state.closing.set()
                shutdown.set()
                # Backstop: the server drains within graceful_timeout; never hang.
                nursery.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout_s + 3
    finally:
        if owned_store:
            with trio.CancelScope(shield=True):
                await store.aclose()
        if lock is not None:
            lock.release()


async def _unbound_append(**_kw: object) -> SignedRecord:
    raise RuntimeError("node is not started")


async def _ensure_admin_token(store: Store, did: str, data_dir: Path) -> None:
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return
    now = int(time.time() * 1000)

    def boot(tx: StateTx) -> str | None:
        if tokens.is_bootstrapped(tx):
            return None
        _sa, issued = tokens.bootstrap_admin(tx, did, now)
        return issued.bearer

    # Write the file before the transaction commits would need two-phase I/O;
    # instead mint, commit, then write. If the write fails the owner can still
    # rotate the key through the CLI's local mode.
    plaintext = await store.transact(boot)
    if plaintext is None:
        log.warning(
            "%s is missing but the admin account exists; rotate it with "
            "`fedpeer token rotate-admin`",
            path,
        )
        return
    try:
        await trio.to_thread.run_sync(_write_secret, path, plaintext + "\n")
    except OSError as exc:
        raise DataDirError(
            f"cannot write the admin token to {path}: {exc.strerror or exc}; make room (or "
            "fix the permissions), then `fedpeer token rotate-admin` writes a new one"
        ) from exc
    log.info("wrote the admin token to %s", path)

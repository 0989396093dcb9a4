"""The embeddable node: ``async with fedpeer.open_node(...) as node``.

A node owns an identity (``node.key`` in the data dir), a store
(``store.sqlite3`` by default) and an HTTP server (hypercorn) running in a task
group that lives as long as the ``async with`` block. It runs on anyio: under
``trio.run`` (the default, first-class) and under ``asyncio.run`` alike. Leaving
the block shuts down cleanly: longpolls and streams end at once, the server
drains, the store closes. Several nodes can run in one process; there is no
global state.

The node's use cases are its services (the application layer, also reachable
over HTTP with the same method names through
:class:`~fedpeer.peer.admin.AdminClient`): ``node.records``, ``node.invites``,
``node.grants``, ``node.tokens`` and ``node.pairs``.

Files in the data dir (a contract, other tools rely on these names):

- ``node.key``      the Ed25519 identity, mode 0600
- ``store.sqlite3`` the SQLite store (WAL)
- ``admin.token``   the admin bearer token minted on first start, mode 0600
- ``node.lock``     held (``flock``) while a node runs on the data dir, so a second
                    one fails with DATA_DIR_LOCKED naming the holder's PID
                    (:mod:`fedpeer._datadir`)
- ``tls.key``       the TLS private key (P-256, PKCS#8 PEM), mode 0600, made on first
                    start of a node serving HTTPS
- ``tls.crt``       its self-signed certificate (PEM), mode 0600; its SPKI hash is
                    ``tls_spki_sha256`` in the signed manifest (docs/protocol.md §6.6)
- ``tls.next.key``, ``tls.next.crt``  an announced next certificate during a rotation
                    (:class:`~fedpeer.peer.tls.TlsIdentity`)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import anyio.abc
import attrs
import httpx
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import repr_socket_addr, wrap_app

from .._aio import backend_name
from .._clock import now_ms
from .._datadir import DataDirLock, ensure_data_dir
from .._files import write_private
from ..consent import tokens
from ..consent.scopes import parse_scopes
from ..errors import ConfigInvalid, DataDirError, KeyFileMissing, StartFailed
from ..identity.canonical import CID
from ..identity.keys import SigningKey
from ..store import MemoryStore, SQLiteStore
from ..store.base import StateTx, Store
from ..sync.manager import PairManager
from ..sync.options import SyncOptions
from ..sync.pairs import Pair, PairFilter
from ..sync.records import DEFAULT_LIMITS, Limits, SignedRecord
from ._config import NodeConfig
from ._netwatch import watch_network
from ._pairing import PeerPageSource
from ._pinning import PeerVerifier
from ._serve import OpenConnections, connections_budget, open_files_limit, serve
from ._state import AppState
from ._transport import new_http_client
from .addresses import is_loopback_host
from .app import build_app
from .discovery import Discovery
from .services import (
    GrantService,
    InvitePairing,
    InviteService,
    NodeCore,
    PairService,
    RecordService,
    TokenService,
)
from .tls import TlsIdentity

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
        pass
    key = SigningKey.generate()
    try:
        key.save(path, exclusive=True)
    except FileExistsError:
        # another process (a second `fedpeer run` or `init` starting at the same
        # instant) created it since we looked: that key is the node's identity
        return SigningKey.load(path)
    log.info("created identity %s in %s", key.did, path)
    return key


@attrs.define(eq=False)
class Node:
    """A running node. Create it with :func:`open_node`.

    Its services: ``records`` (append, ingest, get, list, threads), ``invites``,
    ``grants``, ``tokens`` and ``pairs``. ``did``, ``url``, ``store`` and ``key``
    are fixed for its lifetime; ``task_group`` runs the node's background tasks
    (server, pullers, discovery). ``admin_token`` is the admin bearer minted on
    first start (read from ``admin.token`` for a node with a data dir; kept in
    memory for an ephemeral one), for HTTP clients of this node. ``connections``
    counts the server's open connections per address and in all (for
    monitoring; :class:`~fedpeer.peer._serve.OpenConnections`).
    """

    state: AppState
    url: str
    urls: list[str]
    data_dir: Path | None
    task_group: anyio.abc.TaskGroup
    connections: OpenConnections
    admin_token: str | None = attrs.field(default=None, repr=False)

    @property
    def core(self) -> NodeCore:
        """What the services share (key, store, config, limits, URLs, HTTP client)."""
        return self.state.core

    @property
    def key(self) -> SigningKey:
        """The node's signing key."""
        return self.state.core.key

    @property
    def store(self) -> Store:
        """The node's store."""
        return self.state.core.store

    @property
    def config(self) -> NodeConfig:
        """The node's configuration."""
        return self.state.core.config

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client the node uses for other nodes (closed when the node stops)."""
        assert self.state.core.http is not None
        return self.state.core.http

    @property
    def did(self) -> str:
        """This node's did:key."""
        return self.key.did

    @property
    def tls(self) -> TlsIdentity | None:
        """The TLS certificate the node serves (None: plain HTTP). Its ``pins``
        are in the signed manifest; ``announce_next()`` / ``activate_next()``
        rotate it (see :mod:`fedpeer.peer.tls`)."""
        return self.state.core.tls

    def announce_next_tls(self) -> str:
        """Rotation step 1: create the next certificate and announce its pin in the
        (re-signed) manifest before it is served; return the new pin.
        CONFIG_INVALID for a node serving plain HTTP. Blocking file I/O (small)."""
        return self._require_tls().announce_next().pin

    def activate_next_tls(self) -> str:
        """Rotation step 2: serve the announced certificate for new connections
        (open ones keep theirs); return its pin. CONFIG_INVALID when none was
        announced or the node serves plain HTTP."""
        return self._require_tls().activate_next().pin

    def _require_tls(self) -> TlsIdentity:
        if self.state.core.tls is None:
            raise ConfigInvalid("this node serves plain HTTP: there is no certificate to rotate")
        return self.state.core.tls

    @property
    def records(self) -> RecordService:
        """The node's records: append, ingest, get, list, threads."""
        return self.state.records

    @property
    def invites(self) -> InviteService:
        """Invites this node issues: create, list, preview, revoke, audit, redeem."""
        return self.state.invites

    @property
    def grants(self) -> GrantService:
        """Who may read what: list, create, delete, and the consent view."""
        return self.state.grants

    @property
    def tokens(self) -> TokenService:
        """Service accounts and bearer tokens."""
        return self.state.tokens

    @property
    def pairs(self) -> PairService:
        """Sync pairs: create, pair from an invite, pause, resume, kick, stats, health."""
        assert self.state.pairs is not None
        return self.state.pairs

    @property
    def discovery(self) -> Discovery | None:
        """The running mDNS :class:`~fedpeer.peer.discovery.Discovery` when
        ``config.discovery`` is on, else None."""
        return self.state.discovery

    @property
    def nursery(self) -> anyio.abc.TaskGroup:
        """Alias of :attr:`task_group` (``await node.nursery.start(...)``)."""
        return self.task_group

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

        Same as ``(await node.pairs.create(...))[0]``; see
        :meth:`PairService.create` for the checks and error codes. For two-way
        sync each side calls this for the other (or use :meth:`pair_from_invite`).
        """
        pair, _created = await self.pairs.create(
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
        """:meth:`pair_with`, also saying whether the pair is new (= ``node.pairs.create``)."""
        return await self.pairs.create(
            peer_url,
            token=token,
            peer_did=peer_did,
            filter=filter,
            author_allowlist=author_allowlist,
        )

    async def pair_from_invite(
        self, invite_url: str, *, bidirectional: bool = True, label: str | None = None
    ) -> InvitePairing:
        """Redeem an invite from another node and set up sync with it (=
        ``node.pairs.from_invite``). Both sides get the same confirmation code
        (``result.confirmation_code``) for people to compare."""
        return await self.pairs.from_invite(invite_url, bidirectional=bidirectional, label=label)

    @property
    def admin_token_path(self) -> Path | None:
        """Where the admin token file is (None for a node without a data dir: use
        :attr:`admin_token`, which both kinds of node have)."""
        return None if self.data_dir is None else self.data_dir / ADMIN_TOKEN_FILE

    async def append(
        self,
        *,
        namespace: str,
        thread: str,
        kind: str,
        body: object,
        parents: Sequence[CID | str] = (),
    ) -> SignedRecord:
        """Build, sign and store a record authored by this node; return it.

        ``node.records.append`` with the same arguments, returning the
        :class:`SignedRecord` (without the local seq).
        """
        entry = await self.records.append(
            namespace=namespace, thread=thread, kind=kind, body=body, parents=parents
        )
        return entry.signed


# --- serving --------------------------------------------------------------------------


class _HypercornConfig(HypercornConfig):
    """Hypercorn's config serving the node's :class:`TlsIdentity` (the files when
    there is a data dir, the same key pair in memory otherwise), through one
    context that a certificate rotation updates in place."""

    tls: TlsIdentity | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.tls is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.server_context()


def _bind(
    host: str, port: int, cfg: NodeConfig, tls: TlsIdentity | None = None
) -> tuple[HypercornConfig, Sockets, list[str]]:
    """Hypercorn's config and its listening sockets, bound now (StartFailed naming
    the address when the port is taken), so the URLs are known before the server
    runs, on any backend. With ``tls`` the sockets serve HTTPS."""
    hconf = _HypercornConfig()
    hconf.tls = tls
    hconf.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconf.graceful_timeout = cfg.graceful_timeout_s
    hconf.accesslog = None
    hconf.errorlog = logging.getLogger("fedpeer.hypercorn")
    # A connection's idle timer runs from accept until a request head is complete
    # (and again between requests), so this is also the header timeout: a client
    # that trickles its request head is dropped after it (issue 10). Bodies are
    # timed by the app (body_timeout_s); hypercorn's read_timeout is per read and
    # would also end idle longpolls and streams, so it stays unset.
    hconf.keep_alive_timeout = cfg.header_timeout_s
    # The TLS handshake comes before the head and has its own timer (60 s unless
    # set): a client trickling its handshake is dropped after the header timeout too.
    hconf.ssl_handshake_timeout = cfg.header_timeout_s
    hconf.h11_max_incomplete_size = 64 * 1024
    try:
        sockets = hconf.create_sockets()
    except OSError as exc:
        raise StartFailed(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another "
            "node using that port? (pick another port)"
        ) from exc
    urls: list[str] = []
    listening = [(s, "https") for s in sockets.secure_sockets] + [
        (s, "http") for s in sockets.insecure_sockets
    ]
    try:
        for sock, scheme in listening:
            sock.listen(hconf.backlog)
            urls.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
    except BaseException:
        for sock, _scheme in listening:
            sock.close()
        raise
    return hconf, sockets, urls


@attrs.define(eq=False)
class _Server:
    """The running HTTP server's cancel scope, for a bounded graceful stop."""

    scope: anyio.CancelScope | None = None

    def stop_within(self, seconds: float) -> None:
        """Let the server drain, but end it after ``seconds`` whatever it does."""
        if self.scope is not None:
            self.scope.deadline = anyio.current_time() + seconds


async def _serve(
    app: object,
    hconf: HypercornConfig,
    sockets: Sockets,
    shutdown: anyio.Event,
    server: _Server,
    conns: OpenConnections,
) -> None:
    """Run the server (:func:`fedpeer.peer._serve.serve`) until ``shutdown`` is set.

    On asyncio it runs shielded from outer cancellation (a cancel in the middle of
    the graceful stop would leave connections behind); it stops through
    ``shutdown``, bounded by :meth:`_Server.stop_within`.
    """
    wrapped = wrap_app(app, hconf.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    with anyio.CancelScope(shield=backend_name() != "trio") as scope:
        server.scope = scope
        await serve(wrapped, hconf, sockets, shutdown, conns)


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
    """Start a node for the duration of the ``async with`` block (trio or asyncio).

    ``data_dir`` holds the identity, the SQLite store and the admin token; with
    ``data_dir=None`` the node is ephemeral (fresh key, MemoryStore unless a
    ``store`` is given). A ``store`` passed in is used as is and not closed.
    ``port=0`` picks a free port; ``node.url`` tells which.

    The node has an admin service account bound to its own DID, whose token is
    ``node.admin_token``: with a data dir, minted on first start and written to
    ``admin.token`` (mode 0600); without one, minted for this run and kept in
    memory only. With ``config.write_admin_token_file`` False a data-dir node
    mints nothing: ``POST /v1/bootstrap/service-account`` mints it once.

    ``sync`` tunes the pullers (:class:`~fedpeer.sync.SyncOptions`); the stored
    pairs start pulling as the node starts (``node.pairs``).

    HTTPS (``config.tls``, default: unless ``host`` is loopback): the node serves
    its self-signed certificate (``tls.key``/``tls.crt`` in the data dir, made on
    first start; in memory for an ephemeral node), whose pin its signed manifest
    carries; ``node.url`` is then ``https://``. Plain HTTP off loopback needs
    ``config.insecure_http`` (CONFIG_INVALID otherwise) and is logged as a
    warning. Every pull first proves the peer's DID (docs/protocol.md §6.6).

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
    use_tls = cfg.tls if cfg.tls is not None else not is_loopback_host(host)
    if not use_tls and not is_loopback_host(host) and not cfg.insecure_http:
        raise ConfigInvalid(
            f"plain HTTP on {host} would carry bearer tokens and records readable by anyone "
            "on the network: serve HTTPS (the default), listen on 127.0.0.1, or pass "
            "insecure_http=True (`--insecure-http`) if you really mean it"
        )
    async with contextlib.AsyncExitStack() as stack:
        # Everything taken at start is given back on every path, in reverse order:
        # the lock last, once the store is closed.
        if ddir is not None:
            with anyio.CancelScope(shield=True):  # a lock taken must never be dropped unreleased
                lock = await anyio.to_thread.run_sync(DataDirLock.acquire, ddir)
            stack.callback(lock.release)
        if key is None:
            key = (
                SigningKey.generate()
                if ddir is None
                else await anyio.to_thread.run_sync(load_or_create_key, ddir)
            )
        if store is None:
            store = (
                MemoryStore()
                if ddir is None
                else await SQLiteStore.open(
                    ddir / STORE_FILE, min_free_percent=cfg.min_free_disk_percent
                )
            )
            stack.push_async_callback(_close_shielded, store)
        tls = (
            await anyio.to_thread.run_sync(TlsIdentity.load_or_create, key.did, ddir)
            if use_tls
            else None
        )
        admin_token: str | None = None
        if cfg.write_admin_token_file or ddir is None:
            admin_token = await _ensure_admin_token(store, key.did, ddir)
        hconf, sockets, urls = _bind(host, port, cfg, tls)
        if tls is None and not is_loopback_host(host):
            log.warning(
                "INSECURE: serving plain HTTP on %s (--insecure-http): bearer tokens, invite "
                "secrets and records cross the network readable by anyone on it",
                host,
            )
        sync_opts = sync or SyncOptions()
        http = await stack.enter_async_context(new_http_client(timeout=30.0, connect_timeout=10.0))
        core = NodeCore(
            key=key, store=store, config=cfg, limits=limits, urls=list(urls), http=http, tls=tls
        )
        manager = PairManager(
            store,
            local_did=key.did,
            source=PeerPageSource(
                http,
                longpoll_s=sync_opts.longpoll_s,
                limits=limits,
                verifier=PeerVerifier(http),
                max_page_bytes=cfg.pull_max_page_bytes,
                page_deadline_s=cfg.pull_page_deadline_s,
            ),
            limits=limits,
            options=sync_opts,
        )
        state = AppState.create(core, pairs=PairService(core, manager))
        state.invites.attach_pairs(state.pairs)  # type: ignore[arg-type]
        app = build_app(state)
        shutdown = anyio.Event()
        server = _Server()
        async with anyio.create_task_group() as tg:
            files = open_files_limit()
            total_cap = connections_budget(cfg.max_open_conns, files)
            if total_cap < cfg.max_open_conns:
                log.info(
                    "at most %d open connections in all (max_open_conns %d, but only "
                    "%s file descriptors: raise `ulimit -n`)",
                    total_cap,
                    cfg.max_open_conns,
                    files,
                )
            conns = OpenConnections(cfg.max_open_conns_per_ip, total_cap)
            tg.start_soon(_serve, app, hconf, sockets, shutdown, server, conns)
            try:
                node = Node(
                    state=state,
                    url=urls[0],
                    urls=list(urls),
                    data_dir=ddir,
                    task_group=tg,
                    admin_token=admin_token,
                    connections=conns,
                )
                log.info("node %s serving at %s", key.did, node.url)
                await tg.start(manager.run)
                if cfg.watch_network:
                    tg.start_soon(
                        functools.partial(
                            watch_network,
                            lambda _what: manager.wake(None, reason="network"),
                            stop=core.closing,
                        )
                    )
                if cfg.discovery:
                    # mDNS trouble never stops the node: run() reports started at
                    # once and retries in the background; it ends on core.closing.
                    pin = None if tls is None else (lambda: tls.current.pin)
                    state.discovery = Discovery.for_node(
                        key, cfg, url=node.url, bind_host=host, tls_pin=pin
                    )
                    state.discovery.on_seen = lambda did: state.peer_seen(did, "mdns")
                    await tg.start(functools.partial(state.discovery.run, stop=core.closing))
                yield node
            finally:
                manager.stop()
                core.closing.set()
                shutdown.set()
                # Backstop: the server drains within graceful_timeout; never hang.
                server.stop_within(cfg.graceful_timeout_s + 3)
                tg.cancel_scope.deadline = anyio.current_time() + cfg.graceful_timeout_s + 3


async def _close_shielded(store: Store) -> None:
    """Close a store the node opened, also when the node stops by cancellation."""
    with anyio.CancelScope(shield=True):
        await store.aclose()


def _read_admin_token(path: Path) -> str:
    """The admin token file's text; a warning when others may read it (the token
    is full control of the node over HTTP, like the key file, which is refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = os.fstat(f.fileno()).st_mode
        if os.name == "posix" and mode & 0o077:
            log.warning(
                "the admin token file %s is accessible by other users (mode %04o): "
                "run `chmod 600 %s` and rotate the token if others could read it",
                path,
                mode & 0o7777,
                path,
            )
        return f.read(4096)


async def _ensure_admin_token(store: Store, did: str, data_dir: Path | None) -> str | None:
    """The admin bearer of this node.

    With a data dir: the bootstrap admin account, minted into a fresh store and
    written to ``admin.token``, else read from that file (None when the file is
    lost: ``fedpeer token rotate-admin`` replaces it). Without one: an admin
    account minted for this run, its token kept in memory only (the one-shot
    bootstrap route stays open).
    """
    if data_dir is None:
        sa_name = "admin (in memory)"

        def mint(tx: StateTx) -> str:
            _sa, issued = tokens.create_service_account(
                tx, name=sa_name, holder_did=did, scopes=parse_scopes(["admin"]), origin="api"
            )
            return issued.bearer

        return await store.transact(mint)
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        text = await anyio.to_thread.run_sync(_read_admin_token, path)
        return text.strip() or None
    now = now_ms()

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
        return None
    try:
        await anyio.to_thread.run_sync(_write_secret, path, plaintext + "\n")
    except OSError as exc:
        raise DataDirError(
            f"cannot write the admin token to {path}: {exc.strerror or exc}; make room (or "
            "fix the permissions), then `fedpeer token rotate-admin` writes a new one"
        ) from exc
    log.info("wrote the admin token to %s", path)
    return plaintext


async def rotate_admin_token(data_dir: str | os.PathLike[str]) -> Path:
    """Mint a new admin token into ``<data_dir>/admin.token`` (mode 0600), straight
    on the store, also when the token file was lost; the old admin token stops
    working. Return the file's path.

    Raises CONFIG_INVALID when the data dir has no store yet or its store has no
    admin account (start the node once), and the store's errors. Do it while the
    node is stopped, or use the admin API (``tokens.rotate``) while it runs.
    """
    ddir = Path(data_dir)
    store_path = ddir / STORE_FILE
    if not store_path.exists():
        raise ConfigInvalid(
            f"no store at {store_path}: start the node once (`fedpeer run`); it writes "
            "the admin token itself"
        )
    store = await SQLiteStore.open(store_path)
    try:

        def rotate(tx: StateTx) -> str:
            boot = tx.get(tokens.META_TABLE, tokens.BOOTSTRAP_META_KEY)
            if boot is None or not isinstance(boot.get("sa_id"), str):
                raise ConfigInvalid(
                    "this store has no admin account yet: start the node (`fedpeer run`)"
                )
            return tokens.rotate_key(tx, str(boot["sa_id"])).bearer

        bearer = await store.transact(rotate)
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
    path = ddir / ADMIN_TOKEN_FILE
    await anyio.to_thread.run_sync(_write_secret, path, bearer + "\n")
    return path

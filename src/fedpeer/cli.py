"""The ``fedpeer`` command: node runner and operator commands.

``fedpeer run`` runs a node in the foreground. The other commands talk to that
running node over its HTTP API with the admin token from the data dir
(``admin.token``; ``$FEDPEER_TOKEN`` overrides it). They find the node at
``--url``, else ``$FEDPEER_URL`` / ``url`` in ``fedpeer.toml``, else the
``node.url`` file that ``run`` writes while it serves. ``init``, ``id``,
``token rotate-admin`` and ``doctor`` work on the data dir directly.

Configuration: ``<data_dir>/fedpeer.toml``, ``FEDPEER_*`` environment
variables, flags, in rising precedence (:mod:`fedpeer._cli_config`).

Exit codes (stable):

- 0  success
- 1  a fedpeer error (the line printed says ``CODE: what to do``)
- 2  bad usage: unknown command or option, bad option or argument value (click's own)
- 3  the node could not start (port in use: ``START_FAILED``; bad key file:
     ``KEY_FILE_*``; store cannot be opened: ``STORE_*``; data dir unusable:
     ``DATA_DIR_ERROR``; bad config: ``CONFIG_INVALID``)
- 4  the node is not running (``NODE_NOT_RUNNING``: nothing answers at its URL)
- 5  ``doctor`` found a problem (each failed check says how to fix it)
- 6  a bounded wait ran out (``TIMED_OUT``, e.g. ``pair --timeout``); the work may
     still complete in the node
- 7  ``run``: another node is running on this data dir (``DATA_DIR_LOCKED``, naming
     its PID); stop it or pick another ``--data-dir``
- 130 interrupted (Ctrl-C)

Errors are printed as ``CODE: message`` on stderr, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

import attrs
import click
import httpx
import trio

from ._cli_config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Settings,
    admin_token,
    check_handle,
    default_handle,
    load_settings,
    loopback_url,
    node_url,
    remove_node_url,
    save_handle,
    write_node_url,
)
from ._files import write_private
from ._netutil import is_loopback_host as _is_loopback_host
from ._netutil import is_wildcard as _is_wildcard
from ._netutil import with_host as _with_host
from .errors import (
    AuthRequired,
    ConfigInvalid,
    DataDirLocked,
    FedpeerError,
    NodeNotRunning,
    PairSelf,
    PeerError,
    TimedOut,
    TokenInvalid,
    error_from_code,
)

if TYPE_CHECKING:
    from .sync._puller import SyncOptions

__all__ = [
    "DEFAULT_PORT",
    "EXIT_DOCTOR",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_START",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "cli",
    "default_data_dir",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_START = 3
EXIT_NOT_RUNNING = 4
EXIT_DOCTOR = 5
EXIT_TIMEOUT = 6
EXIT_LOCKED = 7
EXIT_INTERRUPTED = 130

T = TypeVar("T")
Json = dict[str, Any]

_NAME_RE = re.compile(r"^[A-Za-z0-9._:@/+-]{1,256}$")  # record names (sync.records.NAME_PATTERN)


def default_data_dir() -> Path:
    """``$FEDPEER_DATA_DIR``, else the platform's user data dir for fedpeer."""
    env = os.environ.get("FEDPEER_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("fedpeer"))


# --- errors and running async code -----------------------------------------------------


def exit_code_for(err: FedpeerError) -> int:
    """The exit code of a command that failed with ``err``."""
    if isinstance(err, NodeNotRunning):
        return EXIT_NOT_RUNNING
    if isinstance(err, TimedOut):
        return EXIT_TIMEOUT
    return EXIT_ERROR


def fail(err: FedpeerError, code: int | None = None) -> NoReturn:
    """Print ``CODE: message`` on stderr and exit (default code: :func:`exit_code_for`)."""
    click.echo(f"{err.code}: {err.message}", err=True)
    sys.exit(exit_code_for(err) if code is None else code)


def _leaf(exc: BaseException) -> BaseException:
    """The most telling exception inside (possibly nested) exception groups."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    for _ in range(10_000):  # bounded walk of the group tree
        if not stack:
            break
        item = stack.pop(0)
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    for kind in (FedpeerError, KeyboardInterrupt, OSError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``; a FedpeerError ends the command with ``CODE: message`` and
    the exit code of :func:`exit_code_for`, Ctrl-C with 130."""
    try:
        return trio.run(fn)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, FedpeerError):
            fail(leaf)
        if isinstance(leaf, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if leaf is not exc:
            raise leaf from exc
        raise


# --- context ---------------------------------------------------------------------------


class Ctx:
    """The click context object: data dir, ``--url`` and the merged settings."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = data_dir
        self.url_flag = url
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """``fedpeer.toml`` + ``FEDPEER_*`` (raises ConfigInvalid)."""
        if self._settings is None:
            self._settings = load_settings(self.data_dir)
        return self._settings

    def api(self) -> NodeApi:
        """A client for the running node's admin API (raises NodeNotRunning,
        AuthRequired, ConfigInvalid before any network use)."""
        url, source = node_url(self.settings, self.url_flag)
        return NodeApi(url, admin_token(self.data_dir), source=source, data_dir=self.data_dir)


class NodeApi:
    """The local node's admin API over httpx, with CLI-friendly errors.

    Transport failures become NodeNotRunning (saying where the URL came from);
    error answers become the server's FedpeerError; a refused token says which
    token was used.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        source: str,
        data_dir: Path,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.source = source
        self.data_dir = data_dir
        self.timeout = timeout
        self.last_status = 0
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def __aenter__(self) -> NodeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    def _not_running(self, exc: httpx.TransportError) -> NodeNotRunning:
        start = f"start it with `fedpeer --data-dir {self.data_dir} run`"
        if isinstance(exc, httpx.TimeoutException):
            return NodeNotRunning(
                f"the node at {self.url} (from {self.source}) did not answer within "
                f"{self.timeout:g} s; is it overloaded or stuck? check its log"
            )
        stale = ""
        if self.source.endswith("node.url"):
            stale = " (node.url is left over from a node that did not stop cleanly)"
        return NodeNotRunning(
            f"nothing answers at {self.url} (from {self.source}){stale}: {start}, or pass --url"
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        timeout: float | None = None,
    ) -> Json:
        """One request; the decoded JSON object answer.

        Raises NodeNotRunning, the server's FedpeerError, PeerError for an
        answer that is not a JSON object. Cancellable.
        """
        from .peer.client import raise_for_error

        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = await self._http.request(
                method, self.url + path, params=params or {}, **kwargs
            )
        except httpx.TransportError as exc:
            raise self._not_running(exc) from None
        except httpx.InvalidURL as exc:
            raise ConfigInvalid(f"bad node URL {self.url!r} (from {self.source}): {exc}") from None
        self.last_status = response.status_code
        try:
            raise_for_error(response)
        except (TokenInvalid, AuthRequired) as err:
            hint = (
                f"; the admin token (from $FEDPEER_TOKEN or {self.data_dir}/admin.token) was "
                f"refused by {self.url}: is that the node of this data dir? A lost token is "
                "replaced with `fedpeer token rotate-admin`"
            )
            raise type(err)(err.message + hint) from None
        try:
            value = response.json()
        except ValueError:
            raise PeerError(f"{self.url}{path} did not answer with JSON") from None
        if not isinstance(value, dict):
            raise PeerError(f"{self.url}{path} did not answer with a JSON object")
        return value


def _json_out(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _console() -> Any:
    from rich.console import Console

    # Piped output (scripts, tests) gets long lines instead of wrapped cells.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, soft_wrap=False, emoji=False, markup=False, width=width)


def _short_did(did: object) -> str:
    text = str(did or "")
    if text.startswith("did:key:") and len(text) > 24:
        return f"{text[:12]}…{text[-6:]}"
    return text


def _when(ms: object) -> str:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _ago(ms: object, now_ms: int | None = None) -> str:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "-"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, (now - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _link(value: object) -> str:
    """A DAG-JSON link ``{"/": "bafy..."}`` (or a plain string) as text."""
    if isinstance(value, dict) and isinstance(value.get("/"), str):
        return str(value["/"])
    return str(value)


# --- parameter types -----------------------------------------------------------------


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``10m``, ``2h``, ``7d`` or ``1w``: whole seconds."""

    name = "duration"
    _UNITS: ClassVar[dict[str, int]] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw]?)\s*", str(value).lower())
        if not m or int(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration like 90s, 10m, 2h or 7d", param, ctx)
        return int(m.group(1)) * self._UNITS[m.group(2)]


class Scopes(click.ParamType):  # type: ignore[type-arg]
    """Comma-separated scope or preset names, validated like the node does."""

    name = "scopes"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[str]:
        from .consent.scopes import parse_scopes

        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            parse_scopes(names)
        except FedpeerError as err:
            self.fail(f"{err.message} (got {value!r})", param, ctx)
        return names


def _name_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (not _NAME_RE.match(value) or value.startswith("/")):
        raise click.BadParameter(
            "names are 1..256 characters of A-Z a-z 0-9 . _ : @ / + - (not starting with /)"
        )
    return value


def _handle_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_handle(value)
    except ConfigInvalid as err:
        raise click.BadParameter(err.message) from None


def _url_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http(s) URL like http://10.0.0.5:8765")
    return value.rstrip("/")


def _invite_url_cb(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .consent.invites import parse_invite_url

    try:
        parse_invite_url(value)
    except FedpeerError as err:
        raise click.BadParameter(
            f"{err.message}. Copy the whole URL that `fedpeer invite create` printed, in quotes"
        ) from None
    return value.strip()


_JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


# --- the group ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the identity, store and admin token live [env FEDPEER_DATA_DIR].",
)
@click.option(
    "--url",
    default=None,
    callback=_url_cb,
    help="The running node's URL, for operator commands [env FEDPEER_URL; "
    "default: the node.url file `run` writes].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="fedpeer", prog_name="fedpeer")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, url: str | None, verbose: int) -> None:
    """fedpeer: run a federated peer node and operate it.

    \b
    Start a node:        fedpeer run --host 0.0.0.0
    Invite a device:     fedpeer invite create
    Pair with a node:    fedpeer pair 'http://...#secret=...'
    Check the set-up:    fedpeer doctor
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(data_dir or default_data_dir(), url)


# --- init / id / run -------------------------------------------------------------------


@cli.command()
@click.option(
    "--handle",
    default=None,
    callback=_handle_cb,
    help="Display name announced on the LAN (saved in fedpeer.toml; default: host name).",
)
@click.pass_obj
def init(obj: Ctx, handle: str | None) -> None:
    """Create the identity in the data dir (or show the existing one); print the DID."""
    from .peer.node import load_or_create_key

    try:
        key = load_or_create_key(obj.data_dir)
        if handle is not None:
            path = save_handle(obj.data_dir, handle)
            click.echo(f"handle {handle!r} saved in {path}", err=True)
    except FedpeerError as err:
        fail(err, EXIT_START)
    click.echo(key.did)


@cli.command(name="id")
@click.pass_obj
def show_id(obj: Ctx) -> None:
    """Print this node's DID."""
    from .identity.keys import SigningKey
    from .peer.node import KEY_FILE

    try:
        key = SigningKey.load(obj.data_dir / KEY_FILE)
    except FedpeerError as err:
        fail(err)
    click.echo(key.did)


def lan_addresses(interfaces: Sequence[str] = ()) -> list[str]:
    """Non-loopback, non-link-local IPv4 addresses of this machine (of
    ``interfaces`` when given), in interface order."""
    import ifaddr

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        if interfaces and adapter.name not in interfaces:
            continue
        for ip in adapter.ips:
            if (
                isinstance(ip.ip, str)
                and not ip.ip.startswith("127.")
                and not ip.ip.startswith("169.254.")
            ):
                out.append(ip.ip)
    return out


def _rate_settings(settings: Settings) -> dict[str, Any]:
    """NodeConfig keyword arguments for the rate limit settings that are set."""
    out: dict[str, Any] = {}
    if settings.rate_per_s is not None:
        out["rate_per_s"] = settings.rate_per_s
    if settings.rate_burst is not None:
        out["rate_burst"] = settings.rate_burst
    return out


def _sync_options(settings: Settings) -> SyncOptions:
    """The pullers' options: the library defaults with the sync_* settings applied."""
    from .sync._backoff import DEFAULT_BACKOFF, Backoff
    from .sync._puller import SyncOptions

    opts = SyncOptions()
    if settings.sync_longpoll_s is not None:
        opts = attrs.evolve(opts, longpoll_s=settings.sync_longpoll_s)
    cap = settings.sync_backoff_cap_s
    if cap is not None:
        backoff = Backoff(
            base_s=min(DEFAULT_BACKOFF.base_s, cap),
            cap_s=cap,
            max_retry_after_s=DEFAULT_BACKOFF.max_retry_after_s,
        )
        opts = attrs.evolve(opts, backoff=backoff)
    return opts


@cli.command()
@click.option(
    "--host",
    default=None,
    help=f"Address to listen on; 0.0.0.0 for the LAN [env FEDPEER_HOST; default {DEFAULT_HOST}].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port; 0 = any free [env FEDPEER_PORT; default {DEFAULT_PORT}].",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="NAME",
    help="Network interface for mDNS (repeatable; default: all) [env FEDPEER_INTERFACES].",
)
@click.option(
    "--handle",
    default=None,
    callback=_handle_cb,
    help="Display name announced on the LAN [env FEDPEER_HANDLE; default: host name].",
)
@click.option(
    "--discovery/--no-discovery",
    default=None,
    help="Advertise and browse over mDNS [env FEDPEER_DISCOVERY; default: on].",
)
@click.pass_obj
def run(
    obj: Ctx,
    host: str | None,
    port: int | None,
    interfaces: tuple[str, ...],
    handle: str | None,
    discovery: bool | None,
) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM.

    The first run creates the identity (node.key) and an admin token
    (admin.token), both mode 0600. While it serves, the node's URL is in
    node.url in the data dir, which the other commands read.
    """
    from .peer import NodeConfig, open_node

    try:
        settings = obj.settings
        cfg = NodeConfig(
            handle=handle or settings.handle or default_handle(),
            discovery=settings.discovery if discovery is None else discovery,
            interfaces=tuple(interfaces) or settings.interfaces,
            **_rate_settings(settings),
        )
        sync_opts = _sync_options(settings)
    except FedpeerError as err:
        fail(err, EXIT_START)
    bind_host = host or settings.host
    bind_port = settings.port if port is None else port
    data_dir = obj.data_dir

    root = logging.getLogger()
    if root.level > logging.INFO:
        logging.getLogger("fedpeer").setLevel(logging.INFO)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_node(
                data_dir, host=bind_host, port=bind_port, config=cfg, sync=sync_opts
            ) as node:
                url = loopback_url(node.url)
                await trio.to_thread.run_sync(write_node_url, data_dir, url)
                try:
                    click.echo(f"did:   {node.did}")
                    click.echo(f"url:   {url}")
                    click.echo(f"token: {node.admin_token_path} (admin bearer token, mode 0600)")
                    if _is_wildcard(bind_host):
                        for addr in lan_addresses(cfg.interfaces)[:4]:
                            click.echo(f"lan:   {_with_host(url, addr)}")
                    click.echo(f"handle: {cfg.handle}")
                    if not cfg.discovery:
                        click.echo("mdns:  off")
                    elif _is_loopback_host(bind_host):
                        click.echo(
                            f"mdns:  browse only (the node listens on {bind_host}; "
                            "use --host 0.0.0.0 to be found on the LAN)"
                        )
                    else:
                        names = ", ".join(cfg.interfaces) or "all interfaces"
                        click.echo(f"mdns:  on ({names})")
                    click.echo("ready; Ctrl-C to stop", err=True)
                    async for signum in signals:
                        click.echo(f"got {signal.Signals(signum).name}, shutting down", err=True)
                        break
                finally:
                    remove_node_url(data_dir, url)

    try:
        trio.run(main)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, FedpeerError):  # START_FAILED (port), KEY_FILE_*, STORE_*, ...
            fail(leaf, EXIT_LOCKED if isinstance(leaf, DataDirLocked) else EXIT_START)
        if isinstance(leaf, OSError):  # not the port (that is START_FAILED above): say what
            where = f" ({leaf.filename})" if leaf.filename else ""
            click.echo(f"START_FAILED: {leaf.strerror or leaf}{where}", err=True)
            sys.exit(EXIT_START)
        if isinstance(leaf, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        raise


# --- invites ------------------------------------------------------------------------------


@cli.group()
def invite() -> None:
    """Issue, list and revoke invites (the other device runs `fedpeer pair URL`)."""


def _target(namespace: str | None, thread: str | None) -> Json | None:
    if thread is not None:
        return {"type": "thread", "value": thread, "namespace": namespace}
    if namespace is not None:
        return {"type": "namespace", "value": namespace}
    return None


def _describe_target(target: object) -> str:
    if not isinstance(target, dict) or target.get("type") in (None, "instance"):
        return "everything"
    if target.get("type") == "namespace":
        return f"namespace {target.get('value')}*"
    ns = target.get("namespace")
    return f"thread {target.get('value')}" + (f" in {ns}" if ns else "")


async def _public_base_url(api: NodeApi) -> tuple[str | None, str | None]:
    """The base URL other devices can reach this node at, and a warning.

    The node's bound URL unless it is a wildcard; then the addresses mDNS
    advertises, else (the CLI runs beside the node) a LAN address of this
    machine. None (the node decides) with a warning when it listens on loopback.
    """
    ident = await api.call("GET", "/v1/identity")
    urls = [str(u) for u in ident.get("urls", []) if isinstance(u, str)]
    if not urls:
        return None, None
    first = urls[0]
    host = urllib.parse.urlsplit(first).hostname or ""
    if _is_loopback_host(host):
        return None, (
            f"the node listens on {host} only, so this invite works on this machine only; "
            "restart it with `fedpeer run --host 0.0.0.0` to pair with other devices"
        )
    if not _is_wildcard(host):
        return None, None
    try:
        mdns = await api.call("GET", "/v1/discovery/mdns")
        advertised = [str(a) for a in mdns.get("addresses", []) if isinstance(a, str)]
    except FedpeerError:
        advertised = []
    api_host = urllib.parse.urlsplit(api.url).hostname or ""
    candidates = advertised
    if not candidates:
        candidates = lan_addresses() if _is_loopback_host(api_host) else [api_host]
    candidates = [c for c in candidates if c and not _is_loopback_host(c)]
    if not candidates:
        return None, "found no LAN address for this node; pass --base-url http://ADDRESS:PORT"
    return _with_host(first, candidates[0]), None


def _render_qr(url: str) -> str:
    import io

    import segno

    out = io.StringIO()
    segno.make(url, error="l").terminal(out=out, compact=True)
    return out.getvalue()


@invite.command(name="create")
@click.option("--ttl", type=Duration(), default=None, help="Valid for (90s, 10m, 2h, 7d) [1d].")
@click.option(
    "--uses", type=click.IntRange(1, 1000), default=None, help="How many redemptions [1]."
)
@click.option(
    "--scopes",
    type=Scopes(),
    default=None,
    help="Comma-separated scopes or presets for the redeemer [reader].",
)
@click.option("--namespace", callback=_name_cb, default=None, help="Limit to a namespace prefix.")
@click.option("--thread", callback=_name_cb, default=None, help="Limit to one thread.")
@click.option("--label", default=None, help="Public label shown to the redeemer.")
@click.option("--note", default=None, help="Private note (admins only).")
@click.option(
    "--base-url",
    callback=_url_cb,
    default=None,
    help="URL other devices reach this node at (default: found automatically).",
)
@click.option("--qr/--no-qr", default=True, show_default=True, help="Print a QR code of the URL.")
@click.option(
    "--wait", is_flag=True, help="Wait for the first redemption and show its confirmation code."
)
@click.option(
    "--timeout",
    type=Duration(),
    default="10m",
    show_default=True,
    help="With --wait: give up after this long.",
)
@_JSON_OPT
@click.pass_obj
def invite_create(
    obj: Ctx,
    ttl: int | None,
    uses: int | None,
    scopes: list[str] | None,
    namespace: str | None,
    thread: str | None,
    label: str | None,
    note: str | None,
    base_url: str | None,
    qr: bool,
    wait: bool,
    timeout: int,
    as_json: bool,
) -> None:
    """Issue an invite; print its URL (and a QR code) for the other device."""
    body: Json = {}
    if ttl is not None:
        body["ttl_s"] = ttl
    if uses is not None:
        body["max_uses"] = uses
    if scopes is not None:
        body["scopes"] = scopes
    target = _target(namespace, thread)
    if target is not None:
        body["scope_target"] = target
    if label is not None:
        body["device_label"] = label
    if note is not None:
        body["notes"] = note

    async def main() -> Json:
        async with obj.api() as api:
            warning = None
            if base_url is not None:
                body["base_url"] = base_url
            else:
                found, warning = await _public_base_url(api)
                if found is not None:
                    body["base_url"] = found
            answer = await api.call("POST", "/v1/invites", body=body)
            if warning and not as_json:
                click.echo(f"note: {warning}", err=True)
            if not as_json:
                _print_invite(answer, qr)
            if wait:
                answer["redemption"] = await _wait_redeemed(api, answer, timeout, quiet=as_json)
            return answer

    answer = run_async(main)
    if as_json:
        _json_out(answer)


def _print_invite(answer: Json, qr: bool) -> None:
    inv = answer.get("invite", {})
    url = str(answer["url"])
    uses = inv.get("max_uses", "?")
    click.echo(
        f"invite {answer['invite_id']}: {', '.join(inv.get('scopes', []))} on "
        f"{_describe_target(inv.get('scope_target'))}, {uses} use{'s' if uses != 1 else ''}, "
        f"expires {answer.get('expires_at')}"
    )
    click.echo()
    click.echo(url)
    click.echo()
    if qr:
        click.echo(_render_qr(url), nl=False)
        click.echo()
    click.echo(f"On the other device:  fedpeer pair '{url}'")
    click.echo("The URL holds a secret: share it only with the device you want to pair.")


async def _redemptions(api: NodeApi, invite_id: str | None = None) -> list[Json]:
    """``invite.redeemed`` audit events (oldest first), each with its confirmation code."""
    from .consent.invites import confirmation_code

    events: list[Json] = []
    since = 0
    for _ in range(50):  # bounded: 50 pages of up to 1000 events
        params = {"since": str(since), "limit": "1000"}
        if invite_id is not None:
            params["invite_id"] = invite_id
        page = await api.call("GET", "/v1/invites/audit", params=params)
        for item in page.get("events", []):
            event = item.get("event", {})
            if event.get("type") == "invite.redeemed":
                events.append({**event, "ts_ms": item.get("ts_ms")})
        next_since = page.get("next_since")
        if not isinstance(next_since, int) or next_since <= since or not page.get("events"):
            break
        since = next_since
    ident = await api.call("GET", "/v1/identity")
    issuer = str(ident.get("did"))
    for event in events:
        holder = event.get("holder_did")
        if isinstance(holder, str):
            event["confirmation_code"] = confirmation_code(
                issuer, holder, str(event.get("invite_id"))
            )
    return events


async def _wait_redeemed(api: NodeApi, answer: Json, timeout: int, *, quiet: bool) -> Json:
    invite_id = str(answer["invite_id"])
    if not quiet:
        click.echo(f"waiting up to {timeout} s for the invite to be redeemed (Ctrl-C to stop)…")
    with trio.move_on_after(timeout):
        for _ in range(int(timeout / 0.5) + 2):  # bounded poll
            found = await _redemptions(api, invite_id)
            if found:
                event = found[0]
                if not quiet:
                    click.echo(
                        f"redeemed by {event.get('holder_did')} ({event.get('holder_type')}); "
                        f"confirmation code {event.get('confirmation_code')}: it must match "
                        "the code shown on the other device"
                    )
                return event
            await trio.sleep(0.5)
    raise TimedOut(
        f"invite {invite_id} was not redeemed within {timeout} s; it stays valid until it "
        "expires (`fedpeer invite list`)"
    )


@invite.command(name="list")
@click.option(
    "--state",
    type=click.Choice(["active", "expired", "exhausted", "revoked"]),
    default=None,
    help="Only invites in this state.",
)
@_JSON_OPT
@click.pass_obj
def invite_list(obj: Ctx, state: str | None, as_json: bool) -> None:
    """List invites: state, uses, expiry, scopes, and who redeemed them (with codes)."""

    async def main() -> tuple[list[Json], list[Json]]:
        async with obj.api() as api:
            params = {"state": state} if state else None
            answer = await api.call("GET", "/v1/invites", params=params)
            return list(answer.get("invites", [])), await _redemptions(api)

    invites, redeemed = run_async(main)
    by_invite: dict[str, list[Json]] = {}
    for event in redeemed:
        by_invite.setdefault(str(event.get("invite_id")), []).append(event)
    if as_json:
        for inv in invites:
            inv["redemptions"] = by_invite.get(str(inv.get("invite_id")), [])
        _json_out({"invites": invites})
        return
    if not invites:
        click.echo("no invites" + (f" in state {state}" if state else ""))
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("id", "state", "uses", "expires", "scopes", "target", "redeemed by (code)"):
        table.add_column(col)
    for inv in invites:
        who = ", ".join(
            f"{_short_did(e.get('holder_did'))} ({e.get('confirmation_code')})"
            for e in by_invite.get(str(inv.get("invite_id")), [])
        )
        table.add_row(
            str(inv.get("invite_id")),
            str(inv.get("state")),
            f"{inv.get('uses')}/{inv.get('max_uses')}",
            _when(inv.get("expires_ms")),
            ",".join(inv.get("scopes", [])),
            _describe_target(inv.get("scope_target")),
            who or "-",
        )
    _console().print(table)


@invite.command(name="revoke")
@click.argument("invite_id")
@click.pass_obj
def invite_revoke(obj: Ctx, invite_id: str) -> None:
    """Revoke an invite and every token it produced."""

    async def main() -> Json:
        async with obj.api() as api:
            return await api.call("POST", f"/v1/invites/{urllib.parse.quote(invite_id)}/revoke")

    answer = run_async(main)
    changed = answer.get("changed")
    click.echo(f"invite {invite_id} {'revoked' if changed else 'was already revoked'}")


# --- pairing ----------------------------------------------------------------------------


@cli.command()
@click.argument("invite_url", metavar="URL", callback=_invite_url_cb)
@click.option("--one-way", is_flag=True, help="Only pull from the issuer (default: both ways).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Show progress until caught up with the issuer.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="5m",
    show_default=True,
    help="Give up waiting after this long (the pair keeps syncing).",
)
@click.option("--label", default=None, help="How the issuer lists this device [handle].")
@_JSON_OPT
@click.pass_obj
def pair(
    obj: Ctx,
    invite_url: str,
    one_way: bool,
    wait: bool,
    timeout: int,
    label: str | None,
    as_json: bool,
) -> None:
    """Pair the running node with the node that issued an invite URL.

    Verifies that the issuer's manifest is signed by the DID in the URL,
    redeems the invite with this node's identity, creates the pair (this node
    pulls from the issuer) and, unless --one-way, hands the issuer a read
    credential for this node so it can pull back. Prints the confirmation code:
    compare it with the one the issuer shows (`fedpeer invite list`).
    """

    async def main() -> Json:
        async with obj.api() as api:
            result = await _pair_with_invite(api, invite_url, one_way=one_way, label=label)
            if not as_json:
                _print_paired(result)
            if wait:
                result["pair"] = await _wait_caught_up(api, result["pair"], timeout, quiet=as_json)
            return result

    result = run_async(main)
    if as_json:
        _json_out(result)


async def _pair_with_invite(
    api: NodeApi, invite_url: str, *, one_way: bool, label: str | None
) -> Json:
    """Ask the local node to redeem ``invite_url`` and set up the pair(s)
    (``POST /v1/sync/pairs/from-invite``). Returns what ``pair --json`` prints."""
    from .consent.invites import parse_invite_url

    invite = parse_invite_url(invite_url)
    ident = await api.call("GET", "/v1/identity")
    if invite.issuer_did == ident.get("did"):
        raise PairSelf(
            "this invite was issued by this node: run `fedpeer pair` on the other device"
        )
    body: Json = {"invite_url": invite_url, "bidirectional": not one_way}
    handle = str(ident.get("handle") or "")
    if label or handle:
        body["label"] = label or handle
    return await api.call("POST", "/v1/sync/pairs/from-invite", body=body)


def _print_paired(result: Json) -> None:
    p = result["pair"]
    click.echo(f"paired with {result['issuer_did']} at {result['issuer_url']}")
    click.echo(
        f"confirmation code: {result['confirmation_code']}  (it must match the code "
        "the issuer sees in `fedpeer invite list`)"
    )
    click.echo(f"pair {p.get('id')}: pulling {', '.join(result['scopes'])}")
    if result["two_way"]:
        click.echo(
            f"two-way: the issuer got a read credential to pull from {result['reciprocal_url']}"
        )


async def _peer_head(http: httpx.AsyncClient, peer_url: str) -> int | None:
    try:
        r = await http.get(peer_url.rstrip("/") + "/health", timeout=5.0)
        head = r.json().get("head_seq")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return head if isinstance(head, int) and not isinstance(head, bool) else None


async def _wait_caught_up(api: NodeApi, pair_row: Json, timeout: int, *, quiet: bool) -> Json:
    """Poll the pair until it is caught up, showing a progress bar (bounded by ``timeout``).

    Raises the pair's last error when it stops (a refused credential), TimedOut.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    pid = str(pair_row["id"])
    peer_url = str(pair_row.get("peer_url"))
    interval = 0.25
    row = pair_row
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_console(),
        disable=quiet,
        transient=False,
    )
    async with httpx.AsyncClient() as http:
        with progress, trio.move_on_after(timeout):
            task = progress.add_task("pulling", total=None)
            for _ in range(int(timeout / interval) + 2):  # bounded poll
                row = await api.call("GET", f"/v1/sync/pairs/{pid}")
                head = await _peer_head(http, peer_url)
                lag = row.get("lag") or {}
                seq = lag.get("cursor_seq") or 0
                stats = row.get("stats") or {}
                state = str(row.get("state"))
                desc = f"{state}: {stats.get('records', 0)} records"
                err = row.get("last_error")
                if state == "failing" and isinstance(err, dict):
                    desc += f" (retrying after {err.get('code')})"
                if state == "caught_up" and head is not None:
                    seq = max(seq, head)
                total = head if head is not None else None
                progress.update(
                    task,
                    description=desc,
                    total=total,
                    completed=min(seq, total) if total is not None else seq,
                )
                if state == "caught_up":
                    if not quiet:
                        progress.stop()
                        click.echo(
                            f"caught up: {stats.get('records', 0)} records pulled from {peer_url}"
                        )
                    return row
                if state == "stopped":
                    err = row.get("last_error") or {}
                    raise error_from_code(
                        str(err.get("code", "PEER_ERROR")),
                        f"the pair stopped: {err.get('message', 'see `fedpeer pairs`')}",
                    )
                await trio.sleep(interval)
    raise TimedOut(
        f"pair {pid} is not caught up after {timeout} s (state {row.get('state')}); it keeps "
        "syncing in the node: watch it with `fedpeer pairs`"
    )


# --- peers and pairs --------------------------------------------------------------------

_MARKS = {"verified": "✓", "unverified": "?", "invalid": "✗"}


@cli.command()
@_JSON_OPT
@click.pass_obj
def peers(obj: Ctx, as_json: bool) -> None:
    """Nodes found on the LAN over mDNS (✓ verified, ? unverified, ✗ invalid)."""

    async def main() -> Json:
        async with obj.api() as api:
            return await api.call("GET", "/v1/discovery/mdns")

    roster = run_async(main)
    if as_json:
        _json_out(roster)
        return
    if not roster.get("enabled"):
        click.echo("mDNS discovery is off on this node (start it without --no-discovery)")
        return
    status = roster.get("status")
    line = f"mDNS {status}"
    if roster.get("instance"):
        line += f" as {roster.get('instance')!r}"
    addrs = roster.get("addresses") or []
    line += f" on {', '.join(addrs)}" if addrs else " (not advertised)"
    if roster.get("last_error"):
        line += f": {roster.get('last_error')}"
    click.echo(line)
    entries = list(roster.get("peers", []))
    if not entries:
        click.echo("no peers seen yet")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("", "handle", "did", "url", "status", "last seen", "note"):
        table.add_column(col)
    for e in entries:
        st = str(e.get("status"))
        note = str(e.get("reason") or "")
        if st == "invalid":
            note = (note + "; never offered for pairing").lstrip("; ")
        table.add_row(
            _MARKS.get(st, " "),
            str(e.get("handle")),
            _short_did(e.get("did")),
            str(e.get("url") or "-"),
            st,
            _ago(e.get("last_seen_ms")),
            note,
        )
    _console().print(table)


def _lag_text(row: Json) -> str:
    lag = row.get("lag") or {}
    if lag.get("caught_up"):
        return "caught up"
    behind = lag.get("behind_s")
    if isinstance(behind, int | float):
        return f"behind {behind:.0f}s"
    return "?"


@cli.group(invoke_without_command=True)
@_JSON_OPT
@click.pass_context
def pairs(ctx: click.Context, as_json: bool) -> None:
    """List sync pairs (state, lag, rate, last error); or act on one."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj

    async def main() -> list[Json]:
        async with obj.api() as api:
            return list((await api.call("GET", "/v1/sync/pairs")).get("pairs", []))

    rows = run_async(main)
    if as_json:
        _json_out({"pairs": rows})
        return
    if not rows:
        click.echo("no pairs: pair with another node with `fedpeer pair URL`")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("id", "peer", "state", "lag", "records", "rate/s", "last error"):
        table.add_column(col)
    for row in rows:
        stats = row.get("stats") or {}
        err = row.get("last_error")
        err_text = f"{err.get('code')}: {err.get('message')}" if isinstance(err, dict) else "-"
        table.add_row(
            str(row.get("id")),
            f"{_short_did(row.get('peer_did'))} {row.get('peer_url')}",
            str(row.get("state")),
            _lag_text(row),
            str(stats.get("records", 0)),
            f"{float(stats.get('rate_per_s') or 0):.1f}",
            err_text[:80],
        )
    _console().print(table)


def _pair_action(action: str, helptext: str) -> None:
    @pairs.command(name=action, help=helptext)
    @click.argument("pair_id")
    @click.pass_obj
    def command(obj: Ctx, pair_id: str) -> None:
        async def main() -> Json:
            async with obj.api() as api:
                pid = urllib.parse.quote(pair_id, safe="")
                if action == "delete":
                    return await api.call("DELETE", f"/v1/sync/pairs/{pid}")
                return await api.call("POST", f"/v1/sync/pairs/{pid}/{action}")

        row = run_async(main)
        state = "deleted" if action == "delete" else row.get("state")
        click.echo(f"pair {pair_id}: {state}")


_pair_action("pause", "Pause a pair.")
_pair_action("resume", "Resume a paused or stopped pair.")
_pair_action("kick", "Poll now (ends a backoff).")
_pair_action("delete", "Delete a pair (the records it pulled stay).")


# --- records -----------------------------------------------------------------------------


@cli.group()
def records() -> None:
    """Add, list and read records on the running node."""


def _record_view(item: Json) -> Json:
    rec = item.get("record") or {}
    return {
        "cid": _link(item.get("cid")),
        "seq": item.get("seq"),
        "author": rec.get("author"),
        "namespace": rec.get("namespace"),
        "thread": rec.get("thread"),
        "kind": rec.get("kind"),
        "ts": rec.get("ts"),
        "clock": rec.get("clock"),
        "parents": [_link(p) for p in rec.get("parents", [])],
        "body": rec.get("body"),
    }


@records.command(name="add")
@click.option("--namespace", required=True, callback=_name_cb, help="Namespace of the record.")
@click.option("--thread", required=True, callback=_name_cb, help="Thread of the record.")
@click.option("--kind", required=True, callback=_name_cb, help="Kind of the record.")
@click.option("--parent", "parents", multiple=True, help="CID of a parent record (repeatable).")
@click.argument("body")
@click.pass_obj
def records_add(
    obj: Ctx, namespace: str, thread: str, kind: str, parents: tuple[str, ...], body: str
) -> None:
    """Append a record signed by the node; BODY is JSON, or - to read it from stdin."""
    text = sys.stdin.read() if body == "-" else body
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(
            f'not valid JSON ({exc}); quote it for the shell, e.g. \'{{"text": "hi"}}\'',
            param_hint="BODY",
        ) from None

    async def main() -> Json:
        async with obj.api() as api:
            payload: Json = {"namespace": namespace, "thread": thread, "kind": kind, "body": value}
            if parents:
                payload["parents"] = list(parents)
            return await api.call("POST", "/v1/records", body=payload)

    answer = run_async(main)
    click.echo(str(answer.get("cid")))


@records.command(name="list")
@click.option("--namespace", callback=_name_cb, default=None, help="Only this namespace prefix.")
@click.option("--thread", callback=_name_cb, default=None, help="Only this thread.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--since", default=None, help="Cursor from a previous listing.")
@_JSON_OPT
@click.pass_obj
def records_list(
    obj: Ctx,
    namespace: str | None,
    thread: str | None,
    limit: int,
    since: str | None,
    as_json: bool,
) -> None:
    """List records in the order the node stored them."""
    params = {"limit": str(limit)}
    if namespace:
        params["namespace"] = namespace
    if since:
        params["since"] = since

    async def main() -> Json:
        async with obj.api() as api:
            if thread is not None:
                path = f"/v1/threads/{urllib.parse.quote(thread, safe='/:@+')}/records"
                return await api.call("GET", path, params=params)
            return await api.call("GET", "/v1/sync/changes", params=params)

    page = run_async(main)
    views = [_record_view(r) for r in page.get("records", [])]
    if as_json:
        _json_out(
            {
                "records": views,
                "next_cursor": page.get("next_cursor"),
                "has_more": page.get("has_more"),
            }
        )
        return
    if not views:
        click.echo("no records")
    else:
        from rich.table import Table

        table = Table(box=None)
        for col in ("seq", "cid", "namespace", "thread", "kind", "author", "time", "body"):
            table.add_column(col)
        for v in views:
            body_text = json.dumps(v["body"], ensure_ascii=False)
            table.add_row(
                str(v["seq"]),
                v["cid"],
                str(v["namespace"]),
                str(v["thread"]),
                str(v["kind"]),
                _short_did(v["author"]),
                _when(v["ts"]),
                body_text if len(body_text) <= 60 else body_text[:59] + "…",
            )
        _console().print(table)
    if page.get("has_more"):
        click.echo(f"more: --since {page.get('next_cursor')}")


@records.command(name="get")
@click.argument("cid")
@click.pass_obj
def records_get(obj: Ctx, cid: str) -> None:
    """Print one record (JSON) by CID."""

    async def main() -> Json:
        async with obj.api() as api:
            return await api.call("GET", f"/v1/records/{urllib.parse.quote(cid, safe='')}")

    _json_out(_record_view(run_async(main)))


# --- tokens ------------------------------------------------------------------------------


@cli.group()
def token() -> None:
    """Service accounts and their bearer tokens (admin API)."""


@token.command(name="list")
@_JSON_OPT
@click.pass_obj
def token_list(obj: Ctx, as_json: bool) -> None:
    """List service accounts (tokens are never shown again)."""

    async def main() -> list[Json]:
        async with obj.api() as api:
            answer = await api.call("GET", "/v1/service-accounts")
            return list(answer.get("service_accounts", []))

    accounts = run_async(main)
    if as_json:
        _json_out({"service_accounts": accounts})
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("id", "name", "holder", "scopes", "origin", "created", "state", "tokens"):
        table.add_column(col)
    for sa in accounts:
        table.add_row(
            str(sa.get("id")),
            str(sa.get("name")),
            _short_did(sa.get("holder_did")),
            ",".join(sa.get("scopes", [])),
            str(sa.get("origin")),
            _when(sa.get("created_ms")),
            "revoked" if sa.get("revoked_ms") else "active",
            str(len(sa.get("token_ids", []))),
        )
    _console().print(table)


@token.command(name="create")
@click.option("--name", default="service account", show_default=True, help="What it is for.")
@click.option(
    "--scopes",
    type=Scopes(),
    default="reader",
    show_default=True,
    help="Comma-separated scopes or presets (reader, contributor, admin).",
)
@click.option("--holder", default=None, help="DID of the holder [this node].")
@click.option("--ttl", type=Duration(), default=None, help="Token lifetime [no expiry].")
@_JSON_OPT
@click.pass_obj
def token_create(
    obj: Ctx, name: str, scopes: list[str], holder: str | None, ttl: int | None, as_json: bool
) -> None:
    """Create a service account and print its token (shown once)."""
    body: Json = {"name": name, "scopes": scopes}
    if holder is not None:
        body["holder_did"] = holder
    if ttl is not None:
        body["token_ttl_s"] = ttl

    async def main() -> Json:
        async with obj.api() as api:
            return await api.call("POST", "/v1/service-accounts", body=body)

    answer = run_async(main)
    if as_json:
        _json_out(answer)
        return
    sa = answer.get("service_account", {})
    click.echo(
        f"service account {sa.get('id')} ({sa.get('name')}): {','.join(sa.get('scopes', []))}",
        err=True,
    )
    click.echo("token (shown once; store it like a password):", err=True)
    click.echo(str(answer.get("token")))


@token.command(name="revoke")
@click.argument("sa_id")
@click.pass_obj
def token_revoke(obj: Ctx, sa_id: str) -> None:
    """Revoke a service account and all its tokens."""

    async def main() -> Json:
        async with obj.api() as api:
            sid = urllib.parse.quote(sa_id, safe="")
            return await api.call("DELETE", f"/v1/service-accounts/{sid}")

    run_async(main)
    click.echo(f"service account {sa_id} revoked")


@token.command(name="rotate")
@click.argument("sa_id")
@click.pass_obj
def token_rotate(obj: Ctx, sa_id: str) -> None:
    """Mint a new token for a service account and revoke its old ones."""

    async def main() -> Json:
        async with obj.api() as api:
            sid = urllib.parse.quote(sa_id, safe="")
            return await api.call("POST", f"/v1/service-accounts/{sid}/rotate-key")

    answer = run_async(main)
    click.echo("new token (shown once; the old ones no longer work):", err=True)
    click.echo(str(answer.get("token")))


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600."""
    write_private(path, text.encode())


@token.command(name="rotate-admin")
@click.pass_obj
def token_rotate_admin(obj: Ctx) -> None:
    """Mint a new admin token into admin.token (works on the store directly, also
    when the token file is lost; the old admin token stops working)."""
    from .consent import tokens
    from .peer.node import ADMIN_TOKEN_FILE, STORE_FILE
    from .store import SQLiteStore
    from .store.base import StateTx

    store_path = obj.data_dir / STORE_FILE
    if not store_path.exists():
        fail(
            ConfigInvalid(
                f"no store at {store_path}: start the node once (`fedpeer run`); it writes "
                "the admin token itself"
            )
        )

    async def main() -> Path:
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
            await store.aclose()
        path = obj.data_dir / ADMIN_TOKEN_FILE
        await trio.to_thread.run_sync(_write_secret, path, bearer + "\n")
        return path

    path = run_async(main)
    click.echo(f"new admin token written to {path} (mode 0600); the old one no longer works")


# --- doctor ------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--peer",
    "peer_url",
    callback=_url_cb,
    default=None,
    help="Compare clocks with this node (its URL).",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="NAME",
    help="Run the multicast self-test on these interfaces (default: the configured "
    "ones, else every interface with an IPv4 address).",
)
@click.option("--host", default=None, help="Address `run` would listen on [config].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port `run` would use.")
@_JSON_OPT
@click.pass_obj
def doctor(
    obj: Ctx,
    peer_url: str | None,
    interfaces: tuple[str, ...],
    host: str | None,
    port: int | None,
    as_json: bool,
) -> None:
    """Check the data dir, the store, the port, multicast and the clock.

    Each check prints ok, FAIL (with how to fix it) or skip. Exits with 5 when
    a check fails.
    """
    from . import _cli_doctor as d
    from .peer.node import STORE_FILE

    results: list[d.Check] = []

    def report(check: d.Check) -> None:
        results.append(check)
        if as_json:
            return
        mark = {"ok": "ok  ", "FAIL": "FAIL", "skip": "skip"}[check.status]
        click.echo(f"{mark} {check.name}: {check.detail}")
        if check.fix:
            click.echo(f"     fix: {check.fix}")

    data_dir = obj.data_dir
    report(d.data_dir_check(data_dir))
    settings: Settings | None
    try:
        settings = obj.settings
        src = ", ".join(f"{k} from {v}" for k, v in sorted(settings.sources.items()))
        report(d.Check("config", "ok", src or "defaults (no fedpeer.toml, no FEDPEER_* set)"))
    except FedpeerError as err:
        settings = None
        report(
            d.Check("config", "FAIL", err.message, f"fix {data_dir}/fedpeer.toml or the variable")
        )
    key_check, did = d.check_key(data_dir)
    report(key_check)
    report(d.check_admin_token(data_dir))
    url: str | None = None
    if settings is not None:
        try:
            url = node_url(settings, obj.url_flag)[0]
        except FedpeerError:
            url = None
    node_check, running = d.check_node(url, did)
    report(node_check)
    lock_check, locked = d.check_lock(data_dir, node_running=running)
    report(lock_check)
    store_path = data_dir / STORE_FILE
    if running or locked or not store_path.exists():
        report(d.check_store_readonly(store_path))
    else:
        report(_store_check_stopped(store_path))
    bind_host = host or (settings.host if settings else DEFAULT_HOST)
    bind_port = port if port is not None else (settings.port if settings else DEFAULT_PORT)
    node_port = urllib.parse.urlsplit(url).port if (running and url) else None
    report(d.check_port(bind_host, bind_port, node_running=running and node_port == bind_port))
    names = interfaces or (settings.interfaces if settings else ())
    pairs_found = d.interfaces_ipv4(names)
    if not pairs_found:
        report(
            d.Check(
                "multicast",
                "FAIL",
                "no network interface with an IPv4 address: mDNS cannot find peers",
                "connect to a network (Wi-Fi or cable), or name one with --interface",
            )
        )
    for name, address in pairs_found:
        report(d.check_multicast(name, address))
    report(d.check_clock(peer_url))
    failed = [c for c in results if c.failed]
    if as_json:
        _json_out({"ok": not failed, "checks": [c.to_dict() for c in results]})
    else:
        click.echo(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    if failed:
        sys.exit(EXIT_DOCTOR)


def _store_check_stopped(path: Path) -> Any:
    """Open the store (the node is stopped) and run its integrity check."""
    from . import _cli_doctor as d
    from .store import SQLiteStore

    async def main() -> str:
        store = await SQLiteStore.open(path)
        try:
            return await store.integrity_check()
        finally:
            await store.aclose()

    try:
        outcome = trio.run(main)
    except BaseException as exc:
        leaf = _leaf(exc)
        if not isinstance(leaf, FedpeerError):
            raise
        return d.store_result(path, f"{leaf.code}: {leaf.message}")
    return d.store_result(path, outcome)


def main() -> None:
    """Entry point of the ``fedpeer`` console script."""
    cli()


if __name__ == "__main__":
    main()

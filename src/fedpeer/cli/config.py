"""Settings of the ``fedpeer`` command: ``fedpeer.toml``, ``FEDPEER_*`` variables, flags.

Precedence, lowest to highest: built-in defaults, ``<data_dir>/fedpeer.toml``,
``FEDPEER_*`` environment variables, command-line flags. The data dir itself
comes from ``--data-dir``, else ``$FEDPEER_DATA_DIR``, else the platform's user
data dir (it cannot come from the file that lives in it).

``fedpeer.toml`` holds flat keys only; an unknown key is an error (a typo
should not be ignored silently)::

    host = "0.0.0.0"          # FEDPEER_HOST        address `run` listens on
    port = 8765               # FEDPEER_PORT        port `run` listens on (0 = any free)
    handle = "alice-laptop"   # FEDPEER_HANDLE      display name announced over mDNS
    interfaces = ["eth0"]     # FEDPEER_INTERFACES  mDNS interfaces (comma separated)
    discovery = true          # FEDPEER_DISCOVERY   mDNS on/off (1/0, true/false, on/off)
    url = "http://127.0.0.1:8765"   # FEDPEER_URL   where operator commands reach the node

Tuning (`fedpeer run` only; defaults are the library's)::

    sync_longpoll_s = 30      # FEDPEER_SYNC_LONGPOLL_S     how long a caught-up pair's longpoll
                              #   asks the peer to hold (a silent peer is noticed after about
                              #   this plus 15 s)
    sync_backoff_cap_s = 300  # FEDPEER_SYNC_BACKOFF_CAP_S  longest wait between retries of a
                              #   failing pair (the first retry waits up to min(base, cap))
    sync_backoff_base_s = 1   # FEDPEER_SYNC_BACKOFF_BASE_S the first retry's longest wait;
                              #   it doubles per failure up to the cap
    rate_per_s = 50           # FEDPEER_RATE_PER_S          requests per second per token / address
    rate_burst = 200          # FEDPEER_RATE_BURST          burst allowance of that rate limit
    write_quota_records = 1000000   # FEDPEER_WRITE_QUOTA_RECORDS  records each token holder
                              #   (not an admin) may write; 0: no bound
    write_quota_bytes = 1073741824  # FEDPEER_WRITE_QUOTA_BYTES    their bytes; 0: no bound
    redeem_quota_records = 1000000  # FEDPEER_REDEEM_QUOTA_RECORDS records a pair set up by
                              #   someone redeeming this node's invite may pull; 0: no bound
    redeem_quota_bytes = 1073741824 # FEDPEER_REDEEM_QUOTA_BYTES   their bytes; 0: no bound
    min_free_disk_percent = 1 # FEDPEER_MIN_FREE_DISK_PERCENT share of the store's disk that
                              #   records never eat into (0 to 50; 0: none)

``FEDPEER_TOKEN`` overrides the admin token read from ``admin.token``.

Also here: the ``node.url`` file that ``fedpeer run`` writes while it serves,
and how an operator command picks the node URL and the admin token. Plain
file I/O, no network.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from ..errors import AuthRequired, ConfigInvalid, NodeNotRunning
from ..peer.addresses import loopback_url as loopback_url

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "NODE_URL_FILE",
    "Settings",
    "admin_token",
    "check_handle",
    "default_handle",
    "load_settings",
    "loopback_url",
    "node_url",
    "read_node_url",
    "remove_node_url",
    "save_handle",
    "write_node_url",
]

CONFIG_FILE = "fedpeer.toml"
NODE_URL_FILE = "node.url"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_HANDLE_CHARS = 128  # as the mDNS TXT record allows

_KEYS = (
    "host",
    "port",
    "handle",
    "interfaces",
    "discovery",
    "url",
    "sync_longpoll_s",
    "sync_backoff_cap_s",
    "sync_backoff_base_s",
    "rate_per_s",
    "rate_burst",
    "write_quota_records",
    "write_quota_bytes",
    "redeem_quota_records",
    "redeem_quota_bytes",
    "min_free_disk_percent",
)
MAX_LONGPOLL_S = 300.0
MAX_BACKOFF_CAP_S = 86_400.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@attrs.frozen
class Settings:
    """The merged configuration (file < environment); flags are applied by the caller.

    ``sources`` says where each value that is not a default came from
    (``"fedpeer.toml"`` or the variable name), for messages.
    """

    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    handle: str | None = None
    interfaces: tuple[str, ...] = ()
    discovery: bool = True
    url: str | None = None
    sync_longpoll_s: float | None = None
    sync_backoff_cap_s: float | None = None
    sync_backoff_base_s: float | None = None
    rate_per_s: float | None = None
    rate_burst: int | None = None
    write_quota_records: int | None = None
    write_quota_bytes: int | None = None
    redeem_quota_records: int | None = None
    redeem_quota_bytes: int | None = None
    min_free_disk_percent: float | None = None
    sources: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def config_path(self) -> Path:
        """``<data_dir>/fedpeer.toml`` (it may not exist)."""
        return self.data_dir / CONFIG_FILE


def check_handle(handle: str, where: str = "handle") -> str:
    """Return ``handle`` if it is 1..128 characters without control characters.

    Raises ConfigInvalid naming ``where`` otherwise. Pure.
    """
    if not 1 <= len(handle) <= MAX_HANDLE_CHARS or any(
        unicodedata.category(c).startswith("C") for c in handle
    ):
        raise ConfigInvalid(
            f"{where} must be 1..{MAX_HANDLE_CHARS} characters without control characters, "
            f"got {handle[:40]!r}"
        )
    return handle


def default_handle(did: str) -> str:
    """The handle of a node that was given none: ``fedpeer-`` and the last 6
    characters of its DID (``fedpeer-a1B2c3``).

    Not the host name: that would tell everyone on the LAN the machine's name
    (often the owner's name) without being asked, and two laptops cloned from one
    image would look alike. Set a handle with ``fedpeer init --handle`` (saved in
    fedpeer.toml), ``--handle`` or ``FEDPEER_HANDLE``. Pure."""
    return f"fedpeer-{did[-6:]}"


def _check_port(value: object, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigInvalid(f"{where} must be a port number 0..65535, got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigInvalid(f"{where} must be a port number 0..65535, got {value!r}")
    return value


def _check_host(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigInvalid(f"{where} must be an address like 127.0.0.1 or 0.0.0.0, got {value!r}")
    return value.strip()


def _check_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigInvalid(f"{where} must be the node's URL like http://127.0.0.1:8765")
    try:
        parts = urllib.parse.urlsplit(value.strip())
        _ = parts.port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ConfigInvalid(
            f"{where} must be the node's http(s) URL like http://127.0.0.1:8765, got {value!r:.80}"
        )
    return value.strip().rstrip("/")


def _check_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigInvalid(f"{where} must be true or false (1/0, on/off), got {value!r}")


def _check_interfaces(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v for v in re.split(r"[,\s]+", value) if v]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [str(v) for v in value]
    else:
        raise ConfigInvalid(f"{where} must be a list of interface names like ['eth0']")
    if any(not v or len(v) > 64 or any(c.isspace() for c in v) for v in items):
        raise ConfigInvalid(f"{where} holds a bad interface name: {items!r:.120}")
    return tuple(items)


def _number(value: object, where: str, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigInvalid(f"{where} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigInvalid(f"{where} must be {what}, got {value!r}")
    return float(value)


def _seconds_check(upper: float) -> Callable[[object, str], float]:
    def check(value: object, where: str) -> float:
        what = f"a number of seconds > 0 and <= {upper:g}"
        seconds = _number(value, where, what)
        if not (math.isfinite(seconds) and 0 < seconds <= upper):
            raise ConfigInvalid(f"{where} must be {what}, got {value!r}")
        return seconds

    return check


def _check_rate(value: object, where: str) -> float:
    what = "a number of requests per second > 0"
    rate = _number(value, where, what)
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigInvalid(f"{where} must be {what}, got {value!r}")
    return rate


def _whole_check(lowest: int, what: str) -> Callable[[object, str], int]:
    """A check for a whole number >= ``lowest`` (``what`` names it in messages)."""

    def check(value: object, where: str) -> int:
        number = _number(value, where, what)
        if not (math.isfinite(number) and number >= lowest and number == int(number)):
            raise ConfigInvalid(f"{where} must be {what}, got {value!r}")
        return int(number)

    return check


_check_burst = _whole_check(1, "a whole number of requests >= 1")
_check_quota = _whole_check(0, "a whole number >= 0 (0: no bound)")


def _check_free_percent(value: object, where: str) -> float:
    what = "a number from 0 to 50 (percent; 0: none)"
    share = _number(value, where, what)
    if not (math.isfinite(share) and 0 <= share <= 50):
        raise ConfigInvalid(f"{where} must be {what}, got {value!r}")
    return share


_CHECKS: dict[str, Callable[[object, str], object]] = {
    "host": _check_host,
    "port": _check_port,
    "handle": lambda v, where: check_handle(v, where) if isinstance(v, str) else _bad_handle(where),
    "interfaces": _check_interfaces,
    "discovery": _check_bool,
    "url": _check_url,
    "sync_longpoll_s": _seconds_check(MAX_LONGPOLL_S),
    "sync_backoff_cap_s": _seconds_check(MAX_BACKOFF_CAP_S),
    "sync_backoff_base_s": _seconds_check(MAX_BACKOFF_CAP_S),
    "rate_per_s": _check_rate,
    "rate_burst": _check_burst,
    "write_quota_records": _check_quota,
    "write_quota_bytes": _check_quota,
    "redeem_quota_records": _check_quota,
    "redeem_quota_bytes": _check_quota,
    "min_free_disk_percent": _check_free_percent,
}


def _bad_handle(where: str) -> str:
    raise ConfigInvalid(f"{where} must be a string")


def _read_toml(path: Path) -> dict[str, object]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigInvalid(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"{path} is not valid TOML ({exc}); fix or remove the file") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigInvalid(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
        )
    return data


def load_settings(data_dir: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge ``<data_dir>/fedpeer.toml`` and ``FEDPEER_*`` variables (``environ``,
    default ``os.environ``) over the defaults.

    Raises ConfigInvalid (CONFIG_INVALID) naming the file or variable and the
    bad value. Reads one small file; never touches the network.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    path = data_dir / CONFIG_FILE
    for key, value in _read_toml(path).items():
        values[key] = _CHECKS[key](value, f"{path}: {key}")
        sources[key] = CONFIG_FILE
    for key in _KEYS:
        var = f"FEDPEER_{key.upper()}"
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        values[key] = _CHECKS[key](raw, var)
        sources[key] = var
    return Settings(data_dir=data_dir, sources=sources, **values)  # type: ignore[arg-type]


def save_handle(data_dir: Path, handle: str) -> Path:
    """Set ``handle`` in ``<data_dir>/fedpeer.toml`` (creating the file); return its path.

    Keeps the rest of the file as it is: replaces an existing top-level
    ``handle = ...`` line or adds one at the top. Raises ConfigInvalid for a
    bad handle or an unreadable file.
    """
    check_handle(handle)
    path = data_dir / CONFIG_FILE
    line = f"handle = {_toml_string(handle)}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigInvalid(f"cannot read {path}: {exc.strerror or exc}") from None
    pattern = re.compile(r"^handle\s*=.*$", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _m: line, text, count=1)
    else:
        text = line + "\n" + text
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    _read_toml(path)  # what we wrote must load
    return path


def _toml_string(value: str) -> str:
    out = ['"']
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif unicodedata.category(c).startswith("C"):
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


# --- node.url ----------------------------------------------------------------------


def write_node_url(data_dir: Path, url: str) -> Path:
    """Write ``<data_dir>/node.url`` (one line, the URL) atomically; return the path."""
    path = data_dir / NODE_URL_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(url + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_node_url(data_dir: Path) -> str | None:
    """The URL in ``<data_dir>/node.url``, or None when there is no such file."""
    try:
        text = (data_dir / NODE_URL_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    return text or None


def remove_node_url(data_dir: Path, url: str) -> None:
    """Remove ``<data_dir>/node.url`` if it still holds ``url`` (another node that
    started meanwhile keeps its file). Never raises."""
    try:
        if read_node_url(data_dir) == url:
            (data_dir / NODE_URL_FILE).unlink()
    except OSError:
        pass


def node_url(settings: Settings, flag: str | None) -> tuple[str, str]:
    """The URL operator commands use and where it came from.

    ``--url`` flag, else ``FEDPEER_URL`` / ``url`` in fedpeer.toml, else the
    ``node.url`` file of a running ``fedpeer run``. Raises NodeNotRunning when
    none of these exists, ConfigInvalid for a bad flag value.
    """
    if flag:
        return _check_url(flag, "--url"), "--url"
    if settings.url:
        return settings.url, settings.sources.get("url", "config")
    written = read_node_url(settings.data_dir)
    if written:
        return written, str(settings.data_dir / NODE_URL_FILE)
    raise NodeNotRunning(
        f"no node is running for {settings.data_dir} (there is no {NODE_URL_FILE}): start it "
        f"with `fedpeer --data-dir {settings.data_dir} run`, or pass --url"
    )


def admin_token(data_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The admin bearer: ``$FEDPEER_TOKEN``, else ``<data_dir>/admin.token``.

    Raises AuthRequired (AUTH_REQUIRED) saying how to get one when neither exists.
    """
    env = os.environ if environ is None else environ
    token = env.get("FEDPEER_TOKEN", "").strip()
    if token:
        return token
    from ..peer.node import ADMIN_TOKEN_FILE

    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthRequired(
            f"no admin token at {path}: the node writes it on its first start "
            f"(`fedpeer --data-dir {data_dir} run`); set FEDPEER_TOKEN to use another"
        ) from None
    except OSError as exc:
        raise AuthRequired(f"cannot read the admin token {path}: {exc.strerror or exc}") from None
    if not token:
        raise AuthRequired(
            f"{path} is empty: mint a new admin token with `fedpeer token rotate-admin`"
        )
    return token

"""The ``fedpeer`` command: node runner and operator commands.

``fedpeer run`` runs a node in the foreground. The other commands talk to that
running node through :class:`~fedpeer.peer.AdminClient` (its HTTP admin API)
with the admin token from the data dir (``admin.token``; ``$FEDPEER_TOKEN``
overrides it). They find the node at ``--url``, else ``$FEDPEER_URL`` / ``url``
in ``fedpeer.toml``, else the ``node.url`` file that ``run`` writes while it
serves. ``init``, ``id``, ``token rotate-admin``, ``backup`` and ``doctor`` work on
the data dir directly.

Modules: :mod:`.main` (the group and its context), :mod:`.node` (init, id,
run), :mod:`.invite`, :mod:`.pairs` (pair, unpair, peers, pairs), :mod:`.records`,
:mod:`.token`, :mod:`.archive` (backup, export, import), :mod:`.doctor` (and its
:mod:`.checks`), :mod:`.config`
(``fedpeer.toml``, ``FEDPEER_*``), :mod:`.params` (option types),
:mod:`.output` (exit codes, errors, tables). They use the library's public
names only, like any other program.

Configuration: ``<data_dir>/fedpeer.toml``, ``FEDPEER_*`` environment
variables, flags, in rising precedence (:mod:`fedpeer.cli.config`).

Exit codes (stable): 0 success; 1 a fedpeer error (``CODE: what to do`` on
stderr, never a traceback); 2 bad usage; 3 the node could not start; 4 the
node is not running (NODE_NOT_RUNNING); 5 ``doctor`` found a problem; 6 a
bounded wait ran out (TIMED_OUT); 7 ``run`` found the data dir locked by
another node (DATA_DIR_LOCKED); 130 interrupted. See :mod:`.output`.
"""

from __future__ import annotations

from .archive import backup, export, import_
from .config import DEFAULT_PORT as DEFAULT_PORT
from .doctor import doctor
from .invite import invite
from .main import cli as cli
from .main import default_data_dir as default_data_dir
from .node import init, run, show_id
from .output import EXIT_DOCTOR as EXIT_DOCTOR
from .output import EXIT_ERROR as EXIT_ERROR
from .output import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from .output import EXIT_LOCKED as EXIT_LOCKED
from .output import EXIT_NOT_RUNNING as EXIT_NOT_RUNNING
from .output import EXIT_OK as EXIT_OK
from .output import EXIT_START as EXIT_START
from .output import EXIT_TIMEOUT as EXIT_TIMEOUT
from .output import EXIT_USAGE as EXIT_USAGE
from .pairs import pair, pairs, peers, unpair
from .records import records
from .token import token

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

# The commands, in the order `fedpeer --help` lists them (click sorts them anyway).
for _command in (
    init, show_id, run, invite, pair, unpair, peers, pairs, records, token, backup, export,
    import_, doctor,
):  # fmt: skip
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``fedpeer`` console script."""
    cli()

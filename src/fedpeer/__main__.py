"""``python -m fedpeer`` runs the CLI."""

from .cli import main

main()

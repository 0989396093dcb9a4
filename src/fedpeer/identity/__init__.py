"""fedpeer.identity."""

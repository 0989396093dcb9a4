"""fedpeer.store."""

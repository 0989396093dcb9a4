"""fedpeer.sync."""

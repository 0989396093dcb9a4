"""fedpeer.peer."""

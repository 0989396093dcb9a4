"""fedpeer.consent."""

"""End-to-end tests: ``fedpeer run`` processes on network-namespace LANs (root only)."""

"""Tests for fedpeer.identity."""

"""fedpeer.sync re-exports the public names of its records and feed modules."""

from __future__ import annotations

import fedpeer.sync
from fedpeer.sync import feed, records


def test_every_public_name_of_records_and_feed_is_exported() -> None:
    exported = set(fedpeer.sync.__all__)
    for module in (records, feed):
        for name in module.__all__:
            assert name in exported, name
            assert getattr(fedpeer.sync, name) is getattr(module, name)


def test_all_lists_only_real_names() -> None:
    for name in fedpeer.sync.__all__:
        assert hasattr(fedpeer.sync, name), name
    assert sorted(fedpeer.sync.__all__) == sorted(set(fedpeer.sync.__all__))

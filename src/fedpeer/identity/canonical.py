"""Canonical encodings: JCS, DAG-CBOR, DAG-JSON, CIDs and base64url.

Everything fedpeer hashes or signs goes through this module, so every encoder
here is deterministic (one value, one byte string) and every decoder is strict
(one byte string per value; anything else is refused with a stable error code):

* :func:`jcs` - RFC 8785 canonical JSON, the signed form of JSON documents
  (manifests, invites, proofs); integers only within ``±(2**53-1)`` (I-JSON).
  :func:`jcs_received` canonicalises a received document for verification as
  every RFC 8785 implementation does (larger integers as IEEE doubles).
* :func:`dagcbor_encode` / :func:`dagcbor_decode` - strict DAG-CBOR, the
  canonical binary form of records and feed pages. The decoder raises
  ``MALFORMED`` for bytes that are not DAG-CBOR data and ``NON_CANONICAL`` for
  DAG-CBOR data in any encoding but the canonical one.
* :class:`CID` and :func:`cid_for_dagcbor` - CIDv1 (dag-cbor, sha2-256) record
  ids; text form base32 ``b...``.
* :func:`dagjson_encode` / :func:`dagjson_decode` - DAG-JSON, the JSON view of
  the same values (bytes as ``{"/": {"bytes": ...}}``, links as ``{"/": cid}``).
* :func:`b64url_encode` / :func:`b64url_decode` - unpadded base64url
  (RFC 4648 §5) for binary values in JSON documents.

The data model shared by DAG-CBOR and DAG-JSON: ``dict`` with ``str`` keys,
``list`` (``tuple`` accepted on encode), ``str``, ``bytes``, ``int`` in
``-2**64 .. 2**64-1``, finite ``float``, ``bool``, ``None`` and :class:`CID`.

All functions are pure and CPU-bound; none block on I/O. The implementations
live in private modules (``_dagcbor``, ``_dagjson``, ``_cid``, ``_jcs``, ``_b64``).
"""

from __future__ import annotations

from fedpeer.identity._b64 import b64url_decode as b64url_decode
from fedpeer.identity._b64 import b64url_encode as b64url_encode
from fedpeer.identity._cid import CID as CID
from fedpeer.identity._cid import DAG_CBOR as DAG_CBOR
from fedpeer.identity._cid import DAG_JSON as DAG_JSON
from fedpeer.identity._cid import SHA2_256 as SHA2_256
from fedpeer.identity._cid import cid_for_dagcbor as cid_for_dagcbor
from fedpeer.identity._dagcbor import MAX_DEPTH as MAX_DEPTH
from fedpeer.identity._dagcbor import dagcbor_decode as dagcbor_decode
from fedpeer.identity._dagcbor import dagcbor_encode as dagcbor_encode
from fedpeer.identity._dagjson import dagjson_decode as dagjson_decode
from fedpeer.identity._dagjson import dagjson_encode as dagjson_encode
from fedpeer.identity._jcs import jcs as jcs
from fedpeer.identity._jcs import jcs_received as jcs_received

__all__ = [
    "CID",
    "DAG_CBOR",
    "DAG_JSON",
    "MAX_DEPTH",
    "SHA2_256",
    "b64url_decode",
    "b64url_encode",
    "cid_for_dagcbor",
    "dagcbor_decode",
    "dagcbor_encode",
    "dagjson_decode",
    "dagjson_encode",
    "jcs",
    "jcs_received",
]

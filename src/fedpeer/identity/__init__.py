"""fedpeer.identity: keys, did:key, DID resolution, canonical codecs, signed documents.

Everything public in the identity layer is re-exported here; import from
``fedpeer.identity`` rather than from the modules. Only the resolver does I/O
(did:web over httpx); the rest is pure.
"""

from __future__ import annotations

from .canonical import CID as CID
from .canonical import DAG_CBOR as DAG_CBOR
from .canonical import DAG_JSON as DAG_JSON
from .canonical import MAX_DEPTH as MAX_DEPTH
from .canonical import SHA2_256 as SHA2_256
from .canonical import b64url_decode as b64url_decode
from .canonical import b64url_encode as b64url_encode
from .canonical import cid_for_dagcbor as cid_for_dagcbor
from .canonical import dagcbor_decode as dagcbor_decode
from .canonical import dagcbor_encode as dagcbor_encode
from .canonical import dagjson_decode as dagjson_decode
from .canonical import dagjson_encode as dagjson_encode
from .canonical import jcs as jcs
from .canonical import jcs_received as jcs_received
from .didkey import DID_KEY_PREFIX as DID_KEY_PREFIX
from .didkey import MULTIKEY_CONTEXT as MULTIKEY_CONTEXT
from .didkey import base58btc_decode as base58btc_decode
from .didkey import base58btc_encode as base58btc_encode
from .didkey import did_document as did_document
from .didkey import did_from_public_key as did_from_public_key
from .didkey import ed25519_from_multibase as ed25519_from_multibase
from .didkey import ed25519_multibase as ed25519_multibase
from .didkey import public_key_from_did as public_key_from_did
from .didkey import x25519_from_ed25519_public as x25519_from_ed25519_public
from .didkey import x25519_multibase as x25519_multibase
from .envelope import DEFAULT_MAX_SKEW_S as DEFAULT_MAX_SKEW_S
from .envelope import SIGNATURE_ALG as SIGNATURE_ALG
from .envelope import VerifiedDocument as VerifiedDocument
from .envelope import did_key_public_key_for as did_key_public_key_for
from .envelope import format_rfc3339 as format_rfc3339
from .envelope import parse_rfc3339 as parse_rfc3339
from .envelope import sign_document as sign_document
from .envelope import verify_document as verify_document
from .envelope import verify_document_resolved as verify_document_resolved
from .keys import PUBLIC_KEY_BYTES as PUBLIC_KEY_BYTES
from .keys import SIGNATURE_BYTES as SIGNATURE_BYTES
from .keys import SigningKey as SigningKey
from .keys import is_valid_public_key as is_valid_public_key
from .keys import verify_batch as verify_batch
from .keys import verify_signature as verify_signature
from .resolver import DidDriver as DidDriver
from .resolver import DidKeyDriver as DidKeyDriver
from .resolver import DidWebDriver as DidWebDriver
from .resolver import Lookup as Lookup
from .resolver import Resolver as Resolver
from .resolver import did_web_url as did_web_url
from .resolver import find_verification_method as find_verification_method
from .resolver import public_key_from_method as public_key_from_method
from .resolver import system_lookup as system_lookup

__all__ = [
    "CID",
    "DAG_CBOR",
    "DAG_JSON",
    "DEFAULT_MAX_SKEW_S",
    "DID_KEY_PREFIX",
    "MAX_DEPTH",
    "MULTIKEY_CONTEXT",
    "PUBLIC_KEY_BYTES",
    "SHA2_256",
    "SIGNATURE_ALG",
    "SIGNATURE_BYTES",
    "DidDriver",
    "DidKeyDriver",
    "DidWebDriver",
    "Lookup",
    "Resolver",
    "SigningKey",
    "VerifiedDocument",
    "b64url_decode",
    "b64url_encode",
    "base58btc_decode",
    "base58btc_encode",
    "cid_for_dagcbor",
    "dagcbor_decode",
    "dagcbor_encode",
    "dagjson_decode",
    "dagjson_encode",
    "did_document",
    "did_from_public_key",
    "did_key_public_key_for",
    "did_web_url",
    "ed25519_from_multibase",
    "ed25519_multibase",
    "find_verification_method",
    "format_rfc3339",
    "is_valid_public_key",
    "jcs",
    "jcs_received",
    "parse_rfc3339",
    "public_key_from_did",
    "public_key_from_method",
    "sign_document",
    "system_lookup",
    "verify_batch",
    "verify_document",
    "verify_document_resolved",
    "verify_signature",
    "x25519_from_ed25519_public",
    "x25519_multibase",
]

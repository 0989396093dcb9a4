"""The reference verifier of the conformance vectors: fedpeer's own functions.

``verdict(file, case)`` runs what a conforming receiver runs for one case and
returns ``"ok"`` or the error code; for an ``ok`` case it also checks what the
receiver derives (DIDs, CIDs, signed bytes, confirmation codes...) against the
case and raises :class:`Mismatch` when they differ. ``python -m
interop.conformance.check`` runs every case and prints a summary.

Each kind of case maps onto one public entry point of the package, the same one
the node uses on the wire: ``verify_manifest``, ``verify_document``,
``verify_record`` (through ``record_from_wire``), ``decode_page_cbor`` +
``page_from_wire``, ``Cursor.decode`` / ``resolve_since``, ``parse_invite_url``,
``check_invite_preview``, ``parse_redeem_request`` + ``verify_redeem_proof``,
``decode_txt`` + ``verify_txt``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpeer.consent.invites import (
    check_invite_preview as _check_invite_preview,
)
from fedpeer.consent.invites import (
    confirmation_code,
    parse_invite_url,
    parse_redeem_request,
    verify_redeem_proof,
)
from fedpeer.errors import FedpeerError, KeyUnknown
from fedpeer.identity.canonical import CID, b64url_decode, jcs, jcs_received
from fedpeer.identity.didkey import (
    ed25519_multibase,
    public_key_from_did,
    x25519_from_ed25519_public,
    x25519_multibase,
)
from fedpeer.identity.envelope import sign_document, verify_document
from fedpeer.identity.keys import SigningKey, is_valid_public_key
from fedpeer.peer._mdns_txt import decode_txt, signing_input, verify_txt
from fedpeer.peer.manifest import verify_manifest
from fedpeer.sync.feed import (
    Cursor,
    decode_page_cbor,
    fingerprint,
    page_from_wire,
    resolve_since,
)
from fedpeer.sync.records import DEFAULT_LIMITS, Limits, record_from_wire

HERE = Path(__file__).resolve().parent
Json = dict[str, Any]


class Mismatch(AssertionError):
    """A valid case whose derived values differ from what the vector states."""


def _expect(what: str, got: object, want: object) -> None:
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, the vector says {want!r}")


def _signed_bytes(doc: Json) -> str:
    unsigned = json.loads(json.dumps(doc))
    del unsigned["signature"]["signature"]
    return jcs_received(unsigned).decode("utf-8")


# --- one function per file ---------------------------------------------------------------


def _identity(case: Json) -> None:
    public_key = public_key_from_did(case["did"])  # DID_INVALID
    if not is_valid_public_key(public_key):
        raise KeyUnknown("the did:key's key is not a usable Ed25519 point")
    if case["expect"] != "ok":
        return
    key = SigningKey.from_seed(bytes.fromhex(case["seed_hex"]))
    _expect("public key", key.public_key.hex(), case["public_key_hex"])
    _expect("did", key.did, case["did"])
    _expect("key id", key.key_id, case["key_id"])
    _expect("multibase", ed25519_multibase(public_key), case["multibase"])
    _expect(
        "x25519",
        x25519_multibase(x25519_from_ed25519_public(public_key)),
        case["x25519_multibase"],
    )


def _signed_json(case: Json) -> None:
    kind = case["kind"]
    if kind == "sign":
        key = SigningKey.from_seed(bytes(32))
        sign_document(case["input"], key, ttl_s=60, now=0)  # must raise
        raise Mismatch("signing did not refuse the document")
    if kind == "well-known":
        verified = verify_manifest(
            case["input"], expected_did=case["expected_did"], now=case["now"]
        )
        doc = case["input"]["federation_manifest"]
    else:
        verified = verify_document(
            case["input"], expected_did=case["expected_did"], now=case["now"]
        )
        doc = case["input"]
    _expect("signer", verified.did, case["signer_did"])
    _expect("signed bytes", _signed_bytes(doc), case["signed_bytes"])


def _limits(case: Json) -> Limits:
    return Limits(**case.get("limits", {})) if "limits" in case else DEFAULT_LIMITS


def _record(case: Json) -> None:
    data = bytes.fromhex(case["data_hex"])
    item = {"cid": CID.parse(case["cid"]), "data": data, "sig": bytes.fromhex(case["sig_hex"])}
    if "float_hex" in case and bytes.fromhex(case["float_hex"]) not in data:
        raise Mismatch(f"the float bytes {case['float_hex']} are not in the record")
    signed = record_from_wire(item, limits=_limits(case), now_ms=case["now_ms"])
    _expect("author", signed.record.author, case["author"])
    _expect("cid", str(signed.cid), case["cid"])


def _feed_page(case: Json) -> None:
    page = page_from_wire(decode_page_cbor(bytes.fromhex(case["cbor_hex"])))
    cids = [str(record_from_wire(r, now_ms=case["now_ms"]).cid) for r in page.records]
    _expect("record ids", cids, case["record_cids"])
    _expect("next_cursor", page.next_cursor, case["next_cursor"])
    _expect("has_more", page.has_more, case["has_more"])


def _fingerprint_of(case: Json) -> bytes | None:
    """The fingerprint a store with ``cursor_key_hex`` gives the record ``cid_at_seq``."""
    if case.get("cid_at_seq") is None:
        return None
    key = bytes.fromhex(case["cursor_key_hex"])
    return fingerprint(bytes(CID.parse(case["cid_at_seq"])), key=key)


def _cursor(case: Json) -> None:
    if "store_epoch" in case:
        resolve_since(
            case["cursor"],
            epoch=case["store_epoch"],
            head_seq=case["head_seq"],
            fingerprint_at_seq=_fingerprint_of(case),
        )
        return
    cursor = Cursor.decode(case["cursor"])
    if case["expect"] == "ok":
        _expect("epoch", cursor.epoch, case["epoch"])
        _expect("seq", str(cursor.seq), case["seq"])
        _expect("raw", b64url_decode(case["cursor"]).hex(), case["raw_hex"])
        if case["format"] == 2:
            fp = _fingerprint_of(case) or bytes(8)
            _expect("fingerprint", fp.hex(), case["fingerprint_hex"])
            _expect("encode", Cursor(case["epoch"], int(case["seq"]), fp).encode(), case["cursor"])
        else:
            _expect("encode", Cursor(case["epoch"], int(case["seq"])).encode(), case["cursor"])


def _invite(case: Json) -> None:
    kind = case["kind"]
    if kind == "url":
        url = parse_invite_url(case["url"])
        for field in ("node_url", "invite_id", "issuer_did", "secret"):
            _expect(field, getattr(url, field), case[field])
    elif kind == "preview":
        doc = _check_invite_preview(case["preview"], parse_invite_url(case["url"]), now=case["now"])
        _expect("signed bytes", _signed_bytes(doc), case["signed_bytes"])
    elif kind == "redeem":
        request = parse_redeem_request(case["body"])
        if request.holder_type == "federated":
            assert request.proof is not None
            assert request.issued_at_ms is not None
            verify_redeem_proof(
                [public_key_from_did(request.holder_did)],
                request.proof,
                invite_id=case["invite_id"],
                audience=case["issuer_did"],
                holder_did=request.holder_did,
                issued_at_ms=request.issued_at_ms,
                now_ms=case["now_ms"],
            )
        if case["expect"] == "ok":
            _expect("holder did", request.holder_did, case["holder_did"])
            code = confirmation_code(case["issuer_did"], request.holder_did, case["invite_id"])
            _expect("confirmation code", code, case["confirmation_code"])
            if "proof_payload" in case:
                payload = {
                    "invite_id": case["invite_id"],
                    "audience": case["issuer_did"],
                    "holder_did": request.holder_did,
                    "issued_at_ms": request.issued_at_ms,
                    "purpose": "fedpeer-invite-redeem-v1",
                }
                _expect("proof payload", jcs(payload).decode(), case["proof_payload"])
    elif kind == "confirmation-code":
        code = confirmation_code(case["issuer_did"], case["holder_did"], case["invite_id"])
        _expect("confirmation code", code, case["confirmation_code"])
        hashed = jcs([case["issuer_did"], case["holder_did"], case["invite_id"]]).decode()
        _expect("hashed", hashed, case["hashed"])
    else:
        raise Mismatch(f"unknown invite case kind {kind!r}")


def _mdns(case: Json) -> None:
    txt = decode_txt(case["txt"])
    ann = verify_txt(txt, expected_did=case.get("expected_did"), now=case["now"])
    if case["expect"] != "ok":
        return
    want = case["announcement"]
    got = {
        "did": ann.did,
        "handle": ann.handle,
        "port": ann.port,
        "namespaces": list(ann.namespaces),
        "capabilities": list(ann.capabilities),
        "seq": ann.seq,
        "expires_at": ann.expires_at,
        "extra": dict(ann.extra),
    }
    _expect("announcement", got, want)
    _expect("signed bytes", signing_input(txt).hex(), case["signed_bytes_hex"])


CHECKS: dict[str, Callable[[Json], None]] = {
    "identities.json": _identity,
    "signed-json.json": _signed_json,
    "records.json": _record,
    "feed-pages.json": _feed_page,
    "cursors.json": _cursor,
    "invites.json": _invite,
    "mdns-txt.json": _mdns,
}


def verdict(file: str, case: Json) -> str:
    """``"ok"`` or the error code fedpeer reports for ``case`` of vector ``file``.

    Raises :class:`Mismatch` when an accepted case derives other values than the
    vector states, or when a ``message_contains`` is not in the error's message.
    """
    try:
        CHECKS[file](case)
    except FedpeerError as err:
        wanted = case.get("message_contains")
        if wanted is not None and wanted not in err.message:
            raise Mismatch(f"{wanted!r} is not in the message {err.message!r}") from None
        return err.code
    return "ok"


def load(file: str, directory: Path = HERE) -> Json:
    """The parsed vector file ``file``."""
    value: Json = json.loads((directory / file).read_text(encoding="utf-8"))
    return value


def main() -> int:
    failures = 0
    total = 0
    for file in CHECKS:
        for case in load(file)["cases"]:
            total += 1
            try:
                got = verdict(file, case)
            except Mismatch as exc:
                got = f"mismatch: {exc}"
            if got != case["expect"]:
                failures += 1
                print(f"FAIL {file} {case['name']}: expected {case['expect']}, got {got}")
    print(f"{total - failures}/{total} cases as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

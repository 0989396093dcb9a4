#!/usr/bin/env python3
"""Independent fedpeer protocol-1 client written only from docs/protocol.md.

Written by an implementer who read the spec (and the public vectors) and never
the source or the tests of fedpeer; kept here as it was, lint aside, so the spec
keeps being enough (interop/test_spec_client.py runs it against a real node).
Where the spec was silent it logs a WARNING instead of guessing.

Dependencies: stdlib, httpx (+ its httpcore), pynacl, cryptography (TLS pin only).
No fedpeer import.

  client.py --invite 'https://127.0.0.1:PORT/v1/invites/<id>?issuer=did:key:...&pin=...#secret=...'
  client.py --base https://127.0.0.1:PORT --did did:key:... --token fp_...
  optional: --append-token TOKEN  (a records:write token used to append one record
            during the longpoll; without it the client waits for someone else to append)
"""

import argparse
import base64
import hashlib
import json
import math
import re
import ssl
import struct
import sys
import threading
import time
import urllib.parse

import httpcore
import httpx
import nacl.bindings as sodium
import nacl.signing

# ----------------------------------------------------------------------------
# errors


class SpecError(Exception):
    def __init__(self, code, msg=""):
        super().__init__(f"{code}: {msg}")
        self.code = code


def fail(code, msg=""):
    raise SpecError(code, msg)


LOG = []


def log(step, msg):
    line = f"[{step}] {msg}"
    LOG.append(line)
    print(line, flush=True)


# ----------------------------------------------------------------------------
# §1.3 base64url / base64 (strict)

_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_B64STD_RE = re.compile(r"^[A-Za-z0-9+/]*$")


def b64url_encode(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _b64_strict(s, regex, altchars, code):
    if not isinstance(s, str) or not regex.match(s) or len(s) % 4 == 1:
        fail(code, f"bad base64 {s!r:.60}")
    raw = base64.b64decode(s + "=" * (-len(s) % 4), altchars=altchars, validate=True)
    again = base64.b64encode(raw, altchars=altchars).rstrip(b"=").decode()
    if again != s:
        fail(code, "non-canonical base64 (unused bits)")
    return raw


def b64url_decode(s, code="MALFORMED"):
    return _b64_strict(s, _B64URL_RE, b"-_", code)


def b64std_decode(s, code="MALFORMED"):
    return _b64_strict(s, _B64STD_RE, b"+/", code)


# ----------------------------------------------------------------------------
# §2.1 did:key, base58btc

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(b: bytes) -> str:
    n = int.from_bytes(b, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(b) - len(b.lstrip(b"\0"))) + out


def b58decode(s: str) -> bytes:
    n = 0
    for c in s:
        i = B58.find(c)
        if i < 0:
            fail("DID_INVALID", "not base58")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(s) - len(s.lstrip("1"))) + body


def did_from_pub(pub: bytes) -> str:
    return "did:key:z" + b58encode(b"\xed\x01" + pub)


def pub_from_did(did) -> bytes:
    if not isinstance(did, str) or not did.startswith("did:key:z"):
        fail("DID_INVALID", f"not a did:key {did!r:.80}")
    mb = did[len("did:key:z") :]
    if not mb or any(c not in B58 for c in mb):
        fail("DID_INVALID", "did:key with non-base58 characters / DID URL")
    raw = b58decode(mb)
    if raw[:2] != b"\xed\x01" or len(raw) != 34:
        fail("DID_INVALID", "not an Ed25519 did:key of 32 bytes")
    if did_from_pub(raw[2:]) != did:
        fail("DID_INVALID", "non-canonical base58")
    return raw[2:]


def usable_point(pub: bytes) -> bool:
    return len(pub) == 32 and bool(sodium.crypto_core_ed25519_is_valid_point(pub))


def ed25519_verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    if len(sig) != 64 or not usable_point(pub):
        return False
    try:
        nacl.signing.VerifyKey(pub).verify(msg, sig)  # libsodium: strict S<L, R not small order
        return True
    except Exception:
        return False


# §2.2 key ids
_KEYID_RE = re.compile(
    r"^did:[a-z0-9]+:(?:(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})*:)*(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})+#[\x21-\x22\x24-\x7e]+$"
)


def key_from_key_id(key_id: str) -> tuple:
    did, frag = key_id.split("#", 1)
    if not did.startswith("did:key:"):
        fail("KEY_UNKNOWN", "only did:key resolved by this client")
    try:
        pub = pub_from_did(did)
    except SpecError:
        fail("KEY_UNKNOWN", "bad did:key")
    if frag != did[len("did:key:") :]:
        fail("KEY_UNKNOWN", "fragment is not the did:key's own multibase")
    if not usable_point(pub):
        fail("KEY_UNKNOWN", "unusable Ed25519 point")
    return did, pub


# ----------------------------------------------------------------------------
# §3.1 JCS (RFC 8785)


def es_number(x) -> str:
    """ECMAScript Number::toString for an IEEE double."""
    if isinstance(x, bool):
        raise TypeError
    if isinstance(x, int):
        if abs(x) <= 2**53 - 1:
            return str(x)
        x = float(x)  # OverflowError beyond double range -> caller maps to BAD_SIGNATURE
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN/Infinity has no JSON form")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + es_number(-x)
    r = repr(x)  # shortest round-trip digits
    mant, _, exp = r.partition("e")
    exp = int(exp) if exp else 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = (ip + fp).lstrip("0")
    # position of decimal point relative to the start of ip+fp
    lead_zeros = len(ip + fp) - len((ip + fp).lstrip("0"))
    n = len(ip) + exp - lead_zeros
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    es = ("+" if e >= 0 else "-") + str(abs(e))
    if k == 1:
        return digits + "e" + es
    return digits[0] + "." + digits[1:] + "e" + es


def _jcs_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jcs(v) -> bytes:
    def ser(v):
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if isinstance(v, (int, float)):
            return es_number(v)
        if isinstance(v, str):
            return _jcs_str(v)
        if isinstance(v, list):
            return "[" + ",".join(ser(x) for x in v) + "]"
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
            return "{" + ",".join(_jcs_str(k) + ":" + ser(v[k]) for k in keys) + "}"
        raise TypeError(f"not JSON: {type(v)}")

    return ser(v).encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------
# §1.4 / §4 signed JSON documents

_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")


def parse_time(s) -> int:
    import calendar
    import datetime

    m = _TIME_RE.match(s) if isinstance(s, str) else None
    if not m:
        fail("BAD_SIGNATURE", f"bad time {s!r}")
    try:
        dt = datetime.datetime(*map(int, m.groups()), tzinfo=datetime.UTC)
    except ValueError:
        fail("BAD_SIGNATURE", f"not a calendar second {s!r}")
    return calendar.timegm(dt.timetuple())


def verify_signed_document(doc, expected_did=None, now=None) -> str:
    """§4.4. Returns the signer's DID."""
    now = time.time() if now is None else now
    # 1. shape
    if not isinstance(doc, dict) or not isinstance(doc.get("signature"), dict):
        fail("BAD_SIGNATURE", "no signature object")
    sig = doc["signature"]
    if set(sig) != {"alg", "key_id", "signed_at", "expires_at", "signature"}:
        fail("BAD_SIGNATURE", f"signature members {sorted(sig)}")
    if sig["alg"] != "Ed25519":
        fail("BAD_SIGNATURE", "alg")
    kid = sig["key_id"]
    if not isinstance(kid, str) or len(kid) > 2048 or not _KEYID_RE.match(kid):
        fail("BAD_SIGNATURE", "key_id syntax")
    signed_at = parse_time(sig["signed_at"])
    expires_at = parse_time(sig["expires_at"])
    if expires_at < signed_at:
        fail("BAD_SIGNATURE", "expires_at < signed_at")
    raw_sig = b64url_decode(sig["signature"], "BAD_SIGNATURE")
    if len(raw_sig) != 64:
        fail("BAD_SIGNATURE", "signature not 64 bytes")
    signer = kid.split("#", 1)[0]
    # 2. expected signer
    if expected_did is not None and signer != expected_did:
        fail("DID_MISMATCH", f"signed by {signer}, expected {expected_did}")
    # 3. key
    _, pub = key_from_key_id(kid)
    # 4. signature over JCS(doc minus signature.signature)
    body = dict(doc)
    body["signature"] = {k: v for k, v in sig.items() if k != "signature"}
    try:
        msg = jcs(body)
    except (ValueError, OverflowError, TypeError):
        fail("BAD_SIGNATURE", "cannot canonicalise")
    if not ed25519_verify(pub, msg, raw_sig):
        fail("BAD_SIGNATURE", "signature does not verify")
    # 5. time
    if now < signed_at - 300:
        fail("SIGNATURE_NOT_YET_VALID")
    if now > expires_at + 300:
        fail("SIGNATURE_EXPIRED")
    return signer


# ----------------------------------------------------------------------------
# §3.2 strict DAG-CBOR decoder / canonical encoder, §3.4 CIDs


class CID:
    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        check_cid_bytes(raw)
        self.raw = bytes(raw)

    def __eq__(self, o):
        return isinstance(o, CID) and o.raw == self.raw

    def __hash__(self):
        return hash(self.raw)

    def text(self):
        if self.raw[:2] == b"\x12\x20" and len(self.raw) == 34:
            return b58encode(self.raw)
        return "b" + base64.b32encode(self.raw).decode().rstrip("=").lower()

    __str__ = text

    def __repr__(self):
        return f"CID({self.text()})"


def _uvarint(b: bytes, i: int):
    n = shift = 0
    start = i
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            break
    if i - start > 1 and b[i - 1] == 0:
        raise ValueError("non-minimal varint")
    return n, i


def check_cid_bytes(raw: bytes):
    if len(raw) == 34 and raw[:2] == b"\x12\x20":
        return  # CIDv0
    try:
        ver, i = _uvarint(raw, 0)
        if ver != 1:
            raise ValueError("version")
        _codec, i = _uvarint(raw, i)
        _hc, i = _uvarint(raw, i)
        ln, i = _uvarint(raw, i)
        if len(raw) - i != ln:
            raise ValueError("digest length")
    except ValueError as e:
        fail("MALFORMED", f"bad CID: {e}")


def is_record_id(c) -> bool:
    return isinstance(c, CID) and len(c.raw) == 36 and c.raw[:4] == b"\x01\x71\x12\x20"


def record_cid(data: bytes) -> CID:
    return CID(b"\x01\x71\x12\x20" + hashlib.sha256(data).digest())


def parse_cid_text(s: str) -> CID:
    if s.startswith("Qm"):
        return CID(b58decode(s))
    if s.startswith("b"):
        t = s[1:]
        if t != t.lower():
            fail("MALFORMED", "base32 must be lower case")
        try:
            raw = base64.b32decode(t.upper() + "=" * (-len(t) % 8))
        except Exception:
            fail("MALFORMED", "bad base32")
        c = CID(raw)
        if c.text() != s:
            fail("MALFORMED", "non-canonical CID text")
        return c
    fail("MALFORMED", "unsupported CID multibase in this client")


class _NonCanonical(Exception):
    pass


def dagcbor_decode(data: bytes):
    """Strict decode. MALFORMED for non-data-model bytes, NON_CANONICAL for other
    encodings of a data-model value. Also re-encodes and compares bytes."""
    noncanon = []

    def head(i):
        if i >= len(data):
            fail("MALFORMED", "truncated")
        ib = data[i]
        mt, ai = ib >> 5, ib & 31
        i += 1
        if ai < 24:
            return mt, ai, ai, i
        if ai in (24, 25, 26, 27):
            n = 1 << (ai - 24)
            if i + n > len(data):
                fail("MALFORMED", "truncated head")
            val = int.from_bytes(data[i : i + n], "big")
            if mt != 7:
                minimal = (
                    (val >= 24 and ai == 24)
                    or (val > 0xFF and ai == 25)
                    or (val > 0xFFFF and ai == 26)
                    or (val > 0xFFFFFFFF and ai == 27)
                )
                if not minimal:
                    noncanon.append("long integer/length head")
            return mt, ai, val, i + n
        if ai == 31:
            return mt, ai, None, i  # indefinite
        fail("MALFORMED", "reserved additional info")

    def item(i, depth):
        mt, ai, val, i = head(i)
        if mt in (0, 1):
            if val is None:
                fail("MALFORMED", "indefinite int")
            return (val if mt == 0 else -1 - val), i
        if mt in (2, 3):
            if val is None:
                # indefinite string: decode chunks to report NON_CANONICAL
                chunks = []
                while True:
                    if i >= len(data):
                        fail("MALFORMED", "truncated")
                    if data[i] == 0xFF:
                        i += 1
                        break
                    cmt, _, cval, i = head(i)
                    if cmt != mt or cval is None:
                        fail("MALFORMED", "bad chunk")
                    chunks.append(data[i : i + cval])
                    i += cval
                noncanon.append("indefinite length")
                raw = b"".join(chunks)
            else:
                if i + val > len(data):
                    fail("MALFORMED", "truncated string")
                raw = data[i : i + val]
                i += val
            if mt == 2:
                return raw, i
            try:
                return raw.decode("utf-8"), i
            except UnicodeDecodeError:
                fail("MALFORMED", "invalid UTF-8")
        if mt in (4, 5):
            if depth + 1 > 256:
                fail("MALFORMED", "too deep")
            if mt == 4:
                out = []
                if val is None:
                    noncanon.append("indefinite length")
                    while True:
                        if i >= len(data):
                            fail("MALFORMED", "truncated")
                        if data[i] == 0xFF:
                            return out, i + 1
                        v, i = item(i, depth + 1)
                        out.append(v)
                for _ in range(val):
                    v, i = item(i, depth + 1)
                    out.append(v)
                return out, i
            out = {}
            prev = None
            count = 0
            while True:
                if val is None:
                    if i >= len(data):
                        fail("MALFORMED", "truncated")
                    if data[i] == 0xFF:
                        i += 1
                        noncanon.append("indefinite length")
                        break
                elif count == val:
                    break
                kstart = i
                k, i = item(i, depth + 1)
                if not isinstance(k, str):
                    fail("MALFORMED", "non-text map key")
                kenc = data[kstart:i]
                if prev is not None and (len(kenc), kenc) <= (len(prev), prev):
                    noncanon.append("unsorted or duplicate keys")
                prev = kenc
                v, i = item(i, depth + 1)
                if k in out:
                    noncanon.append("duplicate key")
                out[k] = v
                count += 1
            return out, i
        if mt == 6:
            if val != 42:
                fail("MALFORMED", f"tag {val}")
            b, i = item(i, depth)
            if not isinstance(b, bytes) or not b or b[0] != 0:
                fail("MALFORMED", "bad tag-42 payload")
            return CID(b[1:]), i
        # mt == 7
        if ai == 20:
            return False, i
        if ai == 21:
            return True, i
        if ai == 22:
            return None, i
        if ai in (25, 26, 27):
            raw = data[i - (1 << (ai - 24)) : i]
            f = {
                25: lambda r: struct.unpack(">e", r)[0],
                26: lambda r: struct.unpack(">f", r)[0],
                27: lambda r: struct.unpack(">d", r)[0],
            }[ai](raw)
            if math.isnan(f) or math.isinf(f):
                fail("MALFORMED", "NaN/Infinity")
            if ai != 27:
                noncanon.append("short float")
            return f, i
        fail("MALFORMED", f"simple value {ai}")

    value, end = item(0, 0)
    if end != len(data):
        fail("MALFORMED", "trailing bytes")
    if noncanon:
        fail("NON_CANONICAL", noncanon[0])
    if dagcbor_encode(value) != data:  # belt and braces: own canonical encoder
        fail("NON_CANONICAL", "re-encoding differs")
    return value


def _head(mt, n):
    if n < 24:
        return bytes([(mt << 5) | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < (1 << (8 * size)):
            return bytes([(mt << 5) | ai]) + n.to_bytes(size, "big")
    raise ValueError("integer out of range")


def dagcbor_encode(v) -> bytes:
    if v is None:
        return b"\xf6"
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("NaN/Infinity")
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode("utf-8")
        return _head(3, len(b)) + b
    if isinstance(v, CID):
        return b"\xd8\x2a" + dagcbor_encode(b"\x00" + v.raw)
    if isinstance(v, (list, tuple)):
        return _head(4, len(v)) + b"".join(dagcbor_encode(x) for x in v)
    if isinstance(v, dict):
        items = sorted(((dagcbor_encode(k), k) for k in v), key=lambda t: (len(t[0]), t[0]))
        for _kenc, k in items:
            if not isinstance(k, str):
                raise ValueError("non-text key")
        return _head(5, len(v)) + b"".join(kenc + dagcbor_encode(v[k]) for kenc, k in items)
    raise TypeError(type(v))


# ----------------------------------------------------------------------------
# §5 records

_NAME_RE = re.compile(r"^[A-Za-z0-9._:@/+-]{1,256}$")
MAX_RECORD = 1048576
SAFE = 2**53 - 1


def _body_rules(v, depth, path):
    if isinstance(v, float):
        if v.is_integer() and -SAFE <= v <= SAFE:
            fail("RECORD_INVALID", f"whole-number float at {path}")
    elif isinstance(v, list):
        if depth + 1 > 32:
            fail("RECORD_INVALID", "body too deep")
        for n, x in enumerate(v):
            _body_rules(x, depth + 1, f"{path}[{n}]")
    elif isinstance(v, dict):
        if depth + 1 > 32:
            fail("RECORD_INVALID", "body too deep")
        if v:
            first_keys = {next(iter(v)), min(v, key=lambda k: k.encode())}
            if "/" in first_keys:
                slash = v["/"]
                if isinstance(slash, str) or (
                    isinstance(slash, dict)
                    and slash
                    and ("bytes" in {next(iter(slash)), min(slash, key=lambda k: k.encode())})
                    and isinstance(slash.get("bytes"), str)
                ):
                    fail("RECORD_INVALID", f"DAG-JSON-reserved map at {path}")
        for k, x in v.items():
            _body_rules(x, depth + 1, f"{path}[{k!r}]")


def verify_record(data: bytes, sig: bytes, expected_cid=None, now_ms=None):
    """§5.5 in order. Returns (CID, record map)."""
    if len(data) > MAX_RECORD:
        fail("RECORD_TOO_LARGE")
    rec = dagcbor_decode(data)
    keys = {"v", "ts", "body", "kind", "clock", "author", "thread", "parents", "namespace"}
    if not isinstance(rec, dict) or set(rec) != keys:
        fail("RECORD_INVALID", "record keys")
    if type(rec["v"]) is not int or rec["v"] != 1:
        fail("RECORD_INVALID", "v")
    for k in ("author", "namespace", "thread", "kind"):
        if not isinstance(rec[k], str):
            fail("RECORD_INVALID", f"{k} type")
    for k in ("clock", "ts"):
        if type(rec[k]) is not int:
            fail("RECORD_INVALID", f"{k} type")
    if not isinstance(rec["parents"], list) or not all(isinstance(p, CID) for p in rec["parents"]):
        fail("RECORD_INVALID", "parents type")
    cid = record_cid(data)
    if expected_cid is not None and expected_cid != cid:
        fail("RECORD_INVALID", "cid does not match content")
    pub = pub_from_did(rec["author"])
    if not ed25519_verify(pub, cid.raw, sig):
        fail("BAD_SIGNATURE")
    for k in ("namespace", "thread", "kind"):
        if not _NAME_RE.match(rec[k]) or rec[k].startswith("/"):
            fail("RECORD_INVALID", f"{k} name")
    ps = rec["parents"]
    if len(ps) > 64 or len(set(ps)) != len(ps) or not all(is_record_id(p) for p in ps):
        fail("RECORD_INVALID", "parents")
    for k in ("clock", "ts"):
        if not 0 <= rec[k] <= SAFE:
            fail("RECORD_INVALID", f"{k} range")
    _body_rules(rec["body"], 0, "body")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if rec["ts"] > now_ms + 600000:
        fail("RECORD_FROM_FUTURE")
    return cid, rec


def verify_wire_item(item, allow_seq=False):
    """§5.6 closed shape {cid, data, sig} (+seq where §9 says so)."""
    want = {"cid", "data", "sig"}
    if not isinstance(item, dict) or not (
        set(item) == want or (allow_seq and set(item) == want | {"seq"})
    ):
        fail(
            "MALFORMED", f"wire item keys {sorted(item) if isinstance(item, dict) else type(item)}"
        )
    if (
        not isinstance(item["cid"], CID)
        or not isinstance(item["data"], bytes)
        or not isinstance(item["sig"], bytes)
    ):
        fail("MALFORMED", "wire item types")
    return verify_record(item["data"], item["sig"], item["cid"])


def json_bytes(v):
    """DAG-JSON bytes {"/": {"bytes": b64}} -> bytes."""
    if (
        isinstance(v, dict)
        and list(v) == ["/"]
        and isinstance(v["/"], dict)
        and list(v["/"]) == ["bytes"]
    ):
        return b64std_decode(v["/"]["bytes"])
    fail("MALFORMED", "not DAG-JSON bytes")


def json_link(v):
    if isinstance(v, dict) and list(v) == ["/"] and isinstance(v["/"], str):
        return parse_cid_text(v["/"])
    fail("MALFORMED", "not a DAG-JSON link")


# ----------------------------------------------------------------------------
# §8.3 cursors (decoded only to check pages, §8.7)


def decode_cursor(c):
    if not isinstance(c, str) or not 1 <= len(c) <= 256 or not all(0x20 < ord(x) < 0x7F for x in c):
        fail("PAGE_INVALID", "next_cursor not 1..256 printable ASCII")
    try:
        raw = b64url_decode(c)
    except SpecError:
        fail("PAGE_INVALID", "cursor not base64url")
    if len(raw) == 33 and raw[0] == 2:
        epoch, seq, fp = raw[1:17], struct.unpack(">q", raw[17:25])[0], raw[25:]
    elif len(raw) == 25 and raw[0] == 1:
        epoch, seq, fp = raw[1:17], struct.unpack(">q", raw[17:25])[0], None
    else:
        fail("PAGE_INVALID", "unknown cursor format")
    if seq < 0 or (seq == 0 and fp not in (None, b"\0" * 8)):
        fail("PAGE_INVALID", "bad cursor seq/fingerprint")
    return epoch, seq


# ----------------------------------------------------------------------------
# §6.6 TLS pin


def spki_pin_from_der_cert(der: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url_encode(hashlib.sha256(spki).digest())


def _any_cert_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the DID vouches via the pin, not a CA
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _PinnedStream(httpcore.NetworkStream):
    def __init__(self, inner, backend):
        self._inner, self._backend = inner, backend

    def read(self, max_bytes, timeout=None):
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer, timeout=None):
        return self._inner.write(buffer, timeout)

    def close(self):
        self._inner.close()

    def get_extra_info(self, info):
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        s = self._inner.start_tls(ssl_context, server_hostname, timeout)
        der = s.get_extra_info("ssl_object").getpeercert(True)
        pin = spki_pin_from_der_cert(der)
        self._backend.seen.append(pin)
        if pin not in self._backend.accepted:
            s.close()  # nothing written yet: the handshake is all that happened
            raise SpecError("TLS_PIN_MISMATCH", f"served pin {pin} not in {self._backend.accepted}")
        return _PinnedStream(s, self._backend)


class PinningBackend(httpcore.NetworkBackend):
    """Checks the pin right after the handshake, before any request byte is written."""

    def __init__(self, accepted):
        self.accepted = list(accepted)
        self.seen = []
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _PinnedStream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self
        )

    def connect_unix_socket(self, *a, **k):
        raise RuntimeError("unused")

    def sleep(self, seconds):
        time.sleep(seconds)


def make_client(base, accepted_pins=None):
    common = dict(
        base_url=base,
        follow_redirects=False,
        timeout=httpx.Timeout(20.0),
        headers={"Accept-Encoding": "identity"},
        trust_env=False,
    )
    if base.startswith("https://"):
        transport = httpx.HTTPTransport(verify=_any_cert_ctx(), trust_env=False)
        backend = PinningBackend(accepted_pins or [])
        transport._pool = httpcore.ConnectionPool(
            ssl_context=_any_cert_ctx(), network_backend=backend
        )
        client = httpx.Client(transport=transport, **common)
        client.pin_backend = backend
        return client
    return httpx.Client(**common)


# ----------------------------------------------------------------------------
# HTTP helpers (caps of §8.7, error envelope of §13.1)


def request(client, method, url, cap=12 * 1024 * 1024, deadline=60.0, **kw):
    start = time.monotonic()
    with client.stream(method, url, **kw) as r:
        if 300 <= r.status_code < 400:
            fail("REDIRECT_REFUSED", f"{r.status_code} {r.headers.get('location')}")
        if r.headers.get("content-encoding", "identity") != "identity":
            fail("PEER_INVALID", "compressed answer")
        cl = r.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > cap:
            fail("PAGE_TOO_LARGE", f"Content-Length {cl}")
        buf = bytearray()
        for chunk in r.iter_raw():
            buf += chunk
            if len(buf) > cap:
                fail("PAGE_TOO_LARGE")
            if time.monotonic() - start > deadline:
                fail("PEER_TOO_SLOW")
        body = bytes(buf)
        ctype = r.headers.get("content-type", "").split(";")[0].strip()
        if r.status_code >= 400:
            try:
                err = json.loads(body)["error"]
                code = err["code"]
                msg = err.get("message", "")
            except Exception:
                code, msg = f"HTTP_{r.status_code}", body[:200].decode("latin-1")
            raise SpecError(code, f"HTTP {r.status_code}: {msg}")
        return r.status_code, ctype, body, r


def dag_json_loads(b: bytes):
    def no_dups(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                fail("MALFORMED", f"duplicate JSON key {k}")
            d[k] = v
        return d

    return json.loads(b.decode("utf-8"), object_pairs_hook=no_dups)


# ----------------------------------------------------------------------------
# §6.6 identity check + §7.4 manifest verification


def identity_check(base, expected_did, oob_pin=None):
    """Returns (answer, accepted pins or None for plain http)."""
    served_pin = None
    with httpx.Client(
        verify=_any_cert_ctx(),
        follow_redirects=False,
        timeout=20.0,
        headers={"Accept-Encoding": "identity", "Accept": "application/json"},
        trust_env=False,
    ) as c:
        _status, _ctype, body, r = request(c, "GET", base + "/.well-known/fedpeer", cap=256 * 1024)
        if base.startswith("https://"):
            ssl_obj = r.extensions["network_stream"].get_extra_info("ssl_object")
            served_pin = spki_pin_from_der_cert(ssl_obj.getpeercert(True))
    answer = dag_json_loads(body)
    # §7.4 1.
    if not isinstance(answer, dict) or not isinstance(answer.get("federation_manifest"), dict):
        fail("PEER_INVALID", "no federation_manifest map")
    fm = answer["federation_manifest"]
    # §7.4 2.
    signer = verify_signed_document(fm, expected_did)
    # §7.4 3./4.
    if fm.get("type") != "fedpeer-federation-manifest":
        fail("PEER_INVALID", "type")
    if fm.get("did") != signer:
        fail("DID_MISMATCH", "manifest did != signer")
    cm = answer.get("capabilities_manifest")
    log(
        "manifest",
        f"verified: signer {signer}, handle {fm.get('handle')!r}, v {fm.get('v')}, "
        f"protocol {cm.get('protocol') if isinstance(cm, dict) else None}, "
        f"expires {fm['signature']['expires_at']}",
    )
    if isinstance(cm, dict) and cm.get("did") not in (None, signer):
        log("manifest", "WARNING capabilities_manifest.did differs from the signer")
    cwant = {
        "protocol",
        "software",
        "did",
        "feeds",
        "encodings",
        "limits",
        "scopes",
        "holder_types",
    }
    fwant = {
        "type",
        "v",
        "did",
        "handle",
        "urls",
        "endpoints",
        "namespaces",
        "consent",
        "signature",
    }
    if isinstance(cm, dict) and (cwant - set(cm)):
        log("manifest", f"WARNING capabilities manifest lacks {sorted(cwant - set(cm))}")
    if fwant - set(fm):
        log("manifest", f"WARNING federation manifest lacks {sorted(fwant - set(fm))}")
    if fm.get("v") != 1 or (isinstance(cm, dict) and cm.get("protocol") != "fedpeer/1"):
        log("manifest", "WARNING not v 1 / fedpeer/1")
    log(
        "manifest",
        f"urls {fm.get('urls')}, consent {fm.get('consent')}, endpoints {fm.get('endpoints')}",
    )
    accepted = None
    if base.startswith("https://"):
        pins = fm.get("tls_spki_sha256")
        if not (
            isinstance(pins, list)
            and 1 <= len(pins) <= 4
            and all(isinstance(p, str) and len(p) == 43 and _B64URL_RE.match(p) for p in pins)
        ):
            fail("PEER_INVALID", f"tls_spki_sha256 {pins!r}")
        if served_pin not in pins:
            fail("TLS_PIN_MISMATCH", f"served {served_pin} not in manifest {pins}")
        if oob_pin is not None and served_pin != oob_pin:
            fail("TLS_PIN_MISMATCH", f"served {served_pin} != invite pin {oob_pin}")
        log(
            "tls",
            f"served pin {served_pin} is in the signed manifest {pins}"
            + (" and equals the invite pin" if oob_pin else ""),
        )
        accepted = pins
    else:
        if "tls_spki_sha256" in fm:
            log("tls", "note: plain-http node lists tls_spki_sha256")
    return answer, accepted


# ----------------------------------------------------------------------------
# §10 invites


_INVITE_PATH_RE = re.compile(r"^(.*)/v1/invites/([0-9a-f]{32})$")


def parse_invite_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        fail("MALFORMED", "scheme/host")
    m = _INVITE_PATH_RE.match(u.path)
    if not m:
        fail("MALFORMED", "path")
    q = urllib.parse.parse_qs(u.query, keep_blank_values=True, strict_parsing=False)
    if len(q.get("issuer", [])) != 1:
        fail("MALFORMED", "issuer")
    issuer = q["issuer"][0]
    try:
        pub_from_did(issuer)
    except SpecError:
        fail("DID_INVALID", "issuer")
    pins = q.get("pin", [])
    if len(pins) > 1 or (pins and not (len(pins[0]) == 43 and _B64URL_RE.match(pins[0]))):
        fail("MALFORMED", "pin")
    f = urllib.parse.parse_qs(u.fragment, keep_blank_values=True)
    secrets = f.get("secret", [])
    if len(secrets) != 1 or len(secrets[0]) != 43 or not _B64URL_RE.match(secrets[0]):
        fail("MALFORMED", "secret")
    b64url_decode(secrets[0])
    base = f"{u.scheme}://{u.netloc}{m.group(1)}"
    return dict(
        base=base,
        invite_id=m.group(2),
        issuer=issuer,
        pin=pins[0] if pins else None,
        secret=secrets[0],
    )


def confirmation_code(issuer_did, holder_did, invite_id):
    h = hashlib.sha256(jcs([issuer_did, holder_did, invite_id])).digest()
    return f"{int.from_bytes(h[:8], 'big') % 1000000:06d}"


def redeem_federated(client, inv):
    # §10.2 preview checks
    _, _, body, _ = request(
        client,
        "GET",
        f"/v1/invites/{inv['invite_id']}",
        headers={"Accept": "application/json"},
        cap=256 * 1024,
    )
    pv = dag_json_loads(body)
    state = pv.get("state")
    if state in ("revoked", "exhausted", "expired"):
        fail(
            {
                "revoked": "INVITE_REVOKED",
                "exhausted": "INVITE_EXHAUSTED",
                "expired": "INVITE_EXPIRED",
            }[state]
        )
    if "invite" not in pv:
        fail("PEER_INVALID", "no signed invite in preview")
    doc = pv["invite"]
    verify_signed_document(doc, inv["issuer"])
    if doc.get("type") != "fedpeer-invite" or doc.get("invite_id") != inv["invite_id"]:
        fail("PEER_INVALID", "invite type/id")
    if doc.get("issuer") != inv["issuer"]:
        fail("PEER_INVALID", "invite issuer")
    log(
        "invite",
        f"preview ok: state {state}, scopes {doc.get('scopes')}, target {doc.get('scope_target')}, "
        f"holders {doc.get('accept_holder_types')}, uses_remaining {pv.get('uses_remaining')}",
    )
    if "federated" not in doc.get("accept_holder_types", []):
        fail("HOLDER_TYPE_MISMATCH", "invite does not accept federated holders")
    if not {"sync:read", "admin"} & set(doc.get("scopes", [])):
        fail("INVALID_REQUEST", "invite offers no sync:read")
    # §10.4 proof with a fresh did:key
    sk = nacl.signing.SigningKey.generate()
    holder_did = did_from_pub(bytes(sk.verify_key))
    issued = int(time.time() * 1000)
    payload = {
        "audience": inv["issuer"],
        "holder_did": holder_did,
        "invite_id": inv["invite_id"],
        "issued_at_ms": issued,
        "purpose": "fedpeer-invite-redeem-v1",
    }
    proof = b64url_encode(sk.sign(jcs(payload)).signature)
    req = {
        "holder_type": "federated",
        "secret": inv["secret"],
        "holder_did": holder_did,
        "holder_proof": proof,
        "holder_proof_issued_at_ms": issued,
        "holder_label": "spec client",
    }
    status, _, body, _ = request(
        client,
        "POST",
        f"/v1/invites/{inv['invite_id']}/redeem",
        content=json.dumps(req).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    ans = dag_json_loads(body)
    if status != 201:
        fail("PEER_INVALID", f"redeem status {status}")
    if ans.get("issuer_did") != inv["issuer"] or ans.get("actor_did") != holder_did:
        fail("PEER_INVALID", "issuer_did/actor_did")
    want = {
        "token",
        "token_id",
        "service_account_id",
        "expires_ms",
        "actor_did",
        "holder_type",
        "issuer_did",
        "invite_id",
        "scopes",
        "scope_target",
        "grant_id",
        "confirmation_code",
    }
    if want - set(ans):
        log("redeem", f"WARNING answer lacks {sorted(want - set(ans))}")
    mine = confirmation_code(inv["issuer"], holder_did, inv["invite_id"])
    if ans.get("confirmation_code") != mine:
        fail("PEER_INVALID", f"confirmation code {ans.get('confirmation_code')} != {mine}")
    log(
        "redeem",
        f"201 as federated {holder_did[:24]}...; confirmation code {mine} matches; "
        f"scopes {ans.get('scopes')}, target {ans.get('scope_target')}, "
        f"reverse_pair {ans.get('reverse_pair', '(absent)')}",
    )
    return ans["token"], holder_did


# ----------------------------------------------------------------------------
# §8 changes feed, §8.7 page checks


def _page_record_count_prefix(body: bytes):
    """§8.7: a canonical page starts with a 3-entry map head and the key `records`."""
    if not body.startswith(b"\xa3\x67records"):
        return None
    rest = body[9:]
    mt = rest[0] >> 5 if rest else None
    if mt != 4:
        return None
    ai = rest[0] & 31
    if ai < 24:
        return ai
    n = 1 << (ai - 24)
    return int.from_bytes(rest[1 : 1 + n], "big")


def get_page(client, token, since, limit, feed="normal", timeout=None, extra=None):
    params = {"limit": str(limit), "feed": feed}
    if since:
        params["since"] = since
    if timeout is not None:
        params["timeout"] = str(timeout)
    params.update(extra or {})
    _status, ctype, body, _ = request(
        client,
        "GET",
        "/v1/sync/changes",
        params=params,
        deadline=60.0 + (timeout or 0),
        headers={"Accept": "application/cbor", "Authorization": f"Bearer {token}"},
    )
    if ctype != "application/cbor":
        fail("PAGE_INVALID", f"content-type {ctype}")
    n = _page_record_count_prefix(body)
    if n is not None and n > limit:
        fail("PAGE_TOO_LARGE", f"{n} > limit {limit}")
    try:
        page = dagcbor_decode(body)
    except SpecError as e:
        fail("PAGE_INVALID", f"page not strict DAG-CBOR: {e}")
    return page, len(body)


def check_page(page, sent_cursor, limit, seen):
    if not isinstance(page, dict) or set(page) != {"records", "next_cursor", "has_more"}:
        fail("PAGE_INVALID", "page keys")
    if not isinstance(page["records"], list) or not isinstance(page["has_more"], bool):
        fail("PAGE_INVALID", "records/has_more types")
    epoch, seq = decode_cursor(page["next_cursor"])
    if sent_cursor:
        e0, s0 = decode_cursor(sent_cursor)
        if e0 != epoch:
            fail("PAGE_INVALID", "epoch changed")
        if seq < s0:
            fail("PAGE_INVALID", "cursor went backwards")
        if (page["records"] or page["has_more"]) and seq <= s0:
            fail("PAGE_INVALID", "cursor did not move forward")
    elif (page["records"] or page["has_more"]) and seq <= 0:
        fail("PAGE_INVALID", "cursor did not move forward")
    if len(page["records"]) > limit:
        fail("PAGE_INVALID", "more records than limit")
    out = []
    for item in page["records"]:
        cid, rec = verify_wire_item(item)
        if cid in seen:
            fail("PAGE_INVALID", f"duplicate record {cid}")
        seen.add(cid)
        out.append((cid, rec))
    return out, seq


def pull_all(client, token, limit):
    seen, cursor, pages, total = set(), None, 0, []
    while True:
        page, nbytes = get_page(client, token, cursor, limit)
        recs, seq = check_page(page, cursor, limit, seen)
        pages += 1
        total += recs
        log(
            "feed",
            f"page {pages}: {len(recs)} records verified, {nbytes} bytes, cursor seq {seq}, "
            f"has_more {page['has_more']}",
        )
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return cursor, total, seen
        if pages > 10000:
            fail("PAGE_INVALID", "feed does not end")


# ----------------------------------------------------------------------------
# --probe: extra experiments against the live node (negative cases, shapes)


def _code(fn):
    try:
        fn()
        return "ok"
    except SpecError as e:
        return e.code


def probe_before_redeem(base, inv, pins, expected):
    bogus = "A" * 43
    log(
        "probe",
        "identity check with a wrong invite pin -> "
        + _code(lambda: identity_check(base, expected, bogus))
        + " (want TLS_PIN_MISMATCH)",
    )
    other = did_from_pub(bytes(nacl.signing.SigningKey.generate().verify_key))
    log(
        "probe",
        "identity check expecting another DID -> "
        + _code(lambda: identity_check(base, other))
        + " (want DID_MISMATCH)",
    )
    if pins:
        with make_client(base, [bogus]) as c:
            log(
                "probe",
                "pinned client with a wrong accepted set, GET /health -> "
                + _code(lambda: request(c, "GET", "/health"))
                + " (want TLS_PIN_MISMATCH, nothing sent)",
            )
    with make_client(base, pins) as c:
        _, _, b, _ = request(
            c, "GET", f"/v1/invites/{inv['invite_id']}", headers={"Accept": "application/json"}
        )
        pv = dag_json_loads(b)
        want = {
            "invite_id",
            "issuer_did",
            "state",
            "expires_ms",
            "uses_remaining",
            "scopes",
            "scope_target",
            "accept_holder_types",
            "device_label",
            "invite",
        }
        log(
            "probe",
            f"preview members missing {sorted(want - set(pv))}, extra {sorted(set(pv) - want)}",
        )
        dwant = {
            "type",
            "v",
            "invite_id",
            "issuer",
            "scopes",
            "scope_target",
            "accept_holder_types",
            "max_uses",
            "expires_ms",
            "token_ttl_s",
            "device_label",
            "signature",
        }
        log(
            "probe",
            f"invite doc missing {sorted(dwant - set(pv['invite']))}, "
            f"extra {sorted(set(pv['invite']) - dwant)}",
        )

        def redeem(secret=None, issued=None, tamper=False, extra=None, ctype="application/json"):
            sk = nacl.signing.SigningKey.generate()
            hd = did_from_pub(bytes(sk.verify_key))
            issued = int(time.time() * 1000) if issued is None else issued
            payload = {
                "audience": inv["issuer"],
                "holder_did": hd,
                "invite_id": inv["invite_id"],
                "issued_at_ms": issued,
                "purpose": "fedpeer-invite-redeem-v1",
            }
            sig = sk.sign(jcs(payload)).signature
            if tamper:
                sig = bytes([sig[0] ^ 1]) + sig[1:]
            body = {
                "holder_type": "federated",
                "secret": secret or inv["secret"],
                "holder_did": hd,
                "holder_proof": b64url_encode(sig),
                "holder_proof_issued_at_ms": issued,
            }
            body.update(extra or {})
            content = (
                dagcbor_encode(body) if ctype == "application/cbor" else json.dumps(body).encode()
            )
            request(
                c,
                "POST",
                f"/v1/invites/{inv['invite_id']}/redeem",
                content=content,
                headers={"Content-Type": ctype, "Accept": "application/json"},
            )

        log(
            "probe",
            "redeem wrong secret -> "
            + _code(lambda: redeem(secret="x" * 43))
            + " (want INVITE_SECRET_INVALID)",
        )
        log(
            "probe",
            "redeem tampered proof -> " + _code(lambda: redeem(tamper=True)) + " (want BAD_PROOF)",
        )
        log(
            "probe",
            "redeem proof 61 s old -> "
            + _code(lambda: redeem(issued=int(time.time() * 1000) - 61000))
            + " (want FRESHNESS_VIOLATION)",
        )
        log(
            "probe",
            "redeem with unknown member -> "
            + _code(lambda: redeem(extra={"zz": 1}))
            + " (want INVALID_REQUEST)",
        )
        log(
            "probe",
            "redeem as guest body w/o pubkey -> "
            + _code(
                lambda: request(
                    c,
                    "POST",
                    f"/v1/invites/{inv['invite_id']}/redeem",
                    content=json.dumps({"holder_type": "guest", "secret": inv["secret"]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
            )
            + " (spec: not stated)",
        )


def probe_after_feed(client, token, cursor, limit):
    h = {"Authorization": f"Bearer {token}"}
    t = time.monotonic()
    page, _ = get_page(client, token, cursor, limit, feed="longpoll", timeout=1)
    log(
        "probe",
        f"idle longpoll timeout=1: {time.monotonic() - t:.2f}s, {len(page['records'])} records, "
        f"cursor same {page['next_cursor'] == cursor}, has_more {page['has_more']}",
    )
    _, _ctype, b, r = request(
        client,
        "GET",
        "/v1/sync/changes",
        params={"limit": "1"},
        headers=dict(h, Accept="application/json"),
    )
    jp = dag_json_loads(b)
    log(
        "probe",
        f"JSON page keys {sorted(jp)}, "
        f"item keys {sorted(jp['records'][0]) if jp['records'] else None}, "
        f"cursor {jp['next_cursor']}, ratelimit headers "
        f"{[k for k in r.headers if k.lower().startswith('x-ratelimit')]}",
    )
    for q, want in (
        (dict(limit="0"), "INVALID_REQUEST"),
        (dict(feed="x"), "INVALID_REQUEST"),
        (dict(since="AAAA"), "CURSOR_INVALID"),
        (dict(timeout="1e3", feed="longpoll"), "INVALID_REQUEST"),
        (dict(namespace="zzz/"), "CONSENT_DENIED?"),
    ):
        log(
            "probe",
            f"changes {q} -> "
            + _code(
                lambda q=q: request(
                    client,
                    "GET",
                    "/v1/sync/changes",
                    params=q,
                    headers=dict(h, Accept="application/cbor"),
                )
            )
            + f" (want {want})",
        )
    log(
        "probe",
        "changes with a junk token -> "
        + _code(
            lambda: request(
                client, "GET", "/v1/sync/changes", headers={"Authorization": "Bearer fp_nope"}
            )
        )
        + " (want TOKEN_INVALID)",
    )
    log(
        "probe",
        "changes without a token -> "
        + _code(lambda: request(client, "GET", "/v1/sync/changes"))
        + " (want AUTH_REQUIRED)",
    )
    e, s = decode_cursor(cursor)
    reset = b64url_encode(b"\x02" + e + struct.pack(">q", s + 100) + b"\0" * 8)
    log(
        "probe",
        "cursor past head -> "
        + _code(
            lambda: request(client, "GET", "/v1/sync/changes", params={"since": reset}, headers=h)
        )
        + " (want CURSOR_RESET)",
    )
    v1 = b64url_encode(b"\x01" + e + struct.pack(">q", s))
    _st, _, b, _ = request(
        client,
        "GET",
        "/v1/sync/changes",
        params={"since": v1},
        headers=dict(h, Accept="application/cbor"),
    )
    pg = dagcbor_decode(b)
    log(
        "probe",
        "format-1 cursor at head accepted: next_cursor format byte "
        f"{b64url_decode(pg['next_cursor'])[0]}",
    )
    log(
        "probe",
        "batch with a non-CID string -> "
        + _code(
            lambda: request(
                client,
                "POST",
                "/v1/sync/records",
                content=json.dumps({"ids": ["nope"]}).encode(),
                headers=dict(h, **{"Content-Type": "application/json"}),
            )
        )
        + " (want MALFORMED)",
    )
    log(
        "probe",
        "batch with a non-canonical CBOR body -> "
        + _code(
            lambda: request(
                client,
                "POST",
                "/v1/sync/records",
                content=b"\xa1\x63ids\x9f\xff",
                headers=dict(h, **{"Content-Type": "application/cbor"}),
            )
        )
        + " (want NON_CANONICAL)",
    )


# ----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--invite")
    ap.add_argument("--base")
    ap.add_argument(
        "--did", help="expected node DID (required with --token; checked against the invite)"
    )
    ap.add_argument("--token")
    ap.add_argument("--append-token")
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--probe", action="store_true", help="also run negative/shape experiments")
    a = ap.parse_args()
    t0 = time.monotonic()

    if a.invite:
        inv = parse_invite_url(a.invite)
        base, expected = inv["base"], inv["issuer"]
        if a.did and a.did != expected:
            fail("DID_MISMATCH", "invite issuer != --did")
        log(
            "invite",
            f"parsed: base {base}, id {inv['invite_id']}, issuer {expected}, pin {inv['pin']}",
        )
    else:
        if not (a.base and a.token and a.did):
            ap.error("--base, --did and --token are needed without --invite")
        inv, base, expected = None, a.base.rstrip("/"), a.did

    # 1. identity check (§6.6, §7.4)
    answer, pins = identity_check(base, expected, inv["pin"] if inv else None)
    cm = answer.get("capabilities_manifest") or {}
    page_max = (cm.get("limits") or {}).get("page_limit_max", 10000)
    client = make_client(base, pins)

    if a.probe and inv:
        probe_before_redeem(base, inv, pins, expected)

    # 2. redeem (§10)
    if inv:
        token, _holder = redeem_federated(client, inv)
    else:
        token = a.token

    # 3. changes feed (§8), CBOR, every record checked (§5.5, §5.6, §8.7)
    limit = min(a.limit, page_max)
    cursor, records, seen = pull_all(client, token, limit)
    log(
        "feed",
        f"caught up: {len(records)} records; "
        f"namespaces {sorted({r['namespace'] for _, r in records})}",
    )
    if not records:
        fail("PEER_INVALID", "no visible records to test with")

    if a.probe:
        probe_after_feed(client, token, cursor, limit)

    # 4a. longpoll (§8.4) returning when a record lands
    appended = {}

    def appender():
        time.sleep(1.5)
        ns = records[0][1]["namespace"]
        th = records[0][1]["thread"]
        with make_client(base, pins) as c2:
            st, _, b, _ = request(
                c2,
                "POST",
                "/v1/records",
                content=json.dumps(
                    {
                        "namespace": ns,
                        "thread": th,
                        "kind": "item",
                        "body": {"from": "spec client longpoll", "x": 0.25},
                    }
                ).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Authorization": f"Bearer {a.append_token}",
                },
            )
            appended.update(dag_json_loads(b))
            appended["status"] = st

    th = None
    if a.append_token:
        th = threading.Thread(target=appender, daemon=True)
        th.start()
    lp_t = time.monotonic()
    page, _ = get_page(client, token, cursor, limit, feed="longpoll", timeout=20)
    waited = time.monotonic() - lp_t
    new, _ = check_page(page, cursor, limit, seen)
    if th:
        th.join(10)
    log(
        "longpoll",
        f"returned after {waited:.2f}s with {len(new)} record(s) "
        f"{[str(c) for c, _ in new]}; append answer {appended}",
    )
    if not new:
        fail("PEER_INVALID", "longpoll returned no record")
    if appended and str(new[0][0]) != appended.get("cid"):
        log("longpoll", "WARNING first longpoll record is not the one appended")
    all_ids = [c for c, _ in records] + [c for c, _ in new]

    # 4b. batch fetch (§9.1): CBOR body with links + one unknown id + a repeat
    unknown = record_cid(b"\xa0")  # CID of an empty map: surely not held
    ids = [all_ids[-1], all_ids[0], unknown, all_ids[0]]
    body = dagcbor_encode({"ids": ids})
    _, _ctype, raw, _ = request(
        client,
        "POST",
        "/v1/sync/records",
        content=body,
        headers={
            "Content-Type": "application/cbor",
            "Accept": "application/cbor",
            "Authorization": f"Bearer {token}",
        },
    )
    ans = dagcbor_decode(raw)
    if (
        not isinstance(ans, dict)
        or not isinstance(ans.get("records"), list)
        or not isinstance(ans.get("missing"), list)
    ):
        fail("MALFORMED", f"batch answer keys {sorted(ans) if isinstance(ans, dict) else ans}")
    got = [verify_wire_item(it)[0] for it in ans["records"]]
    missing = [parse_cid_text(m) for m in ans["missing"]]
    later = ans.get("later", [])
    log(
        "batch",
        f"CBOR: {len(got)} verified {[str(c)[:16] for c in got]}, "
        f"missing {[str(m)[:16] for m in missing]}, "
        f"later {later}, keys {sorted(ans)}",
    )
    if got != [all_ids[-1], all_ids[0]] or missing != [unknown]:
        log("batch", "WARNING unexpected batch result (order / dedupe / missing)")

    # same in JSON with CID text: JSON views, verified from data/sig/cid only (§5.7)
    _, _ctype, raw, _ = request(
        client,
        "POST",
        "/v1/sync/records",
        content=json.dumps({"ids": [str(i) for i in ids]}).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {token}",
        },
    )
    ans = dag_json_loads(raw)
    got_j = [
        verify_record(json_bytes(it["data"]), json_bytes(it["sig"]), json_link(it["cid"]))[0]
        for it in ans["records"]
    ]
    log(
        "batch",
        f"JSON: {len(got_j)} verified, missing {len(ans['missing'])}, item keys "
        f"{sorted(ans['records'][0]) if ans['records'] else None}",
    )
    if got_j != got:
        log("batch", "WARNING JSON and CBOR batch answers differ")

    log("done", f"all steps passed in {time.monotonic() - t0:.1f}s")
    client.close()


if __name__ == "__main__":
    try:
        main()
    except SpecError as e:
        print(f"FAILED {e}", flush=True)
        sys.exit(2)

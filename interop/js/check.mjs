// An independent checker of fedpeer's conformance vectors (docs/protocol.md, Appendix A).
//
// Written from the protocol text, not from the Python code, with other libraries:
// @noble/curves (Ed25519, strict RFC 8032 plus a prime-order point check), canonicalize
// (RFC 8785 JCS), @ipld/dag-cbor and multiformats (DAG-CBOR, CIDs, base58btc/base32),
// node:crypto (SHA-256), and a small strict CBOR scanner of its own for the canonical-form
// rules of protocol.md §3.2 (a JavaScript DAG-CBOR decoder cannot see whole-number floats:
// it reads 1.0 as 1, which is the reason for §5.4).
//
// For every case it computes the verdict ("ok" or an error code) by the rules of the
// section the case names and compares it with the case's "expect"; for valid cases it also
// re-derives what the case states (DIDs, public keys, signed bytes, CIDs, record ids,
// confirmation codes). Usage: node check.mjs [vector dir]. Prints one line per failure and
// a JSON summary as the last line; exits 1 if any case disagrees.

import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

import * as dagCbor from '@ipld/dag-cbor'
import { ed25519 } from '@noble/curves/ed25519.js'
import canonicalize from 'canonicalize'
import { base32 } from 'multiformats/bases/base32'
import { base58btc } from 'multiformats/bases/base58'
import { CID } from 'multiformats/cid'

const here = dirname(fileURLToPath(import.meta.url))
const dir = process.argv[2] ?? join(here, '..', 'conformance')

class Refused extends Error {
  constructor (code, message) {
    super(`${code}: ${message}`)
    this.code = code
  }
}
const refuse = (code, message) => { throw new Refused(code, message) }
class Mismatch extends Error {}
const expectEq = (what, got, want) => {
  const g = JSON.stringify(got)
  const w = JSON.stringify(want)
  if (g !== w) throw new Mismatch(`${what}: got ${g}, the vector says ${w}`)
}

const te = new TextEncoder()
const hex = (u8) => Buffer.from(u8).toString('hex')
const fromHex = (h) => new Uint8Array(Buffer.from(h, 'hex'))
const sha256 = (u8) => new Uint8Array(createHash('sha256').update(u8).digest())
const concat = (...parts) => new Uint8Array(Buffer.concat(parts.map((p) => Buffer.from(p))))
const MAX_SAFE = 2 ** 53 - 1

// --- §1.3 strict base64url ------------------------------------------------------------------

function b64urlDecode (text, code) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    refuse(code, 'not unpadded base64url')
  }
  const raw = new Uint8Array(Buffer.from(text, 'base64url'))
  if (Buffer.from(raw).toString('base64url') !== text) refuse(code, 'non-canonical base64url')
  return raw
}
const b64url = (u8) => Buffer.from(u8).toString('base64url')

// --- §2 identities ------------------------------------------------------------------------------

function keyFromDid (did) {
  if (typeof did !== 'string' || !did.startsWith('did:key:z') || did.length > 64) {
    refuse('DID_INVALID', 'not a did:key:z...')
  }
  let raw
  try {
    raw = base58btc.decode(did.slice('did:key:'.length))
  } catch {
    refuse('DID_INVALID', 'not base58btc')
  }
  if (raw.length !== 34 || raw[0] !== 0xed || raw[1] !== 0x01) {
    refuse('DID_INVALID', 'not an ed25519-pub multicodec key of 32 bytes')
  }
  return raw.slice(2)
}

function usableKey (pub) {
  // §2.3: canonical encoding of a point of the prime-order subgroup, not of small order.
  try {
    const p = ed25519.Point.fromBytes(pub, false)
    return !p.isSmallOrder() && p.isTorsionFree() && hex(p.toBytes()) === hex(pub)
  } catch {
    return false
  }
}

function verifyEd25519 (pub, message, sig) {
  if (sig.length !== 64) return false
  try {
    return ed25519.verify(sig, message, pub, { zip215: false })
  } catch {
    return false
  }
}

const multibaseEd = (pub) => base58btc.encode(concat([0xed, 0x01], pub))
const multibaseX = (pub) => base58btc.encode(concat([0xec, 0x01], pub))

function checkIdentity (c) {
  const pub = keyFromDid(c.did)
  if (!usableKey(pub)) refuse('KEY_UNKNOWN', 'not a usable Ed25519 point')
  if (c.expect !== 'ok') return
  expectEq('public key', hex(ed25519.getPublicKey(fromHex(c.seed_hex))), c.public_key_hex)
  expectEq('public key from DID', hex(pub), c.public_key_hex)
  expectEq('did', 'did:key:' + multibaseEd(pub), c.did)
  expectEq('key id', `${c.did}#${multibaseEd(pub)}`, c.key_id)
  expectEq('multibase', multibaseEd(pub), c.multibase)
  expectEq('x25519', multibaseX(ed25519.utils.toMontgomery(pub)), c.x25519_multibase)
}

// --- §4 signed JSON documents ---------------------------------------------------------------------

const KEY_ID_RE = /^(did:[a-z0-9]+:[A-Za-z0-9._%:-]*[A-Za-z0-9._%-])#([!-"$-~]+)$/
const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/

function parseTime (text) {
  const m = typeof text === 'string' ? TIME_RE.exec(text) : null
  if (!m) refuse('BAD_SIGNATURE', 'a time is YYYY-MM-DDTHH:MM:SSZ')
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number)
  const t = Date.UTC(y, mo - 1, d, h, mi, s)
  const back = new Date(t)
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d ||
      back.getUTCHours() !== h || back.getUTCMinutes() !== mi || back.getUTCSeconds() !== s) {
    refuse('BAD_SIGNATURE', 'not a real calendar second')
  }
  return t / 1000
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v)

// The §4.4 steps; returns { did, signedBytes }.
function verifyDocument (doc, { expectedDid, now }) {
  if (!isObject(doc)) refuse('BAD_SIGNATURE', 'not an object')
  const sig = doc.signature
  if (!isObject(sig)) refuse('BAD_SIGNATURE', 'no signature object')
  const members = Object.keys(sig).sort().join(',')
  if (members !== 'alg,expires_at,key_id,signature,signed_at') {
    refuse('BAD_SIGNATURE', `signature members ${members}`)
  }
  if (sig.alg !== 'Ed25519') refuse('BAD_SIGNATURE', 'alg is not Ed25519')
  if (typeof sig.key_id !== 'string' || sig.key_id.length > 2048) refuse('BAD_SIGNATURE', 'key_id')
  const m = KEY_ID_RE.exec(sig.key_id)
  if (!m) refuse('BAD_SIGNATURE', 'key_id is not a DID URL with a fragment')
  const signedAt = parseTime(sig.signed_at)
  const expiresAt = parseTime(sig.expires_at)
  if (expiresAt < signedAt) refuse('BAD_SIGNATURE', 'expires before signed')
  const signature = b64urlDecode(sig.signature, 'BAD_SIGNATURE')
  if (signature.length !== 64) refuse('BAD_SIGNATURE', 'not 64 bytes')
  const did = m[1]
  if (expectedDid != null && did !== expectedDid) refuse('DID_MISMATCH', `signed by ${did}`)
  // §2.2 offline did:key lookup
  if (!did.startsWith('did:key:')) refuse('KEY_UNKNOWN', 'not a did:key')
  let pub
  try {
    pub = keyFromDid(did)
  } catch {
    refuse('KEY_UNKNOWN', 'invalid did:key')
  }
  if (m[2] !== did.slice('did:key:'.length)) refuse('KEY_UNKNOWN', 'another fragment')
  if (!usableKey(pub)) refuse('KEY_UNKNOWN', 'unusable key')
  const unsigned = { ...doc, signature: { ...sig } }
  delete unsigned.signature.signature
  const text = canonicalize(unsigned) // §3.1: numbers as the doubles JSON.parse gave
  if (text === undefined) refuse('BAD_SIGNATURE', 'not canonicalizable')
  if (!verifyEd25519(pub, te.encode(text), signature)) refuse('BAD_SIGNATURE', 'does not verify')
  if (now < signedAt - 300) refuse('SIGNATURE_NOT_YET_VALID', 'not yet valid')
  if (now > expiresAt + 300) refuse('SIGNATURE_EXPIRED', 'expired')
  return { did, signedBytes: text }
}

function checkSignedJson (c) {
  if (c.kind === 'sign') {
    // §4.3: a signer refuses integers outside ±(2^53-1). JSON.parse already turned them
    // into doubles; find one by its magnitude.
    const walk = (v) => (typeof v === 'number' ? Number.isInteger(v) && Math.abs(v) > MAX_SAFE
      : Array.isArray(v) ? v.some(walk) : isObject(v) ? Object.values(v).some(walk) : false)
    if (walk(c.input)) refuse('MALFORMED', 'an integer beyond I-JSON')
    return
  }
  let doc = c.input
  if (c.kind === 'well-known') {
    if (!isObject(c.input) || !isObject(c.input.federation_manifest)) {
      refuse('PEER_INVALID', 'no federation_manifest')
    }
    doc = c.input.federation_manifest
  }
  const { did, signedBytes } = verifyDocument(doc, { expectedDid: c.expected_did, now: c.now })
  if (c.kind === 'well-known') {
    if (doc.type !== 'fedpeer-federation-manifest') refuse('PEER_INVALID', 'wrong type')
    if (doc.did !== did) refuse('DID_MISMATCH', 'did member differs from the signer')
  }
  if (c.expect === 'ok') {
    expectEq('signer', did, c.signer_did)
    expectEq('signed bytes', signedBytes, c.signed_bytes)
  }
}

// --- §3.2 a strict CBOR scanner ----------------------------------------------------------------------

// Walks the bytes once: MALFORMED problems (anything outside the DAG-CBOR data model or not one
// item) win over NON_CANONICAL ones (a valid value, not in its one encoding), as in §3.2.
// Also reports the first whole-number float (§5.4) in document order with its path.
function scanCbor (bytes) {
  let malformed = null
  let nonCanonical = null
  let wholeFloat = null
  const bad = (why) => { malformed ??= why }
  const nc = (why) => { nonCanonical ??= why }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let i = 0
  const need = (n) => { if (i + n > bytes.length) throw new Refused('MALFORMED', 'truncated') }
  function head () {
    need(1)
    const ib = bytes[i++]
    const major = ib >> 5
    const info = ib & 31
    if (info < 24) return { major, info, arg: BigInt(info) }
    if (info <= 27) {
      const size = 1 << (info - 24)
      need(size)
      let arg = 0n
      for (let k = 0; k < size; k++) arg = (arg << 8n) | BigInt(bytes[i + k])
      i += size
      const min = size === 1 ? 24n : 1n << BigInt(4 * size)
      if (major !== 7 && arg < min) nc('integer or length not in its shortest form')
      return { major, info, arg }
    }
    if (info === 31) return { major, info, arg: null }
    bad('reserved additional information')
    return { major, info, arg: 0n }
  }
  function item (path, depth) {
    const start = i
    const { major, info, arg } = head()
    if (info === 31) {
      if (major === 7) { bad('unexpected break'); return }
      if (major < 2 || major === 6) { bad('indefinite length not allowed here'); return }
      nc('indefinite length')
      if (major === 2 || major === 3) {
        for (;;) { need(1); if (bytes[i] === 0xff) { i++; break } item(path, depth) }
      } else if (major === 4) {
        let k = 0
        for (;;) { need(1); if (bytes[i] === 0xff) { i++; break } item(`${path}[${k++}]`, depth + 1) }
      } else {
        for (;;) { need(1); if (bytes[i] === 0xff) { i++; break } item(path, depth + 1); item(path, depth + 1) }
      }
      return
    }
    switch (major) {
      case 0: case 1: return
      case 2: need(Number(arg)); i += Number(arg); return
      case 3: {
        need(Number(arg))
        try {
          new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(i, i + Number(arg)))
        } catch { bad('invalid UTF-8') }
        i += Number(arg)
        return
      }
      case 4: {
        if (depth >= 256) { bad('nested deeper than 256'); throw new Refused('MALFORMED', 'too deep') }
        for (let k = 0; k < Number(arg); k++) item(`${path}[${k}]`, depth + 1)
        return
      }
      case 5: {
        if (depth >= 256) { bad('nested deeper than 256'); throw new Refused('MALFORMED', 'too deep') }
        let prev = null
        for (let k = 0; k < Number(arg); k++) {
          const ks = i
          need(1)
          if (bytes[i] >> 5 !== 3) bad('map key is not text')
          item(path, depth + 1)
          const key = bytes.subarray(ks, i)
          const keyText = Buffer.from(key.subarray(key.length - Number(textLen(key)))).toString('utf8')
          if (prev !== null) {
            const cmp = Buffer.compare(Buffer.from(prev), Buffer.from(key))
            if (cmp === 0) nc('duplicate map key')
            else if (prev.length > key.length || (prev.length === key.length && cmp > 0)) nc('map keys out of order')
          }
          prev = key
          const step = /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(keyText) ? `.${keyText}` : `[${JSON.stringify(keyText)}]`
          item(path + step, depth + 1)
        }
        return
      }
      case 6: {
        if (arg !== 42n) { bad(`tag ${arg}`); item(path, depth); return }
        need(1)
        const inner = head()
        if (inner.major !== 2 || inner.arg === null) { bad('tag 42 must hold bytes'); return }
        need(Number(inner.arg))
        const content = bytes.subarray(i, i + Number(inner.arg))
        i += Number(inner.arg)
        if (content.length < 2 || content[0] !== 0) { bad('tag 42 content'); return }
        try { CID.decode(content.subarray(1)) } catch { bad('not a CID') }
        return
      }
      case 7: {
        if (info === 20 || info === 21 || info === 22) return
        if (info === 25 || info === 26) {
          const v = info === 25 ? halfToNumber(Number(arg)) : new DataView(new Uint32Array([Number(arg)]).buffer).getFloat32(0, true)
          if (!Number.isFinite(v)) bad('NaN or Infinity')
          nc(`${info === 25 ? 16 : 32}-bit float`)
          return
        }
        if (info === 27) {
          const v = dv.getFloat64(start + 1)
          if (!Number.isFinite(v)) { bad('NaN or Infinity'); return }
          if (Number.isSafeInteger(v) && wholeFloat === null) wholeFloat = { path, value: v }
          return
        }
        bad('simple value other than false, true, null')
        return
      }
    }
  }
  function textLen (key) {
    // the argument of a text head at the start of `key`
    const info = key[0] & 31
    if (info < 24) return info
    let n = 0
    const size = 1 << (info - 24)
    for (let k = 1; k <= size; k++) n = n * 256 + key[k]
    return n
  }
  try {
    if (bytes.length === 0) return { verdict: 'MALFORMED', why: 'empty' }
    item('$', 0)
    if (i !== bytes.length) bad('trailing bytes')
  } catch (e) {
    if (e instanceof Refused) return { verdict: 'MALFORMED', why: e.message }
    throw e
  }
  if (malformed) return { verdict: 'MALFORMED', why: malformed }
  if (nonCanonical) return { verdict: 'NON_CANONICAL', why: nonCanonical }
  return { verdict: 'ok', wholeFloat }
}

function halfToNumber (h) {
  const e = (h >> 10) & 31
  const f = h & 1023
  const s = h >> 15 ? -1 : 1
  if (e === 0) return s * f * 2 ** -24
  if (e === 31) return f ? NaN : s * Infinity
  return s * (1 + f / 1024) * 2 ** (e - 15)
}

// Strict decode (§3.2): the scanner's verdict, then @ipld/dag-cbor for the value and, unless a
// whole-number float makes it impossible in JavaScript, a byte-exact re-encode.
function decodeStrict (bytes) {
  const scan = scanCbor(bytes)
  if (scan.verdict !== 'ok') refuse(scan.verdict, scan.why)
  let value
  try {
    value = dagCbor.decode(bytes)
  } catch (e) {
    refuse('MALFORMED', e.message)
  }
  const again = dagCbor.encode(value)
  if (scan.wholeFloat === null && hex(again) !== hex(bytes)) {
    throw new Mismatch('canonical by the scanner but @ipld/dag-cbor re-encodes other bytes')
  }
  if (scan.wholeFloat !== null && hex(again) === hex(bytes)) {
    throw new Mismatch('a whole-number float survived a JavaScript round trip (§5.4 says it cannot)')
  }
  return { value, wholeFloat: scan.wholeFloat }
}

// --- §5 records ---------------------------------------------------------------------------------------

const NAME_RE = /^[A-Za-z0-9._:@+-][A-Za-z0-9._:@/+-]*$/
const RECORD_KEYS = 'author,body,clock,kind,namespace,parents,thread,ts,v'
const isInt = (v) => (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint'
const isRecordId = (cid) => cid.version === 1 && cid.code === 0x71 &&
  cid.multihash.code === 0x12 && cid.multihash.size === 32

function bodyProblem (body, maxDepth) {
  const stack = [[body, 0]]
  while (stack.length) {
    const [v, depth] = stack.pop()
    const container = Array.isArray(v) || (isObject(v) && !(v instanceof Uint8Array) && CID.asCID(v) === null)
    if (!container) continue
    if (depth + 1 > maxDepth) return `body nests deeper than ${maxDepth}`
    if (!Array.isArray(v)) {
      const keys = Object.keys(v).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
      if (keys[0] === '/') {
        const inner = v['/']
        if (typeof inner === 'string') return 'reserved link map'
        if (isObject(inner) && typeof inner.bytes === 'string' &&
            Object.keys(inner).sort()[0] === 'bytes') return 'reserved bytes map'
      }
    }
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1])
  }
  return null
}

// §5.5, for a wire item {cid, data, sig}. Returns { cid, author }.
function verifyRecord ({ cid, data, sig }, { nowMs, limits }) {
  if (data.length > limits.max_record_bytes) refuse('RECORD_TOO_LARGE', 'over the size limit')
  const { value: rec, wholeFloat } = decodeStrict(data)
  if (!isObject(rec) || CID.asCID(rec) !== null) refuse('RECORD_INVALID', 'not a map')
  if (Object.keys(rec).sort().join(',') !== RECORD_KEYS) refuse('RECORD_INVALID', 'keys')
  if (rec.v !== 1) refuse('RECORD_INVALID', 'version')
  for (const k of ['author', 'namespace', 'thread', 'kind']) {
    if (typeof rec[k] !== 'string') refuse('RECORD_INVALID', `${k} is not text`)
  }
  if (!Array.isArray(rec.parents) || !rec.parents.every((p) => CID.asCID(p) !== null)) {
    refuse('RECORD_INVALID', 'parents are links')
  }
  if (!isInt(rec.clock) || !isInt(rec.ts)) refuse('RECORD_INVALID', 'clock and ts are integers')
  const id = CID.createV1(0x71, { code: 0x12, size: 32, digest: sha256(data), bytes: concat([0x12, 0x20], sha256(data)) })
  if (cid !== null && !cid.equals(id)) refuse('RECORD_INVALID', 'cid does not match content')
  const pub = keyFromDid(rec.author)
  if (!usableKey(pub)) refuse('BAD_SIGNATURE', 'the author key is not usable')
  if (sig.length !== 64 || !verifyEd25519(pub, id.bytes, sig)) refuse('BAD_SIGNATURE', 'does not verify')
  for (const k of ['namespace', 'thread', 'kind']) {
    const n = [...rec[k]].length
    if (n < 1 || n > limits.max_name_len || !NAME_RE.test(rec[k])) refuse('RECORD_INVALID', `bad ${k}`)
  }
  if (rec.parents.length > limits.max_parents) refuse('RECORD_INVALID', 'too many parents')
  if (new Set(rec.parents.map(String)).size !== rec.parents.length) refuse('RECORD_INVALID', 'repeated parent')
  if (!rec.parents.every(isRecordId)) refuse('RECORD_INVALID', 'a parent is not a record id')
  for (const k of ['clock', 'ts']) {
    const v = rec[k]
    if (typeof v === 'bigint' || v < 0 || v > MAX_SAFE) refuse('RECORD_INVALID', `${k} out of range`)
  }
  const problem = bodyProblem(rec.body, limits.max_body_depth)
  if (problem) refuse('RECORD_INVALID', problem)
  if (wholeFloat !== null) {
    // the scanner's path is from the record root: $.body.a[2] -> body.a[2]
    refuse('RECORD_INVALID', `${wholeFloat.path.slice(2)} is a whole-number float`)
  }
  if (rec.ts > nowMs + limits.max_future_ms) refuse('RECORD_FROM_FUTURE', 'ts too far ahead')
  return { cid: id, author: rec.author }
}

let recordDefaults = null

function checkRecord (c) {
  const data = fromHex(c.data_hex)
  if (c.float_hex && !hex(data).includes(c.float_hex)) throw new Mismatch('float bytes not in data')
  const limits = { ...recordDefaults, ...(c.limits ?? {}) }
  try {
    const got = verifyRecord({ cid: CID.parse(c.cid), data, sig: fromHex(c.sig_hex) }, { nowMs: c.now_ms, limits })
    expectEq('cid', got.cid.toString(), c.cid)
    expectEq('author', got.author, c.author)
  } catch (e) {
    if (e instanceof Refused && c.message_contains && !e.message.includes(c.message_contains)) {
      throw new Mismatch(`${JSON.stringify(c.message_contains)} is not in ${JSON.stringify(e.message)}`)
    }
    throw e
  }
}

// --- §8.2 pages, §8.3 cursors ------------------------------------------------------------------------

function checkPage (c) {
  const { value: page } = decodeStrict(fromHex(c.cbor_hex))
  if (!isObject(page) || Object.keys(page).sort().join(',') !== 'has_more,next_cursor,records') {
    refuse('PAGE_INVALID', 'page keys')
  }
  if (!Array.isArray(page.records)) refuse('PAGE_INVALID', 'records is not a list')
  const nc = page.next_cursor
  if (typeof nc !== 'string' || nc.length < 1 || nc.length > 256 || !/^[\x20-\x7e]+$/.test(nc)) {
    refuse('PAGE_INVALID', 'next_cursor')
  }
  if (typeof page.has_more !== 'boolean') refuse('PAGE_INVALID', 'has_more')
  const ids = []
  for (const item of page.records) {
    if (!isObject(item) || Object.keys(item).sort().join(',') !== 'cid,data,sig' ||
        CID.asCID(item.cid) === null || !(item.data instanceof Uint8Array) || !(item.sig instanceof Uint8Array)) {
      refuse('MALFORMED', 'a wire item is exactly {cid: link, data: bytes, sig: bytes}')
    }
    ids.push(verifyRecord(item, { nowMs: c.now_ms, limits: recordDefaults }).cid.toString())
  }
  expectEq('record ids', ids, c.record_cids)
  expectEq('next_cursor', nc, c.next_cursor)
  expectEq('has_more', page.has_more, c.has_more)
}

function decodeCursor (text) {
  if (typeof text !== 'string' || (text.length !== 34 && text.length !== 44)) refuse('CURSOR_INVALID', 'length')
  const raw = b64urlDecode(text, 'CURSOR_INVALID')
  const format = text.length === 34 ? 1 : 2
  if (raw[0] !== format) refuse('CURSOR_INVALID', 'format byte')
  const seq = Buffer.from(raw).readBigInt64BE(17)
  if (seq < 0n) refuse('CURSOR_INVALID', 'negative seq')
  const fp = format === 2 ? raw.subarray(25, 33) : null
  if (fp !== null && seq === 0n && fp.some((b) => b !== 0)) refuse('CURSOR_INVALID', 'fingerprint at seq 0')
  return { epoch: hex(raw.subarray(1, 17)), seq, raw, format, fp }
}

// §8.3: the first 8 bytes of HMAC-SHA-256(store cursor key, binary CID of the record at seq)
function cursorFingerprint (keyHex, cidText) {
  const mac = createHmac('sha256', Buffer.from(keyHex, 'hex'))
  mac.update(CID.parse(cidText).bytes)
  return new Uint8Array(mac.digest().subarray(0, 8))
}

function checkCursor (c) {
  const cur = decodeCursor(c.cursor)
  if ('store_epoch' in c) {
    if (cur.epoch !== c.store_epoch) refuse('CURSOR_RESET', 'another epoch')
    if (cur.format === 1) {
      if (cur.seq > BigInt(c.head_seq)) refuse('CURSOR_FROM_FUTURE', 'past the head')
      return
    }
    if (cur.seq === 0n) return
    if (cur.seq > BigInt(c.head_seq)) refuse('CURSOR_RESET', 'past the head: the store went back')
    const want = c.cid_at_seq === null ? null : cursorFingerprint(c.cursor_key_hex, c.cid_at_seq)
    if (want === null || !timingSafeEqual(want, cur.fp)) refuse('CURSOR_RESET', 'another record at seq')
    return
  }
  expectEq('epoch', cur.epoch, c.epoch)
  expectEq('seq', cur.seq.toString(), c.seq)
  expectEq('raw', hex(cur.raw), c.raw_hex)
  expectEq('format', cur.format, c.format)
  if (cur.format === 2) {
    const fp = c.cid_at_seq === null ? new Uint8Array(8) : cursorFingerprint(c.cursor_key_hex, c.cid_at_seq)
    expectEq('fingerprint', hex(fp), c.fingerprint_hex)
    expectEq('fingerprint in cursor', hex(cur.fp), c.fingerprint_hex)
  }
}

// --- §10 invites --------------------------------------------------------------------------------------

const DID_RE = /^did:[a-z0-9]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._%-]$/

function parseInviteUrl (text) {
  let u
  try { u = new URL(text) } catch { refuse('MALFORMED', 'not a URL') }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname) refuse('MALFORMED', 'scheme')
  const m = /^(.*)\/v1\/invites\/([0-9a-f]{32})$/.exec(u.pathname)
  if (!m) refuse('MALFORMED', 'path')
  const issuers = u.searchParams.getAll('issuer')
  if (issuers.length !== 1) refuse('MALFORMED', 'issuer')
  if (issuers[0].length > 2048 || !DID_RE.test(issuers[0])) refuse('DID_INVALID', 'issuer is not a DID')
  const secrets = new URLSearchParams(u.hash.slice(1)).getAll('secret')
  if (secrets.length !== 1 || !/^[A-Za-z0-9_-]{43}$/.test(secrets[0])) refuse('MALFORMED', 'secret')
  return { node_url: `${u.protocol}//${u.host}${m[1]}`, invite_id: m[2], issuer_did: issuers[0], secret: secrets[0] }
}

function confirmationCode (issuer, holder, inviteId) {
  const digest = sha256(te.encode(canonicalize([issuer, holder, inviteId])))
  const n = Buffer.from(digest).readBigUInt64BE(0) % 1000000n
  return n.toString().padStart(6, '0')
}

const PRINTABLE = /^[^\p{C}]*$/u

function parseRedeem (body) {
  const common = ['holder_type', 'holder_label', 'secret', 'reciprocal']
  const allowed = body.holder_type === 'guest' ? [...common, 'holder_pubkey']
    : body.holder_type === 'federated' ? [...common, 'holder_did', 'holder_proof', 'holder_proof_issued_at_ms']
      : refuse('INVALID_REQUEST', 'holder_type')
  if (Object.keys(body).some((k) => !allowed.includes(k))) refuse('INVALID_REQUEST', 'unknown member')
  if (typeof body.secret !== 'string' || body.secret.length > 128) refuse('INVALID_REQUEST', 'secret')
  if (body.holder_label !== undefined) {
    const l = body.holder_label
    if (typeof l !== 'string' || l.length > 128 || !PRINTABLE.test(l) || !l.trim()) refuse('INVALID_REQUEST', 'label')
  }
  if (body.reciprocal != null) {
    const r = body.reciprocal
    if (!isObject(r) || Object.keys(r).some((k) => !['token', 'scopes', 'url'].includes(k))) refuse('INVALID_REQUEST', 'reciprocal')
    if (typeof r.token !== 'string' || r.token.length < 1 || r.token.length > 512) refuse('INVALID_REQUEST', 'reciprocal.token')
    if (!Array.isArray(r.scopes)) refuse('INVALID_REQUEST', 'reciprocal.scopes')
    let u
    try { u = new URL(r.url) } catch { refuse('INVALID_REQUEST', 'reciprocal.url') }
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname) refuse('INVALID_REQUEST', 'reciprocal.url')
  }
  if (body.holder_type === 'guest') {
    const text = body.holder_pubkey
    if (typeof text !== 'string' || text.length > 128) refuse('MALFORMED', 'holder_pubkey')
    const raw = text.length === 43 ? b64urlDecode(text, 'MALFORMED') : keyFromDidOr(text)
    if (raw.length !== 32) refuse('MALFORMED', 'holder_pubkey is 32 bytes')
    if (!usableKey(raw)) refuse('KEY_UNKNOWN', 'holder_pubkey is not a usable key')
    return { holderDid: 'did:key:' + multibaseEd(raw) }
  }
  if (typeof body.holder_did !== 'string' || body.holder_did.length > 2048 || !DID_RE.test(body.holder_did)) {
    refuse('DID_INVALID', 'holder_did')
  }
  if (typeof body.holder_proof !== 'string' || body.holder_proof.length > 256) refuse('INVALID_REQUEST', 'holder_proof')
  const at = body.holder_proof_issued_at_ms
  if (!Number.isInteger(at) || at < 0 || at > MAX_SAFE) refuse('INVALID_REQUEST', 'holder_proof_issued_at_ms')
  return { holderDid: body.holder_did, proof: body.holder_proof, issuedAt: at }
}

function keyFromDidOr (multibase) {
  try {
    return keyFromDid('did:key:' + multibase)
  } catch {
    refuse('MALFORMED', 'holder_pubkey is neither base64url nor z6Mk multibase')
  }
}

function checkInvite (c) {
  if (c.kind === 'url') {
    const got = parseInviteUrl(c.url)
    for (const k of ['node_url', 'invite_id', 'issuer_did', 'secret']) expectEq(k, got[k], c[k])
  } else if (c.kind === 'preview') {
    const url = parseInviteUrl(c.url)
    const p = c.preview
    if (!isObject(p) || !isObject(p.invite)) refuse('PEER_INVALID', 'no signed invite')
    if (p.state === 'revoked') refuse('INVITE_REVOKED', 'revoked')
    if (p.state === 'exhausted') refuse('INVITE_EXHAUSTED', 'exhausted')
    if (p.state === 'expired') refuse('INVITE_EXPIRED', 'expired')
    const { signedBytes } = verifyDocument(p.invite, { expectedDid: url.issuer_did, now: c.now })
    if (p.invite.type !== 'fedpeer-invite' || p.invite.invite_id !== url.invite_id) refuse('PEER_INVALID', 'another invite')
    if (p.invite.issuer !== url.issuer_did) refuse('PEER_INVALID', 'another issuer')
    expectEq('signed bytes', signedBytes, c.signed_bytes)
  } else if (c.kind === 'redeem') {
    const req = parseRedeem(c.body)
    if (req.proof !== undefined) {
      const sig = (() => {
        try { return b64urlDecode(req.proof, 'BAD_PROOF') } catch { refuse('BAD_PROOF', 'not base64url') }
      })()
      if (sig.length !== 64) refuse('BAD_PROOF', 'not 64 bytes')
      const pub = keyFromDid(req.holderDid)
      if (!usableKey(pub)) refuse('KEY_UNKNOWN', 'no usable key')
      const payload = canonicalize({
        invite_id: c.invite_id,
        audience: c.issuer_did,
        holder_did: req.holderDid,
        issued_at_ms: req.issuedAt,
        purpose: 'fedpeer-invite-redeem-v1'
      })
      if (!verifyEd25519(pub, te.encode(payload), sig)) refuse('BAD_PROOF', 'does not verify')
      if (Math.abs(c.now_ms - req.issuedAt) > 60000) refuse('FRESHNESS_VIOLATION', 'outside ±60 s')
      if (c.proof_payload !== undefined) expectEq('proof payload', payload, c.proof_payload)
    }
    expectEq('holder did', req.holderDid, c.holder_did)
    expectEq('confirmation code', confirmationCode(c.issuer_did, req.holderDid, c.invite_id), c.confirmation_code)
  } else if (c.kind === 'confirmation-code') {
    expectEq('hashed', canonicalize([c.issuer_did, c.holder_did, c.invite_id]), c.hashed)
    expectEq('confirmation code', confirmationCode(c.issuer_did, c.holder_did, c.invite_id), c.confirmation_code)
  } else {
    throw new Mismatch(`unknown kind ${c.kind}`)
  }
}

// --- §12 mDNS TXT -------------------------------------------------------------------------------------

const TXT_KEYS = ['v', 'did', 'handle', 'ns', 'caps', 'port', 'seq', 'exp', 'sig']
const ITEM_RE = /^[A-Za-z0-9._:@+-][A-Za-z0-9._:@/+-]{0,255}$/
const DECIMAL_RE = /^(0|[1-9][0-9]{0,15})$/

function decimal (txt, k) {
  const v = txt[k]
  if (!DECIMAL_RE.test(v) || Number(v) > MAX_SAFE) refuse('MALFORMED', `${k} is not a canonical decimal`)
  return Number(v)
}

function checkTxt (c) {
  const txt = c.txt
  const seen = new Set()
  for (const [k, v] of Object.entries(txt)) {
    if (!/^[\x21-\x3c\x3e-\x7e]{1,64}$/.test(k)) refuse('MALFORMED', 'key')
    if (seen.has(k.toLowerCase())) refuse('MALFORMED', 'key twice')
    seen.add(k.toLowerCase())
    if (typeof v !== 'string') refuse('MALFORMED', 'value')
  }
  const missing = TXT_KEYS.filter((k) => !(k in txt))
  if (missing.length) refuse('MALFORMED', `missing ${missing}`)
  if (txt.v !== '1') refuse('MALFORMED', 'version')
  const pub = keyFromDid(txt.did)
  const sig = b64urlDecode(txt.sig, 'MALFORMED')
  if (sig.length !== 64) refuse('MALFORMED', 'sig length')
  if (!usableKey(pub)) refuse('KEY_UNKNOWN', 'unusable key')
  const unsigned = Object.fromEntries(Object.entries(txt).filter(([k]) => k !== 'sig'))
  const signed = concat(te.encode('fedpeer-mdns-v1\0'), te.encode(canonicalize(unsigned)))
  if (!verifyEd25519(pub, signed, sig)) refuse('BAD_SIGNATURE', 'forged or tampered')
  if (c.expected_did != null && txt.did !== c.expected_did) refuse('DID_MISMATCH', 'another DID')
  const handleChars = [...txt.handle]
  if (handleChars.length < 1 || handleChars.length > 128 || !PRINTABLE.test(txt.handle)) refuse('MALFORMED', 'handle')
  const port = decimal(txt, 'port')
  if (port < 1 || port > 65535) refuse('MALFORMED', 'port')
  const seq = decimal(txt, 'seq')
  const exp = decimal(txt, 'exp')
  if (c.now > exp + 300) refuse('SIGNATURE_EXPIRED', 'expired')
  if (exp > c.now + 86400 + 300) refuse('MALFORMED', 'validity beyond 24 h')
  const list = (v) => (v === '' ? [] : v.split(','))
  for (const item of [...list(txt.ns), ...list(txt.caps)]) if (!ITEM_RE.test(item)) refuse('MALFORMED', 'list item')
  if (c.expect !== 'ok') return
  const extra = Object.fromEntries(Object.entries(txt).filter(([k]) => !TXT_KEYS.includes(k)).sort())
  expectEq('announcement', {
    did: txt.did,
    handle: txt.handle,
    port,
    namespaces: list(txt.ns),
    capabilities: list(txt.caps),
    seq,
    expires_at: exp,
    extra
  }, c.announcement)
  expectEq('signed bytes', hex(signed), c.signed_bytes_hex)
}

// --- driver -------------------------------------------------------------------------------------------

const CHECKS = {
  'identities.json': checkIdentity,
  'signed-json.json': checkSignedJson,
  'records.json': checkRecord,
  'feed-pages.json': checkPage,
  'cursors.json': checkCursor,
  'invites.json': checkInvite,
  'mdns-txt.json': checkTxt
}

const started = process.hrtime.bigint()
const summary = { cases: 0, passed: 0, failed: [], files: {} }
for (const [file, check] of Object.entries(CHECKS)) {
  const vectors = JSON.parse(readFileSync(join(dir, file), 'utf8'))
  if (file === 'records.json') recordDefaults = vectors.defaults
  if (recordDefaults === null && file === 'feed-pages.json') {
    recordDefaults = JSON.parse(readFileSync(join(dir, 'records.json'), 'utf8')).defaults
  }
  let passed = 0
  for (const c of vectors.cases) {
    summary.cases++
    let got
    try {
      check(c)
      got = 'ok'
    } catch (e) {
      if (e instanceof Refused) got = e.code
      else if (e instanceof Mismatch) got = `mismatch (${e.message})`
      else got = `crash (${e.stack})`
    }
    if (got === c.expect) {
      passed++
    } else {
      summary.failed.push(`${file} ${c.name}`)
      console.log(`FAIL ${file} ${c.name} (protocol.md §${c.section}): expected ${c.expect}, got ${got}`)
    }
  }
  summary.passed += passed
  summary.files[file] = { cases: vectors.cases.length, passed }
}
summary.ms = Number(process.hrtime.bigint() - started) / 1e6
console.log(JSON.stringify(summary))
process.exit(summary.failed.length ? 1 : 0)

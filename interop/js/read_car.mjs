// Read a fedpeer export (a CARv1 of signed records, docs/protocol.md §9.5) with
// independent code: @ipld/car for the container, multiformats for CIDs and SHA-256,
// @ipld/dag-cbor for the blocks, @noble/curves for Ed25519. Usage:
//
//   node read_car.mjs FILE.car
//
// Prints one JSON object: the roots, the root block, and per record its id, author,
// body and whether its signature verifies; exits 1 when a block's bytes do not
// match its CID, a signature block names a missing record, or a signature fails.
import { readFileSync } from 'node:fs'

import { CarReader } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { ed25519 } from '@noble/curves/ed25519.js'
import { base58btc } from 'multiformats/bases/base58'
import { sha256 } from 'multiformats/hashes/sha2'

const file = process.argv[2]
const reader = await CarReader.fromBytes(readFileSync(file))
const roots = await reader.getRoots()
const blocks = new Map()
const order = []
for await (const { cid, bytes } of reader.blocks()) {
  const digest = await sha256.digest(bytes)
  if (cid.code !== dagCbor.code || cid.multihash.code !== sha256.code ||
      Buffer.compare(Buffer.from(digest.digest), Buffer.from(cid.multihash.digest)) !== 0) {
    console.error(`block ${cid} does not match its bytes`)
    process.exit(1)
  }
  blocks.set(cid.toString(), bytes)
  order.push(cid)
}

function publicKeyOf (did) {
  const raw = base58btc.decode(did.slice('did:key:'.length))
  if (raw[0] !== 0xed || raw[1] !== 0x01 || raw.length !== 34) throw new Error(`not an Ed25519 did:key: ${did}`)
  return raw.slice(2)
}

const root = dagCbor.decode(blocks.get(roots[0].toString()))
const records = []
let failed = false
for (const cid of order) {
  const value = dagCbor.decode(blocks.get(cid.toString()))
  const keys = Object.keys(value).sort().join(',')
  if (keys !== 'record,sig') continue
  const target = value.record
  const data = blocks.get(target.toString())
  if (data === undefined) {
    console.error(`signature block ${cid} names ${target}, not in the file`)
    process.exit(1)
  }
  const rec = dagCbor.decode(data)
  const ok = ed25519.verify(value.sig, target.bytes, publicKeyOf(rec.author), { zip215: false })
  failed ||= !ok
  records.push({ cid: target.toString(), author: rec.author, body: rec.body, signature_ok: ok })
}
console.log(JSON.stringify({
  roots: roots.map(String),
  root,
  blocks: order.length,
  records
}, (_k, v) => typeof v === 'bigint' ? Number(v) : v))
process.exit(failed ? 1 : 0)

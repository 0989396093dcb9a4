"""A guest naming a paired peer's public key cannot take over its pairing.

A guest redemption proves nothing about its key: its DID is whatever
``holder_pubkey`` it sends, and a peer's did:key is public (its manifest, its
mDNS record). Before, a guest's ``reciprocal`` was stored like a federated
one, keyed by that DID: any holder of an ordinary invite could name a paired
peer's key, and the issuer revoked the peer's account (its pull stopped with
``TOKEN_INVALID``) and kept the impostor's token and URL as the peer's
reciprocal credential (later used to notify the "peer" of an unpair). Now a
guest's reciprocal is ignored, as protocol.md §11.2 says.

A real issuer node (SQLite, hypercorn on loopback) and raw HTTP for the
impostor.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from fedpeer.consent.invites import RECIPROCAL_TABLE, parse_invite_url
from fedpeer.identity.canonical import b64url_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node

_PEER_TOKEN = "fp_" + "0" * 20 + "_" + "0" * 64  # what the peer hands the issuer


async def test_a_guest_naming_a_paired_peers_key_changes_nothing_of_its_pairing(
    tmp_path: Path, anyio_backend: str, refused_url: str
) -> None:
    cfg = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
    peer = SigningKey.generate()
    async with open_node(tmp_path / "issuer", config=cfg) as issuer:
        pairing = await issuer.invites.create(scopes=["reader"])
        async with PeerClient(issuer.url) as client:
            cred, _answer = await client.redeem_with_answer(
                pairing.url,
                holder_key=peer,
                reciprocal={
                    "token": _PEER_TOKEN,
                    "scopes": ["sync:read"],
                    "url": refused_url,
                },
            )
        before = await issuer.store.get_state(RECIPROCAL_TABLE, peer.did)
        assert before is not None
        assert before["token"] == _PEER_TOKEN

        other = parse_invite_url((await issuer.invites.create(scopes=["reader"])).url)
        async with httpx.AsyncClient(base_url=issuer.url, timeout=10) as http:
            answer = await http.post(
                f"/v1/invites/{other.invite_id}/redeem",
                json={
                    "holder_type": "guest",
                    "secret": other.secret,
                    "holder_pubkey": b64url_encode(peer.public_key),  # public
                    "reciprocal": {
                        "token": "impostor",
                        "scopes": ["sync:read"],
                        "url": "http://10.6.6.6:1",
                    },
                },
            )
            assert answer.status_code == 201, answer.text
            assert "reverse_pair" not in answer.json()
            pull = await http.get(
                "/v1/sync/changes", headers={"Authorization": f"Bearer {cred.token}"}
            )
            assert pull.status_code == 200, pull.text  # the peer still pulls
        assert await issuer.store.get_state(RECIPROCAL_TABLE, peer.did) == before

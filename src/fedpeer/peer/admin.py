"""AdminClient: a node's services over HTTP, with the same method names.

``node.records.get(cid)`` in-process and ``admin.records.get(cid)`` against a
running node give the same :class:`~fedpeer.peer.services.RecordEntry`; the
same holds for ``invites``, ``grants`` and ``tokens``. For ``pairs`` the
in-process service hands back live :class:`~fedpeer.sync.Pair` values (they hold
the credential, which never crosses the wire); over HTTP a pair is its public
:class:`~fedpeer.peer.services.PairStatus`.

It is built on the same transport as :class:`~fedpeer.peer.PeerClient`: errors
come back as the node's :class:`~fedpeer.errors.FedpeerError` subclass, a node
that cannot be reached as ``PeerUnreachable`` (its ``__cause__`` is the httpx
error). Records are verified on arrival (the node's word is never trusted).
Every method is cancellable.
"""

from __future__ import annotations

import builtins
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

import httpx

from ..consent.grants import Grant, Target
from ..consent.tokens import ServiceAccount
from ..errors import PeerInvalid
from ..identity.canonical import CID
from ..store.base import ThreadInfo
from ..sync.pairs import PairFilter
from ..sync.records import DEFAULT_LIMITS, Limits, verify_record
from ._transport import HttpTransport
from .services import (
    AuditPage,
    InviteCreated,
    InviteInfo,
    IssuedAccount,
    PairingResult,
    PairStatus,
    RecordEntry,
    RecordsPage,
    RedeemAnswer,
    RotatedToken,
    UnpairResult,
    grant_from_dict,
    invite_request,
    service_account_from_dict,
)

__all__ = [
    "AdminClient",
    "AdminGrants",
    "AdminInvites",
    "AdminPairs",
    "AdminRecords",
    "AdminTokens",
]


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _obj(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise PeerInvalid(f"the {what} answer is not an object")
    return value


class _Part:
    def __init__(self, transport: HttpTransport, limits: Limits) -> None:
        self._t = transport
        self._limits = limits

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
    ) -> dict[str, object]:
        response = await self._t.request(method, path, params=params, cbor_body=body)
        return _obj(self._t.decode(response), f"{method} {path.split('?')[0]}")


class AdminRecords(_Part):
    """``admin.records``: the node's records (needs records:read / records:write)."""

    async def append(
        self,
        *,
        namespace: str,
        thread: str,
        kind: str,
        body: object,
        parents: Sequence[CID | str] = (),
    ) -> RecordEntry:
        """The node builds and signs a record as itself; the stored record."""
        answer = await self._call(
            "POST",
            "/v1/records",
            body={
                "namespace": namespace,
                "thread": thread,
                "kind": kind,
                "body": body,
                "parents": [str(p) for p in parents],
            },
        )
        cid = answer.get("cid")
        if not isinstance(cid, str):
            raise PeerInvalid("the append answer has no cid")
        return await self.get(cid)

    async def ingest(self, data: bytes, sig: bytes) -> tuple[RecordEntry, bool]:
        """Hand the node a record signed elsewhere; ``(entry, created)``."""
        signed = verify_record(data, sig, limits=self._limits)
        response = await self._t.request(
            "POST", "/v1/records", cbor_body={"data": data, "sig": sig}
        )
        answer = _obj(self._t.decode(response), "ingest")
        seq, created = answer.get("seq"), answer.get("created")
        if not isinstance(seq, int) or not isinstance(created, bool):
            raise PeerInvalid("the ingest answer has no seq or created")
        return RecordEntry(seq, signed), created

    async def ingest_many(self, items: Sequence[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Hand the node a batch of signed records (``(data, sig)`` pairs, at most
        1000); ``(stored, already there)``. One bad record and none is stored."""
        body = {"records": [{"data": d, "sig": s} for d, s in items]}
        response = await self._t.request("POST", "/v1/records/import", cbor_body=body)
        answer = _obj(self._t.decode(response), "import")
        stored, existing = answer.get("stored"), answer.get("existing")
        if not isinstance(stored, int) or not isinstance(existing, int):
            raise PeerInvalid("the import answer has no stored or existing count")
        return stored, existing

    async def get(self, cid: CID | str) -> RecordEntry:
        """The record ``cid`` (RECORD_NOT_FOUND, MALFORMED)."""
        answer = await self._call("GET", f"/v1/records/{_q(str(cid))}")
        return RecordEntry.from_dict(answer, limits=self._limits)

    async def list(
        self,
        *,
        namespace: str | None = None,
        thread: str | None = None,
        limit: int = 50,
        since: str | None = None,
        newest_first: bool = False,
    ) -> RecordsPage:
        """A page of records, oldest first or ``newest_first`` (``GET /v1/records``)."""
        params: dict[str, str | int] = {"limit": limit}
        if namespace:
            params["namespace"] = namespace
        if thread:
            params["thread"] = thread
        if since:
            params["since"] = since
        if newest_first:
            params["order"] = "newest"
        answer = await self._call("GET", "/v1/records", params=params)
        return RecordsPage.from_dict(answer, limits=self._limits)

    async def threads(self, namespace: str | None = None) -> builtins.list[ThreadInfo]:
        """Threads with record counts (of namespaces starting with ``namespace``),
        all of them: follows the listing's pages (at most ``_THREAD_PAGES``)."""
        params: dict[str, str] = {"namespace": namespace} if namespace else {}
        out: builtins.list[ThreadInfo] = []
        for _ in range(_THREAD_PAGES):
            answer = await self._call("GET", "/v1/threads", params=params or None)
            out += _thread_infos(answer)
            cursor = answer.get("next_cursor")
            if answer.get("has_more") is not True:
                return out
            if not isinstance(cursor, str) or cursor == params.get("since"):
                raise PeerInvalid("the threads answer has more but no new next_cursor")
            params["since"] = cursor
        raise PeerInvalid(f"the threads listing did not end within {_THREAD_PAGES} pages")


_THREAD_PAGES = 10_000


def _thread_infos(answer: dict[str, object]) -> builtins.list[ThreadInfo]:
    """The threads of one ``GET /v1/threads`` answer; PeerInvalid for another shape."""
    items = answer.get("threads")
    if not isinstance(items, builtins.list):
        raise PeerInvalid("the threads answer has no threads")
    out: builtins.list[ThreadInfo] = []
    for item in items:
        t = _obj(item, "thread")
        ns, th, count, last = (
            t.get("namespace"),
            t.get("thread"),
            t.get("count"),
            t.get("last_seq"),
        )
        if not (isinstance(ns, str) and isinstance(th, str)):
            raise PeerInvalid("a thread in the answer has no namespace or thread")
        if not (isinstance(count, int) and isinstance(last, int)):
            raise PeerInvalid("a thread in the answer has no count or last_seq")
        out.append(ThreadInfo(namespace=ns, thread=th, count=count, last_seq=last))
    return out


class AdminInvites(_Part):
    """``admin.invites``: invites the node issues (admin)."""

    async def create(
        self,
        *,
        ttl_s: int | None = None,
        max_uses: int | None = None,
        scopes: Sequence[str] | None = None,
        target: Target | None = None,
        accept_holder_types: Sequence[str] | None = None,
        token_ttl_s: int | None = None,
        device_label: str | None = None,
        notes: str | None = None,
        base_url: str | None = None,
    ) -> InviteCreated:
        """Issue a signed invite; its ``url`` holds the secret (shown once)."""
        body = invite_request(
            ttl_s=ttl_s,
            max_uses=max_uses,
            scopes=scopes,
            target=target,
            accept_holder_types=accept_holder_types,
            token_ttl_s=token_ttl_s,
            device_label=device_label,
            notes=notes,
            base_url=base_url,
        )
        return InviteCreated.from_dict(await self._call("POST", "/v1/invites", body=body))

    async def list(self, *, state: str | None = None) -> builtins.list[InviteInfo]:
        """Invites with their folded state (only ``state`` when given)."""
        answer = await self._call("GET", "/v1/invites", params={"state": state} if state else None)
        items = answer.get("invites")
        if not isinstance(items, list):
            raise PeerInvalid("the invite list answer has no invites")
        return [InviteInfo.from_dict(i) for i in items]

    async def preview(self, invite_id: str) -> dict[str, object]:
        """The public preview of an invite (no secret)."""
        return await self._call("GET", f"/v1/invites/{_q(invite_id)}")

    async def revoke(self, invite_id: str) -> tuple[InviteInfo, bool]:
        """Revoke an invite and its tokens; ``(invite, changed)``."""
        answer = await self._call("POST", f"/v1/invites/{_q(invite_id)}/revoke")
        changed = answer.get("changed")
        if not isinstance(changed, bool):
            raise PeerInvalid("the revoke answer has no changed flag")
        return InviteInfo.from_dict(answer.get("invite")), changed

    async def bulk_revoke(self, filter: str) -> builtins.list[str]:
        """Revoke every ``"expired"`` or ``"exhausted"`` invite; their ids."""
        answer = await self._call("POST", "/v1/invites/bulk-revoke", body={"filter": filter})
        revoked = answer.get("revoked")
        if not isinstance(revoked, list) or not all(isinstance(i, str) for i in revoked):
            raise PeerInvalid("the bulk revoke answer has no revoked list")
        return [str(i) for i in revoked]

    async def audit(
        self, *, since: int = 0, limit: int = 100, invite_id: str | None = None
    ) -> AuditPage:
        """Invite audit events after ``since``; resume from ``next_since``."""
        params: dict[str, str | int] = {"since": since, "limit": limit}
        if invite_id is not None:
            params["invite_id"] = invite_id
        return AuditPage.from_dict(await self._call("GET", "/v1/invites/audit", params=params))

    async def redeem(self, invite_id: str, request: Mapping[str, object]) -> RedeemAnswer:
        """Send a redemption request (the JSON body of the redeem route) as is.
        A holder normally uses :meth:`PeerClient.redeem`, which builds and checks it."""
        answer = await self._call("POST", f"/v1/invites/{_q(invite_id)}/redeem", body=dict(request))
        reverse = answer.pop("reverse_pair", None)
        if reverse is not None and not isinstance(reverse, dict):
            raise PeerInvalid("the redeem answer has a bad reverse_pair")
        return RedeemAnswer(answer, reverse)


class AdminGrants(_Part):
    """``admin.grants``: who may read what (admin)."""

    async def revision(self) -> int:
        """The node's consent revision."""
        value = (await self._call("GET", "/v1/grants")).get("consent_revision")
        if not isinstance(value, int):
            raise PeerInvalid("the grants answer has no consent_revision")
        return value

    async def list(self, *, grantee_did: str | None = None) -> builtins.list[Grant]:
        """Every grant (of ``grantee_did`` when given)."""
        answer = await self._call(
            "GET", "/v1/grants", params={"grantee_did": grantee_did} if grantee_did else None
        )
        items = answer.get("grants")
        if not isinstance(items, list):
            raise PeerInvalid("the grants answer has no grants")
        out = []
        for item in items:
            row = dict(_obj(item, "grant"))
            row.pop("live", None)
            out.append(grant_from_dict(row))
        return out

    async def create(
        self,
        grantee_did: str,
        *,
        target: Target | None = None,
        scopes: Sequence[str] = ("reader",),
        expires_ms: int | None = None,
        ttl_s: int | None = None,
    ) -> Grant:
        """Grant ``grantee_did`` ``scopes`` on ``target`` (default: everything)."""
        body: dict[str, object] = {"grantee_did": grantee_did, "scopes": list(scopes)}
        if target is not None:
            body["target"] = target.to_dict()
        if expires_ms is not None:
            body["expires_ms"] = expires_ms
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return grant_from_dict((await self._call("POST", "/v1/grants", body=body)).get("grant"))

    async def delete(self, grant_id: str) -> Grant:
        """Remove a grant; return it."""
        answer = await self._call("DELETE", f"/v1/grants/{_q(grant_id)}")
        return grant_from_dict(answer.get("deleted"))


class AdminTokens(_Part):
    """``admin.tokens``: service accounts and their tokens (admin)."""

    async def list(self) -> builtins.list[ServiceAccount]:
        """Every service account (tokens are never shown again)."""
        items = (await self._call("GET", "/v1/service-accounts")).get("service_accounts")
        if not isinstance(items, list):
            raise PeerInvalid("the service account list has no service_accounts")
        return [service_account_from_dict(i) for i in items]

    async def create(
        self,
        name: str = "service account",
        *,
        scopes: Sequence[str] = ("reader",),
        holder_did: str | None = None,
        ttl_s: int | None = None,
    ) -> IssuedAccount:
        """A new service account and its first token (shown once)."""
        body: dict[str, object] = {"name": name, "scopes": list(scopes)}
        if holder_did is not None:
            body["holder_did"] = holder_did
        if ttl_s is not None:
            body["token_ttl_s"] = ttl_s
        return IssuedAccount.from_dict(await self._call("POST", "/v1/service-accounts", body=body))

    async def revoke(self, sa_id: str) -> ServiceAccount:
        """Revoke a service account and all its tokens."""
        answer = await self._call("DELETE", f"/v1/service-accounts/{_q(sa_id)}")
        return service_account_from_dict(answer.get("service_account"))

    async def rotate(self, sa_id: str) -> RotatedToken:
        """A new token for a service account; its older tokens stop working."""
        answer = await self._call("POST", f"/v1/service-accounts/{_q(sa_id)}/rotate-key")
        return RotatedToken.from_dict(answer)

    async def rotate_self(self, token_id: str, *, ttl_s: int | None = None) -> RotatedToken:
        """The client's own token ``token_id`` rotates itself (a new bearer; this
        client keeps using the old one, which no longer works)."""
        body = {} if ttl_s is None else {"ttl_s": ttl_s}
        answer = await self._call("POST", f"/v1/tokens/{_q(token_id)}/rotate", body=body)
        return RotatedToken.from_dict(answer)

    async def bootstrap(self) -> IssuedAccount:
        """One-shot: mint the admin account of a node that wrote no admin.token."""
        return IssuedAccount.from_dict(await self._call("POST", "/v1/bootstrap/service-account"))


class AdminPairs(_Part):
    """``admin.pairs``: the node's sync pairs (admin), as :class:`PairStatus`."""

    async def create(
        self,
        peer_url: str,
        *,
        token: str | None = None,
        peer_did: str | None = None,
        filter: PairFilter | None = None,
        author_allowlist: Iterable[str] | None = None,
    ) -> tuple[PairStatus, bool]:
        """Have the node verify the peer at ``peer_url`` and pull from it; ``(pair, created)``."""
        body: dict[str, object] = {"peer_url": peer_url}
        if token is not None:
            body["credential"] = token
        if peer_did is not None:
            body["peer_did"] = peer_did
        if filter is not None:
            body["filter"] = filter.to_dict()
        if author_allowlist is not None:
            body["author_allowlist"] = list(author_allowlist)
        response = await self._t.request("POST", "/v1/sync/pairs", cbor_body=body)
        return PairStatus.from_dict(self._t.decode(response)), response.status_code == 201

    async def from_invite(
        self, invite_url: str, *, bidirectional: bool = True, label: str | None = None
    ) -> PairingResult:
        """Have the node redeem another node's invite and pair (both ways by default)."""
        body: dict[str, object] = {"invite_url": invite_url, "bidirectional": bidirectional}
        if label is not None:
            body["label"] = label
        return PairingResult.from_dict(
            await self._call("POST", "/v1/sync/pairs/from-invite", body=body)
        )

    async def list(self) -> builtins.list[PairStatus]:
        """Every pair."""
        return await self.statuses()

    async def statuses(self) -> builtins.list[PairStatus]:
        """Every pair."""
        items = (await self._call("GET", "/v1/sync/pairs")).get("pairs")
        if not isinstance(items, list):
            raise PeerInvalid("the pair list answer has no pairs")
        return [PairStatus.from_dict(i) for i in items]

    async def get(self, pair_id: str) -> PairStatus:
        """One pair (PAIR_NOT_FOUND)."""
        return await self.status(pair_id)

    async def status(self, pair_id: str) -> PairStatus:
        """One pair (PAIR_NOT_FOUND)."""
        return PairStatus.from_dict(await self._call("GET", f"/v1/sync/pairs/{_q(pair_id)}"))

    async def _act(self, pair_id: str, action: str) -> PairStatus:
        answer = await self._call("POST", f"/v1/sync/pairs/{_q(pair_id)}/{action}")
        return PairStatus.from_dict(answer)

    async def pause(self, pair_id: str) -> PairStatus:
        """Pause a pair."""
        return await self._act(pair_id, "pause")

    async def resume(self, pair_id: str) -> PairStatus:
        """Resume a paused or stopped pair."""
        return await self._act(pair_id, "resume")

    async def kick(self, pair_id: str) -> PairStatus:
        """Poll now (ends a backoff)."""
        return await self._act(pair_id, "kick")

    async def delete(self, pair_id: str) -> str:
        """Delete a pair (the records it pulled stay); its id."""
        answer = await self._call("DELETE", f"/v1/sync/pairs/{_q(pair_id)}")
        deleted = answer.get("deleted")
        if not isinstance(deleted, str):
            raise PeerInvalid("the delete answer has no id")
        return deleted

    async def unpair(self, pair_or_did: str, *, notify: bool = True) -> UnpairResult:
        """Unpair from a peer, both sides (see :meth:`PairService.unpair`)."""
        return UnpairResult.from_dict(
            await self._call(
                "POST", "/v1/sync/pairs/unpair", body={"pair": pair_or_did, "notify": notify}
            )
        )

    async def set_credential(self, pair_id: str, credential: str | None) -> PairStatus:
        """Replace the bearer token shown to the peer (a stopped pair then needs resume)."""
        answer = await self._call(
            "POST", f"/v1/sync/pairs/{_q(pair_id)}/credential", body={"credential": credential}
        )
        return PairStatus.from_dict(answer)

    async def stats(self, pair_id: str) -> dict[str, object]:
        """A pair's counters, rate, latency histogram, errors, backoff, lag."""
        return await self._call("GET", f"/v1/sync/pairs/{_q(pair_id)}/stats")

    async def health(self) -> dict[str, object]:
        """Sync health over every pair."""
        return await self._call("GET", "/v1/sync/health")


class AdminClient(HttpTransport):
    """The admin API of the node at ``url``, shown ``token`` (an admin bearer).

    ``records``, ``invites``, ``grants``, ``tokens``, ``pairs`` mirror the node's
    services. ``client`` shares an httpx client (the caller closes it); else one
    is made and closed by ``async with`` / :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(url, token=token, client=client, timeout=timeout)
        self.url = self.base_url
        self.records = AdminRecords(self, limits)
        self.invites = AdminInvites(self, limits)
        self.grants = AdminGrants(self, limits)
        self.tokens = AdminTokens(self, limits)
        self.pairs = AdminPairs(self, limits)
        self._misc = _Part(self, limits)

    async def identity(self) -> dict[str, object]:
        """``GET /v1/identity``: the node's DID, handle, URLs and this token's state."""
        return await self._misc._call("GET", "/v1/identity")

    async def health(self) -> dict[str, object]:
        """``GET /health``: liveness, record count, sync health summary."""
        return await self._misc._call("GET", "/health")

    async def discovery(self) -> dict[str, object]:
        """``GET /v1/discovery/mdns``: the mDNS roster (admin)."""
        return await self._misc._call("GET", "/v1/discovery/mdns")

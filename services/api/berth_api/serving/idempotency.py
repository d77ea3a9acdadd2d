"""X-Request-ID as an idempotency key: what a request is, and what Redis keeps for its id.

A request is its model, version and rows, as validated (the same rows sent as lists or as
objects, 5 or 5.0, are the same request): its fingerprint is a hash of those. For a client's
request id Redis keeps, under `RedisKeys.idempotency`, the fingerprint and the state of the first
request that used the id:

- `{fingerprint}:pending:{token}` while it is being answered (the token names the one request
  that may finish or abandon the claim), with a short expiry in case its process dies;
- `{fingerprint}:done:{answer}` once it was answered and recorded, for `IDEMPOTENCY_TTL_SECONDS`.

A second request with the id and the same fingerprint gets the stored answer (waiting while the
first is pending) and records nothing; with another fingerprint it is refused with a 409. The
claim is taken with `SET NX GET`, one atomic command, so two concurrent requests with one id,
in any processes or replicas sharing the Redis, cannot both own it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# A claim whose owner died expires this soon; an owner always finishes well before.
PENDING_TTL_SECONDS = 15


def fingerprint(model_name: str, model_version: str, row_digests: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_name}\x1f{model_version}".encode())
    for row in row_digests:
        digest.update(b"\x1e" + row.encode())
    return digest.hexdigest()


class ClaimState(Enum):
    PENDING = "pending"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Claim:
    """What one request asks of its id: to own it, as `value` says."""

    key: str
    fingerprint: str
    token: str

    @property
    def pending_value(self) -> str:
        return f"{self.fingerprint}:{ClaimState.PENDING.value}:{self.token}"

    def done_value(self, answer_json: str) -> str:
        return f"{self.fingerprint}:{ClaimState.DONE.value}:{answer_json}"


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """What Redis holds for an id that another request claimed first."""

    fingerprint: str
    state: ClaimState
    # the answer's JSON once DONE, the owner's token while PENDING
    payload: str

    @classmethod
    def parse(cls, raw: bytes | str) -> ClaimRecord | None:
        """None for a value Berth did not write (it is then treated as unknown, not trusted)."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        fingerprint_, _, rest = text.partition(":")
        state, _, payload = rest.partition(":")
        try:
            return cls(fingerprint_, ClaimState(state), payload)
        except ValueError:
            return None

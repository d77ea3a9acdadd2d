"""Every Redis key Berth reads or writes, in one place.

All keys start with the configured prefix (`REDIS_KEY_PREFIX`, default `berth`) and are
colon-separated, so that several stacks or test runs can share one Redis, and an operator can
find each family with `SCAN MATCH berth:cache:*`:

| key | type | what it holds |
| --- | --- | --- |
| `{p}:ledger` | stream | ledger entries, read by the consumer group `writers` |
| `{p}:cache:{model}:{version}:{row digest}` | string | one row's model output, with a TTL |
| `{p}:served:{YYYY-MM-DD}` | hash | rows served per minute (`HH:MM`) that day, for the audit |
| `{p}:feedback:received:{YYYY-MM-DD}` | hash | feedback rows accepted per minute, for the audit |
| `{p}:worker:{consumer}:heartbeat` | string | a worker's state, with a TTL |
| `{p}:idempotency:{request id}` | string | a client request id: its fingerprint and answer |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

LEDGER_GROUP = "writers"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    @property
    def ledger_stream(self) -> str:
        return f"{self.prefix}:ledger"

    @property
    def ledger_group(self) -> str:
        return LEDGER_GROUP

    def cache(self, model_name: str, model_version: str, row_digest: str) -> str:
        return f"{self.prefix}:cache:{model_name}:{model_version}:{row_digest}"

    def served(self, served_at: datetime) -> tuple[str, str]:
        """Hash key (one per UTC day) and field (minute) counting rows served in that minute."""
        return f"{self.prefix}:served:{served_at:%Y-%m-%d}", f"{served_at:%H:%M}"

    def feedback_received(self, received_at: datetime) -> tuple[str, str]:
        """Hash key (one per UTC day) and field (minute) counting feedback rows accepted then."""
        return f"{self.prefix}:feedback:received:{received_at:%Y-%m-%d}", f"{received_at:%H:%M}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}:heartbeat"

    def idempotency(self, request_id: str) -> str:
        return f"{self.prefix}:idempotency:{request_id}"

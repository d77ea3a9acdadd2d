"""Cache reads and the one pipeline per request that writes the cache and appends the ledger."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth_api.cache import decode_output, encode_output
from berth_api.predictor import ModelOutput
from berth_common.ledger import PredictionRecord, encode_entry

logger = logging.getLogger(__name__)


class RedisGateway:
    """Everything the request path asks of Redis; a Redis failure degrades, it never raises."""

    def __init__(self, client: Redis, stream: str, cache_ttl_seconds: int) -> None:
        self._client = client
        self._stream = stream
        self._ttl = cache_ttl_seconds
        self._healthy = True

    async def cached_outputs(self, keys: list[str]) -> list[ModelOutput | None]:
        try:
            raw = await self._client.mget(keys)
        except (RedisError, OSError) as exc:
            self._failed("cache read", exc)
            return [None] * len(keys)
        self._recovered()
        return [decode_output(value) for value in raw]

    async def record(
        self, records: list[PredictionRecord], new_outputs: dict[str, ModelOutput]
    ) -> bool:
        """Appends the request's ledger entry and caches fresh outputs in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for key, output in new_outputs.items():
            pipe.set(key, encode_output(output), ex=self._ttl)
        pipe.xadd(self._stream, encode_entry(records))  # type: ignore[arg-type]
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("ledger append", exc)
            logger.error(
                "ledger entry for request %s (%d rows) was not queued",
                records[0].request_id,
                len(records),
            )
            return False
        self._recovered()
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._healthy:
            logger.warning("redis %s failed, serving without it: %r", what, exc)
        self._healthy = False

    def _recovered(self) -> None:
        if not self._healthy:
            logger.info("redis reachable again")
        self._healthy = True

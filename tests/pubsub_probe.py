"""``Sub``: a raw pub/sub subscriber (plain redis-py or fakeredis client), to see exactly what
goes over the wire."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Sub"]


class Sub:
    """Subscribes to ``channels`` on ``client`` and waits for every subscription to be confirmed."""

    def __init__(self, client: Any, *channels: str) -> None:
        self.client = client  # kept: a client that is collected closes its connections
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(channels) and time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "subscribe":
                confirmed += 1
        assert confirmed == len(channels)

    def take(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Up to ``n`` messages as ``(channel, data)``, waiting at most ``timeout`` seconds."""
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                out.append((msg["channel"].decode(), msg["data"]))
        return out

    def close(self) -> None:
        """Unsubscribe and close the pub/sub connection."""
        self.pubsub.close()

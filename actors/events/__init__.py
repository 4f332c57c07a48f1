"""Events: the outbox relay (ledger → Kafka) and the webhook dispatchers (Kafka → merchants)."""

from actors.events.signing import sign

__all__ = ["sign"]

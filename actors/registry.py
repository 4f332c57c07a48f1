"""The system's actors: their names, how each is built from the configuration, and the one
function that creates them as named, detached actors in the paygate namespace."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray

from cluster.config import Config

log = logging.getLogger("paygate.actors")

RATE_LIMITER = "rate-limiter"
CARD_VAULT = "card-vault"
RECONCILER = "reconciler"


def link_name(index: int) -> str:
    return f"acquirer-link-{index}"


def shard_name(index: int) -> str:
    return f"payment-shard-{index}"


def relay_name(index: int) -> str:
    return f"outbox-relay-{index}"


def dispatcher_name(index: int) -> str:
    return f"webhook-dispatcher-{index}"


@dataclass(frozen=True)
class ActorSpec:
    name: str
    actor_class: Any
    args: tuple[Any, ...]
    needs_start: bool = False


def system_actors(config: Config) -> list[ActorSpec]:
    """In start order: what an actor's start() looks up must come before it."""
    from actors.acquirer.link import AcquirerLinkActor
    from actors.events.dispatcher import RetryPolicy, WebhookDispatcherActor
    from actors.events.relay import OutboxRelayActor
    from actors.fraud import scorer_name
    from actors.fraud.scorer import FraudScorerActor
    from actors.payments.shard import PaymentShardActor
    from actors.ratelimit import RateLimiterActor
    from actors.reconciler.actor import ReconcilerActor
    from actors.reconciler.schedule import ScheduleSettings
    from actors.vault.actor import CardVaultActor

    links = [link_name(i) for i in range(config.acquirer_links)]
    acquirer = config.acquirer
    if acquirer is None:
        raise ValueError("PAYGATE_ACQUIRER is not resolved")
    # A payment in `processing` longer than this has lost its caller: two bank timeouts
    # (the call and its reversal) plus a margin.
    stale_after_s = config.acquirer_timeout_s * 2 + 5
    return [
        ActorSpec(RATE_LIMITER, RateLimiterActor, (config.rate_limit_per_s, config.rate_limit_burst)),
        ActorSpec(CARD_VAULT, CardVaultActor,
                  (config.vault_dsn, str(config.kek_path), str(config.fingerprint_key_path)), needs_start=True),
        *[ActorSpec(name, AcquirerLinkActor,
                    (acquirer.host, acquirer.port, config.acquirer_connections, config.acquirer_timeout_s,
                               CARD_VAULT, config.ray_namespace), needs_start=True) for name in links],
        # fraud scorers before the shards: a shard's start() looks them up by name
        *[ActorSpec(scorer_name(i), FraudScorerActor,
                    (i, config.fraud_scorers, config.ledger_dsn, CARD_VAULT, config.ray_namespace),
                    needs_start=True) for i in range(config.fraud_scorers)],
        *[ActorSpec(shard_name(i), PaymentShardActor,
                    (i, config.shards, config.ledger_dsn, CARD_VAULT, links, config.ray_namespace, stale_after_s,
                     config.shard_connections),
                    needs_start=True) for i in range(config.shards)],
        *[ActorSpec(relay_name(i), OutboxRelayActor,
                    (i, config.outbox_relays, config.ledger_dsn, config.kafka_bootstrap, config.outbox_republish_s,
                     config.kafka_compression),
                    needs_start=True) for i in range(config.outbox_relays)],
        *[ActorSpec(dispatcher_name(i), WebhookDispatcherActor,
                    (i, config.ledger_dsn, config.kafka_bootstrap,
                                    RetryPolicy(backoff_s=config.webhook_backoff_s, window_s=config.webhook_window_s,
                                                timeout_s=config.webhook_timeout_s),
                     config.webhook_slots),
                    needs_start=True) for i in range(config.webhook_dispatchers)],
        ActorSpec(RECONCILER, ReconcilerActor,
                  (config.ledger_dsn, ScheduleSettings.from_env(config.data_dir).as_dict()), needs_start=True),
    ]


def get_actor(name: str, config: Config) -> Any:
    return ray.get_actor(name, namespace=config.ray_namespace)


async def ensure_actors(config: Config) -> dict[str, Any]:
    """Create (or find) every system actor and run its async start(); return the handles by name."""
    handles: dict[str, Any] = {}
    for spec in system_actors(config):
        handles[spec.name] = spec.actor_class.options(
            name=spec.name,
            namespace=config.ray_namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            # Per-call task events (Ray's dashboard/state API) cost CPU in every caller and callee on
            # the hot path; paygate does not use them (its own logs carry the request ids).
            enable_task_events=False,
        ).remote(*spec.args)
    for spec in system_actors(config):
        if spec.needs_start:
            await handles[spec.name].start.remote()
    log.info("actors ready: %s", ", ".join(handles))
    return handles

"""Handing a command to its merchant's PaymentShard, and answering when the shard dies mid-call.

Every POST carries an idempotency record: the merchant's `Idempotency-Key`, or one the gateway
makes up for this request. A `RayActorError` means the call may have run: the gateway retries the
same command on the restarted shard, which answers from durable state (the stored response, or the
payment's recovery point), never by guessing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from starlette.responses import Response

from actors.batching import Batcher
from actors.direct import DirectCallLost, DirectClient
from actors.errors import ApiError, IdempotencyInProgress, InvalidRequest
from actors.payments.idempotency import INTERNAL_KEY_PREFIX
from actors.payments.messages import Idempotency, PaymentCommand, Reply
from actors.payments.shard import shard_index
from gateway.endpoint import Call
from gateway.validation import request_hash

log = logging.getLogger("paygate.gateway.dispatch")

_RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, DirectCallLost)


def idempotency_for(call: Call) -> Idempotency:
    key = call.idempotency_key
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters.", param="Idempotency-Key")
    internal = key is None
    if key is None:
        key = INTERNAL_KEY_PREFIX + call.request.scope["state"]["request_id"]
    path = call.request.scope["path"]  # what `request.url.path` says, without building the whole URL
    return Idempotency(key, request_hash(call.request.method, path, call.params), call.request.method, path,
                       internal=internal)


def shard_batcher(call: Call) -> Batcher[PaymentCommand, Reply]:
    """The merchant's shard, behind a micro-batcher: one Ray call carries many commands."""
    batchers = call.state.shard_batchers
    index = shard_index(call.merchant_id, len(call.state.shards))
    if index not in batchers:
        shard = DirectClient(call.state.shards[index])
        batchers[index] = Batcher(shard.sender("execute_many"))
    return batchers[index]


async def execute(call: Call, cmd: PaymentCommand) -> Response:
    reply = await _execute(call, cmd)
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else {}
    if call.idempotency_key:
        headers["Idempotency-Key"] = call.idempotency_key
    return Response(reply.body, status_code=reply.status, media_type="application/json", headers=headers)


async def _execute(call: Call, cmd: PaymentCommand) -> Reply:
    deadline = time.monotonic() + call.state.config.acquirer_timeout_s * 2 + 20
    died = False
    while True:
        try:
            reply: Reply = await shard_batcher(call).call(cmd)
        except _RETRYABLE as error:
            log.warning("shard call for %s failed (%s); answering from durable state", cmd.verb, type(error).__name__)
            died = True
            assert cmd.idempotency is not None
            cmd = replace(cmd, idempotency=replace(cmd.idempotency, retry=True))
            reply = Reply(409, IdempotencyInProgress().body_bytes())
        # After a crash our own earlier attempt holds the record until it goes stale: wait it out.
        if not (died and reply.status == 409) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if died and reply.status == 409:
        return Reply(500, ApiError("The outcome of this request is not known yet; it is being resolved. "
                                   "Retry with the same Idempotency-Key.").body_bytes())
    if died:  # what our own first attempt stored is news to this client, not a replay
        reply = Reply(reply.status, reply.body)
    return reply

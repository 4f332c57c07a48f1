"""`/v1/refunds`: create (through the payment's shard), retrieve and list (from the ledger)."""

from __future__ import annotations

from starlette.responses import Response

from actors.errors import NotFound
from actors.payments.messages import PaymentCommand
from actors.payments.refunds import refund_object
from gateway import validation as v
from gateway.dispatch import execute, idempotency_for
from gateway.endpoint import Call, merchant_endpoint
from gateway.pagination import ListQuery, list_objects
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param

REASONS = ("duplicate", "fraudulent", "requested_by_customer")


@merchant_endpoint
async def create(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("payment_intent", "amount", "reason", "metadata", "charge"))
    payment_id = v.string(p, "payment_intent", 255)
    if payment_id is None:
        v.required(p, "payment_intent")
    cmd = PaymentCommand(verb="refund", merchant_id=call.merchant_id, payment_id=payment_id,
                         amount=v.integer(p, "amount", minimum=1, too_large="amount_too_large"),
                         refund_reason=v.string(p, "reason", 40, REASONS),
                         metadata=v.metadata(p), idempotency=idempotency_for(call))
    return await execute(call, cmd)


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    refund_id = str(call.request.path_params["id"])
    row = await call.state.pool.fetchrow("SELECT * FROM refunds WHERE id = $1 AND merchant_id = $2",
                                         refund_id, call.merchant_id)
    if row is None:
        raise NotFound("refund", refund_id)
    return JSONResponse(refund_object(row))


@merchant_endpoint
async def list_refunds(call: Call) -> Response:
    v.reject_unknown(call.params, ("limit", "starting_after", "ending_before", "created", "payment_intent", "charge"))
    filters = {}
    if payment_id := v.string(call.params, "payment_intent", 255):
        filters["payment_id"] = payment_id
    if charge_id := v.string(call.params, "charge", 255):
        filters["charge_id"] = charge_id
    body = await list_objects(call.state.pool, call.merchant_id, call.params, ListQuery("refunds", "refund", filters),
                              "/v1/refunds", refund_object)
    return JSONResponse(body)


_TAGS = ("refunds",)
ROUTES = [
    ApiRoute("/v1/refunds", "POST", create, "Refund a captured PaymentIntent, fully or partly",
             (Param("payment_intent", required=True), Param("amount", "integer"),
              Param("reason", description="duplicate | fraudulent | requested_by_customer"),
              Param("metadata", "object")), returns="refund", tags=_TAGS),
    ApiRoute("/v1/refunds", "GET", list_refunds, "List refunds, newest first",
             (Param("payment_intent"), Param("limit", "integer"), Param("starting_after"),
              Param("ending_before"), Param("created", "object")), returns="list", tags=_TAGS),
    ApiRoute("/v1/refunds/{id}", "GET", retrieve, "Retrieve a refund", returns="refund", tags=_TAGS),
]

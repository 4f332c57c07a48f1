"""`/v1/payment_intents`: create, confirm, capture, cancel (through the merchant's shard),
retrieve and list (straight from the ledger)."""

from __future__ import annotations

from starlette.responses import Response

from actors.errors import NotFound
from actors.payments import store
from actors.payments.messages import PaymentCommand
from actors.payments.render import payment_intent_object
from gateway import validation as v
from gateway.dispatch import execute, idempotency_for
from gateway.endpoint import Call, merchant_endpoint
from gateway.pagination import ListQuery, list_objects
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param

RISK_FIELDS = ("ip_address", "email", "device_id", "country")
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")


def _payment_id(call: Call) -> str:
    return str(call.request.path_params["id"])


@merchant_endpoint
async def create(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("amount", "currency", "payment_method", "confirm", "capture_method", "description",
                         "metadata", "statement_descriptor", "risk", "payment_method_types"))
    amount, currency = v.amount_and_currency(p)
    capture_method = v.string(p, "capture_method", 20, ("automatic", "automatic_async", "manual")) or "automatic"
    payment_method = v.string(p, "payment_method", 255)
    cmd = PaymentCommand(
        verb="create", merchant_id=call.merchant_id, amount=amount, currency=currency,
        payment_method=payment_method, confirm=v.boolean(p, "confirm"),
        capture_method="manual" if capture_method == "manual" else "automatic",
        description=v.string(p, "description", 1000),
        statement_descriptor=_descriptor(p), metadata=v.metadata(p),
        risk=v.string_map(p, "risk", RISK_FIELDS), idempotency=idempotency_for(call),
        payment_method_card=call.state.recent_cards.recall(call.merchant_id, payment_method),
    )
    return await execute(call, cmd)


@merchant_endpoint
async def confirm(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("payment_method", "risk", "capture_method"))
    payment_method = v.string(p, "payment_method", 255)
    cmd = PaymentCommand(verb="confirm", merchant_id=call.merchant_id, payment_id=_payment_id(call),
                         payment_method=payment_method, risk=v.string_map(p, "risk", RISK_FIELDS),
                         idempotency=idempotency_for(call),
                         payment_method_card=call.state.recent_cards.recall(call.merchant_id, payment_method))
    return await execute(call, cmd)


@merchant_endpoint
async def capture(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("amount_to_capture", "metadata"))
    cmd = PaymentCommand(verb="capture", merchant_id=call.merchant_id, payment_id=_payment_id(call),
                         amount_to_capture=v.integer(p, "amount_to_capture", minimum=1, too_large="amount_too_large"),
                         idempotency=idempotency_for(call))
    return await execute(call, cmd)


@merchant_endpoint
async def cancel(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("cancellation_reason",))
    cmd = PaymentCommand(verb="cancel", merchant_id=call.merchant_id, payment_id=_payment_id(call),
                         cancellation_reason=v.string(p, "cancellation_reason", 40, CANCELLATION_REASONS),
                         idempotency=idempotency_for(call))
    return await execute(call, cmd)


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    v.reject_unknown(call.params, ("client_secret",))
    row = await store.load(call.state.pool, _payment_id(call), call.merchant_id)
    if row is None:
        raise NotFound("payment_intent", _payment_id(call))
    return JSONResponse(payment_intent_object(row, v.expand(call.params)))


@merchant_endpoint
async def list_intents(call: Call) -> Response:
    v.reject_unknown(call.params, ("limit", "starting_after", "ending_before", "created", "customer"))
    expand = frozenset(e.removeprefix("data.") for e in v.expand(call.params))
    body = await list_objects(call.state.pool, call.merchant_id, call.params,
                              ListQuery("payment_orders", "payment_intent", {}), "/v1/payment_intents",
                              lambda row: payment_intent_object(row, expand))
    return JSONResponse(body)


def _descriptor(params: dict) -> str | None:
    value = v.string(params, "statement_descriptor", 22)
    if value and any(ch in value for ch in "<>\\'\"*"):
        from actors.errors import InvalidRequest

        raise InvalidRequest("The statement descriptor may not contain < > \\ ' \" or *.",
                             code="parameter_invalid_string", param="statement_descriptor")
    return value


_CREATE_PARAMS = (
    Param("amount", "integer", True, "minor units"), Param("currency", "string", True, "lowercase ISO 4217"),
    Param("payment_method"), Param("confirm", "boolean"), Param("capture_method", description="automatic | manual"),
    Param("description"), Param("metadata", "object"), Param("statement_descriptor"),
    Param("risk", "object", description="extension: risk[ip_address|email|device_id|country] for fraud scoring"),
)
_TAGS = ("payment_intents",)
ROUTES = [
    ApiRoute("/v1/payment_intents", "POST", create, "Create a PaymentIntent (optionally confirm it)",
             _CREATE_PARAMS, returns="payment_intent", tags=_TAGS),
    ApiRoute("/v1/payment_intents", "GET", list_intents, "List PaymentIntents, newest first",
             (Param("limit", "integer"), Param("starting_after"), Param("ending_before"),
              Param("created", "object")), returns="list", tags=_TAGS),
    ApiRoute("/v1/payment_intents/{id}", "GET", retrieve, "Retrieve a PaymentIntent",
             (Param("expand", "array"),), returns="payment_intent", tags=_TAGS),
    ApiRoute("/v1/payment_intents/{id}/confirm", "POST", confirm, "Confirm: authorize at the bank",
             (Param("payment_method"), Param("risk", "object")), returns="payment_intent", tags=_TAGS),
    ApiRoute("/v1/payment_intents/{id}/capture", "POST", capture, "Capture an authorized PaymentIntent",
             (Param("amount_to_capture", "integer"),), returns="payment_intent", tags=_TAGS),
    ApiRoute("/v1/payment_intents/{id}/cancel", "POST", cancel,
             "Cancel; from requires_capture the authorization is reversed at the bank",
             (Param("cancellation_reason"),), returns="payment_intent", tags=_TAGS),
]

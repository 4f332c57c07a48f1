"""`/v1/payment_methods`: tokenize a card in the vault, retrieve it. The number and CVC pass
through this process only on their way to the vault actor and are never logged or returned."""

from __future__ import annotations

from starlette.responses import Response

from actors.errors import CardError, InvalidRequest, NotFound
from actors.vault.cards import CardError as VaultCardError
from actors.vault.cards import validate_card
from gateway import validation as v
from gateway.endpoint import Call, merchant_endpoint
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param

_CARD_FIELDS = ("number", "exp_month", "exp_year", "cvc")
_BILLING_FIELDS = ("name", "email", "phone", "address")


def _card_error(error: VaultCardError) -> CardError:
    return CardError(error.message, code=error.code, param=error.param)


@merchant_endpoint
async def create(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("type", "card", "billing_details", "metadata"))
    if v.string(p, "type", 20, ("card",)) is None:
        raise InvalidRequest("Missing required param: type.", code="parameter_missing", param="type")
    card = p.get("card")
    if not isinstance(card, dict):
        raise InvalidRequest("Missing required param: card.", code="parameter_missing", param="card")
    for key in card:
        if key not in _CARD_FIELDS:
            raise InvalidRequest(f"Received unknown parameter: card[{key}]", code="parameter_unknown",
                                 param=f"card[{key}]")
    for key in ("number", "exp_month", "exp_year"):
        if card.get(key) in (None, ""):
            raise InvalidRequest(f"Missing required param: card[{key}].", code="parameter_missing",
                                 param=f"card[{key}]")
    try:
        validate_card(card["number"], card["exp_month"], card["exp_year"], card.get("cvc"))
        billing = p.get("billing_details") or {}
        if not isinstance(billing, dict) or any(k not in _BILLING_FIELDS for k in billing):
            raise InvalidRequest("Invalid billing_details.", code="parameter_unknown", param="billing_details")
        payment_method = await call.state.tokenizer.call(
            {"merchant_id": call.merchant_id, "card": card, "billing_details": billing, "metadata": v.metadata(p)})
    except VaultCardError as error:
        raise _card_error(error) from None
    call.state.recent_cards.remember(call.merchant_id, payment_method)
    return JSONResponse(payment_method)


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    pm_id = str(call.request.path_params["id"])
    payment_method = await call.state.vault.get.remote(call.merchant_id, pm_id)
    if payment_method is None:
        raise NotFound("payment_method", pm_id)
    return JSONResponse(payment_method)


ROUTES = [
    ApiRoute("/v1/payment_methods", "POST", create, "Tokenize a card into a PaymentMethod (type=card)",
             (Param("type", required=True), Param("card", "object", True, "number, exp_month, exp_year, cvc"),
              Param("billing_details", "object"), Param("metadata", "object")),
             returns="payment_method", tags=("payment_methods",)),
    ApiRoute("/v1/payment_methods/{id}", "GET", retrieve, "Retrieve a PaymentMethod", returns="payment_method",
             tags=("payment_methods",)),
]

"""The project's own Schemathesis check (loaded by scripts/contract).

A request the document calls valid must never be refused for its shape: a
400 already fails Schemathesis' positive_data_acceptance; this check fails a
422 whose code says a value broke a rule the document states (a bound, a
pattern, a length), where the document and the server disagree. 422s of the
domain (insufficient_funds, unknown_sku, idempotency_key_reused,
invalid_order for a repeated SKU...) are answers, not shape refusals.
"""

import schemathesis

SHAPE_CODES = {
    "invalid_amount",
    "invalid_quantity",
    "invalid_currency",
    "invalid_country",
    "invalid_name",
    "invalid_reason",
    "invalid_address",
}


@schemathesis.check
def valid_data_is_not_refused_for_its_shape(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code != 422:
        return None
    try:
        body = response.json()
    except Exception:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    if code in SHAPE_CODES:
        raise AssertionError(
            f"valid data refused for its shape: 422 {code}: {body.get('detail')}"
        )
    return None


@schemathesis.check
def the_only_503_is_a_min_version_timeout(ctx, response, case):
    if response.status_code != 503:
        return None
    try:
        body = response.json()
    except Exception:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if code != "min_version_timeout":
        raise AssertionError(f"503 {code}: the service was unavailable: {body}")
    return None

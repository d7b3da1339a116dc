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


# The 503s a fuzzer may meet while the service is healthy, each accepted only
# on an operation whose document lists it (`x-purser-codes` of its 503): a
# read whose min_version wait timed out (the Query API's reads), and
# `saga_backlog` (POST /orders past PURSER_SAGA_BACKLOG_LIMIT). Any other
# 503 (overloaded, timeout, a dependency down), or one of these where the
# document does not list it, is a failure.
EXPECTED_503_CODES = {"min_version_timeout", "saga_backlog"}


def documented_codes(case, status):
    """The codes the operation's document lists for `status`."""
    try:
        responses = case.operation.definition.raw.get("responses", {})
        codes = responses.get(str(status), {}).get("x-purser-codes", [])
    except Exception:
        return set()
    return set(codes or [])


def documented_503(code, documented):
    return code in EXPECTED_503_CODES and code in documented


@schemathesis.check
def the_only_503s_are_documented_waits_and_backlog(ctx, response, case):
    if response.status_code != 503:
        return None
    try:
        body = response.json()
    except Exception:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if not documented_503(code, documented_codes(case, 503)):
        raise AssertionError(
            f"503 {code} on {case.operation.label}: the service was unavailable, "
            f"or answered a 503 its document does not list: {body}"
        )
    return None

//! Request and response bodies, and the parsing of requests into domain
//! commands: this is the edge where raw JSON becomes domain newtypes.
//!
//! Status rules (the API guide): a body that is not JSON, has the wrong types,
//! unknown or missing fields, or an invalid id (a uuid, or a SKU: the
//! inventory item's id, in a path or in a body) is a 400; a well-formed
//! value the domain does not accept (zero or negative amounts and prices,
//! numbers out of range, a malformed currency or country, empty or
//! over-long line lists, duplicate SKUs) is a 422 with a code. Every 400 of
//! a body is found before any of its 422s.

use std::fmt;

use domain::{
    validate_text, AccountId, Amount, CountryCode, Currency, CustomerId, Price, Quantity,
    ShippingAddress, Sku, UnitPrice,
};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON integer as the client wrote it: an `i64`, or an integer outside
/// the `i64` range (which is a 422, not a 400: the type is right, the value
/// is not). Fractions and non-numbers are type errors (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Value(i64),
    OutOfRange,
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int::Value(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(i64::try_from(v).map_or(Int::OutOfRange, Int::Value))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                // serde_json reads a number with a fraction or an exponent
                // (`10.0`, `1e3`), and integers beyond u64/i64, as floats.
                // JSON Schema counts a number with a zero fraction as an
                // integer, so the document's `integer` does too: it is that
                // integer (its float value past 2^53). One at or beyond
                // +-2^63 is out of range; a real fraction is a type error.
                const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
                if !v.is_finite() || v.fract() != 0.0 {
                    Err(E::invalid_type(de::Unexpected::Float(v), &self))
                } else if v >= LIMIT || v <= -LIMIT {
                    Ok(Int::OutOfRange)
                } else {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(Int::Value(v as i64))
                }
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

impl Int {
    fn get(self, field: &str, code: &'static str) -> Result<i64, ApiError> {
        match self {
            Int::Value(v) => Ok(v),
            Int::OutOfRange => Err(ApiError::validation(
                code,
                format!("{field} is out of range (a 64-bit integer)"),
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Field parsers

fn amount(field: &str, value: Int) -> Result<Amount, ApiError> {
    let v = value.get(field, "invalid_amount")?;
    Amount::new(v).map_err(|_| {
        ApiError::validation(
            "invalid_amount",
            format!("{field} must be greater than zero, got {v}"),
        )
    })
}

fn quantity(field: &str, value: Int) -> Result<Quantity, ApiError> {
    let v = value.get(field, "invalid_quantity")?;
    Quantity::new(v).map_err(|_| {
        ApiError::validation(
            "invalid_quantity",
            format!("{field} must be between 1 and {}, got {v}", Quantity::MAX),
        )
    })
}

fn unit_price(field: &str, value: Int) -> Result<UnitPrice, ApiError> {
    let v = value.get(field, "invalid_amount")?;
    UnitPrice::new(v).map_err(|_| {
        ApiError::validation(
            "invalid_amount",
            format!("{field} must be greater than zero, got {v}"),
        )
    })
}

/// A SKU from the body: the inventory item's id, so a malformed one is a
/// bad id, 400 (the API guide).
fn sku(field: &str, value: &str) -> Result<Sku, ApiError> {
    Sku::parse(value).map_err(|_| {
        ApiError::InvalidId(format!(
            "{field} must match [A-Z0-9-]{{1,64}}, got {value:?}"
        ))
    })
}

fn currency(value: &str) -> Result<Currency, ApiError> {
    Currency::parse(value).map_err(|e| ApiError::validation("invalid_currency", e.to_string()))
}

fn country(value: &str) -> Result<CountryCode, ApiError> {
    CountryCode::parse(value).map_err(|e| ApiError::validation("invalid_country", e.to_string()))
}

/// A free text: the domain's rule (not blank, at most 200 characters) and
/// no NUL, which the event store's JSON cannot hold (the document's
/// pattern says both).
fn text(field: &'static str, value: &str, code: &'static str) -> Result<(), ApiError> {
    no_nul(field, value, code)?;
    validate_text(field, value).map_err(|e| ApiError::validation(code, e.to_string()))
}

fn no_nul(field: &str, value: &str, code: &'static str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::validation(
            code,
            format!("{field} must not contain NUL characters"),
        ));
    }
    Ok(())
}

/// A uuid from the body; an invalid id is a 400 (the API guide).
fn uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    service::openapi::parse_uuid(value)
        .ok_or_else(|| ApiError::InvalidId(format!("{field} must be a uuid, got {value:?}")))
}

/// A path id: a uuid...
pub fn path_uuid(what: &str, value: &str) -> Result<Uuid, ApiError> {
    service::openapi::parse_uuid(value)
        .ok_or_else(|| ApiError::InvalidId(format!("{what} must be a uuid, got {value:?}")))
}

/// ...or a SKU (the inventory item's id): a malformed one is a bad id, 400.
pub fn path_sku(value: &str) -> Result<Sku, ApiError> {
    Sku::parse(value).map_err(|_| {
        ApiError::InvalidId(format!("sku must match [A-Z0-9-]{{1,64}}, got {value:?}"))
    })
}

// ---------------------------------------------------------------------------
// Customers

fn optional_customer(raw: Option<&str>) -> Result<Option<CustomerId>, ApiError> {
    raw.map(|id| uuid("customer_id", id).map(CustomerId::new))
        .transpose()
}

/// The customer a command acts for: the one the body names, which must be
/// the caller's own (403 otherwise), or by default the caller.
pub fn customer_for(
    caller: &auth::Caller,
    named: Option<CustomerId>,
) -> Result<CustomerId, ApiError> {
    match (named, caller.customer_id()) {
        (Some(id), _) if caller.owns(id.as_uuid()) => Ok(id),
        (Some(_), _) => Err(ApiError::Status {
            status: axum::http::StatusCode::FORBIDDEN,
            detail: "a customer acts only for itself: customer_id must be the caller's own"
                .to_owned(),
        }),
        (None, Some(own)) => Ok(CustomerId::new(own)),
        // Only `--insecure-no-auth` has no customer id of its own.
        (None, None) => Err(ApiError::InvalidBody(
            "customer_id is required when the caller is not a customer".to_owned(),
        )),
    }
}

// ---------------------------------------------------------------------------
// Accounts

/// `POST /accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest {
    /// The caller's own customer id (the default); another customer's is
    /// 403.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub customer_id: Option<String>,
    /// ISO 4217 code, e.g. `EUR`: three capital letters.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// The new account's id; the server makes a uuid v7 when absent.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub account_id: Option<String>,
}

/// An `OpenAccountRequest`, parsed.
#[derive(Debug)]
pub struct OpenAccount {
    pub account_id: Option<AccountId>,
    /// As the request named it; [`customer_for`] settles it.
    pub customer_id: Option<CustomerId>,
    pub currency: Currency,
}

impl TryFrom<OpenAccountRequest> for OpenAccount {
    type Error = ApiError;
    fn try_from(r: OpenAccountRequest) -> Result<Self, ApiError> {
        let account_id = r
            .account_id
            .as_deref()
            .map(|id| uuid("account_id", id).map(AccountId::new))
            .transpose()?;
        Ok(OpenAccount {
            account_id,
            customer_id: optional_customer(r.customer_id.as_deref())?,
            currency: currency(&r.currency)?,
        })
    }
}

/// `POST /accounts/{id}/deposits` and `.../withdrawals`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyRequest {
    /// Minor units (cents), `> 0`.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 9223372036854775807i64, example = 10000)]
    pub amount: Int,
}

impl MoneyRequest {
    pub fn amount(&self) -> Result<Amount, ApiError> {
        amount("amount", self.amount)
    }
}

/// `POST /accounts/{id}/close`: `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseAccountRequest {}

/// The answer to every account command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountResponse {
    pub account_id: Uuid,
    /// The account's version after the command (also the `ETag`).
    pub version: u64,
    /// Global position of the last event the command appended.
    pub position: Option<i64>,
}

// ---------------------------------------------------------------------------
// Inventory

/// `POST /inventory`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateItemRequest {
    /// `[A-Z0-9-]{1,64}` (else 400 `invalid_id`).
    #[schema(example = "LAPTOP-15", pattern = "^[A-Z0-9-]{1,64}$")]
    pub sku: String,
    /// 1 to 200 characters, not blank, no NUL.
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub name: String,
    /// Initial stock, 1 to 1 000 000 000.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 1000000000, example = 10)]
    pub quantity: Int,
    /// The price of one unit in minor units, `> 0`.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 9223372036854775807i64, example = 99999)]
    pub unit_price: Int,
    /// ISO 4217 code of `unit_price`, e.g. `EUR`.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

/// A `CreateItemRequest`, parsed.
#[derive(Debug)]
pub struct CreateItem {
    pub sku: Sku,
    pub name: String,
    pub quantity: Quantity,
    pub price: Price,
}

impl TryFrom<CreateItemRequest> for CreateItem {
    type Error = ApiError;
    fn try_from(r: CreateItemRequest) -> Result<Self, ApiError> {
        let sku = sku("sku", &r.sku)?;
        text("name", &r.name, "invalid_name")?;
        Ok(CreateItem {
            sku,
            name: r.name,
            quantity: quantity("quantity", r.quantity)?,
            price: Price::new(
                unit_price("unit_price", r.unit_price)?,
                currency(&r.currency)?,
            ),
        })
    }
}

/// `POST /inventory/{sku}/price`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriceRequest {
    /// The new price of one unit in minor units, `> 0`.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 9223372036854775807i64, example = 89999)]
    pub unit_price: Int,
    /// ISO 4217 code; by default the item's current currency. Required
    /// only for an item without a price yet (one created before prices
    /// existed): `currency_required` otherwise.
    #[serde(default)]
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
}

impl SetPriceRequest {
    pub fn parse(&self) -> Result<(UnitPrice, Option<Currency>), ApiError> {
        Ok((
            unit_price("unit_price", self.unit_price)?,
            self.currency.as_deref().map(currency).transpose()?,
        ))
    }
}

/// `POST /inventory/{sku}/restock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// 1 to 1 000 000 000.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 1000000000, example = 5)]
    pub quantity: Int,
}

impl RestockRequest {
    pub fn quantity(&self) -> Result<Quantity, ApiError> {
        quantity("quantity", self.quantity)
    }
}

/// The answer to every inventory command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ItemResponse {
    pub sku: String,
    pub version: u64,
    pub position: Option<i64>,
}

// ---------------------------------------------------------------------------
// Orders

/// `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// The caller's own customer id (the default); another customer's is
    /// 403.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub customer_id: Option<String>,
    /// The account charged: the caller's own (else 404
    /// `account_not_found`).
    #[schema(format = Uuid)]
    pub account_id: String,
    /// ISO 4217 code; every line's item must be priced in it.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// 1 to 100 lines, each SKU at most once (a repeated SKU is 422
    /// `invalid_order`).
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<OrderLineRequest>,
    pub shipping_address: ShippingAddressRequest,
}

/// One line of a `PlaceOrderRequest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    /// `[A-Z0-9-]{1,64}` (else 400 `invalid_id`).
    #[schema(example = "LAPTOP-15", pattern = "^[A-Z0-9-]{1,64}$")]
    pub sku: String,
    /// 1 to 1 000 000 000.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 1000000000)]
    pub quantity: Int,
    /// The unit price (minor units, `> 0`) the client showed its user.
    /// Optional: the order takes the catalog's price; when this one is
    /// sent and differs, 422 `price_changed` and nothing is placed.
    #[serde(default)]
    #[schema(value_type = Option<i64>, format = Int64, minimum = 1, maximum = 9223372036854775807i64)]
    pub unit_price: Option<Int>,
}

/// Where an order ships. Every text is 1 to 200 characters, not blank, no
/// NUL (else 422 `invalid_address`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddressRequest {
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub name: String,
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub line1: String,
    #[serde(default)]
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub line2: Option<String>,
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub city: String,
    #[schema(
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2: two capital letters (`XX` makes the simulated
    /// carrier refuse; else 422 `invalid_country`).
    #[schema(example = "ES", pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// A `PlaceOrderRequest`, parsed (the order id is the server's; the prices
/// are the catalog's, looked up afterwards).
#[derive(Debug)]
pub struct PlaceOrder {
    /// As the request named it; [`customer_for`] settles it.
    pub customer_id: Option<CustomerId>,
    pub account_id: AccountId,
    pub currency: Currency,
    pub lines: Vec<RequestedLine>,
    pub shipping_address: ShippingAddress,
}

/// One line of a [`PlaceOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    /// The price the client showed its user, if it sent one.
    pub expected_price: Option<UnitPrice>,
}

impl TryFrom<PlaceOrderRequest> for PlaceOrder {
    type Error = ApiError;
    fn try_from(r: PlaceOrderRequest) -> Result<Self, ApiError> {
        // Ids first: every 400 before any 422.
        let customer_id = optional_customer(r.customer_id.as_deref())?;
        let account_id = AccountId::new(uuid("account_id", &r.account_id)?);
        let skus = r
            .lines
            .iter()
            .enumerate()
            .map(|(i, line)| sku(&format!("lines[{i}].sku"), &line.sku))
            .collect::<Result<Vec<_>, ApiError>>()?;
        let currency = currency(&r.currency)?;
        let lines = r
            .lines
            .iter()
            .zip(skus)
            .enumerate()
            .map(|(i, (line, sku))| {
                Ok(RequestedLine {
                    sku,
                    quantity: quantity(&format!("lines[{i}].quantity"), line.quantity)?,
                    expected_price: line
                        .unit_price
                        .map(|p| unit_price(&format!("lines[{i}].unit_price"), p))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        // 1..=100 lines, distinct SKUs: the domain's own check, run here so
        // that a malformed order looks nothing up. The total is the
        // domain's, at the catalog's prices.
        domain::check_skus(lines.iter().map(|line| &line.sku))
            .map_err(|e| ApiError::validation("invalid_order", format!("invalid order: {e}")))?;
        let a = r.shipping_address;
        for (field, value) in [
            ("shipping_address.name", Some(&a.name)),
            ("shipping_address.line1", Some(&a.line1)),
            ("shipping_address.line2", a.line2.as_ref()),
            ("shipping_address.city", Some(&a.city)),
            ("shipping_address.postal_code", Some(&a.postal_code)),
        ] {
            if let Some(value) = value {
                no_nul(field, value, "invalid_address")?;
            }
        }
        let shipping_address = ShippingAddress::new(
            a.name,
            a.line1,
            a.line2,
            a.city,
            a.postal_code,
            country(&a.country)?,
        )
        .map_err(|e| ApiError::validation("invalid_address", e.to_string()))?;
        Ok(PlaceOrder {
            customer_id,
            account_id,
            currency,
            lines,
            shipping_address,
        })
    }
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    /// Why the customer cancels (1 to 200 characters, not blank, no NUL);
    /// defaults to `customer_request`.
    #[serde(default)]
    #[schema(
        example = "changed my mind",
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\x00]*$",
        min_length = 1,
        max_length = 200
    )]
    pub reason: Option<String>,
}

impl CancelOrderRequest {
    pub fn reason(self) -> Result<String, ApiError> {
        match self.reason {
            None => Ok("customer_request".to_owned()),
            Some(reason) => {
                text("reason", &reason, "invalid_reason")?;
                Ok(reason)
            }
        }
    }
}

/// `202` to `POST /orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderPlacedResponse {
    pub order_id: Uuid,
    /// Always `placed`: the saga runs asynchronously.
    #[schema(example = "placed")]
    pub status: String,
    pub version: u64,
    pub position: Option<i64>,
}

/// `202` to `POST /orders/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderResponse {
    pub order_id: Uuid,
    pub version: u64,
    pub position: Option<i64>,
}

// ---------------------------------------------------------------------------
// Sagas

/// `POST /sagas/{order_id}/retry`: `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySagaRequest {}

/// `202` to `POST /sagas/{order_id}/retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SagaRetriedResponse {
    pub order_id: Uuid,
    pub saga_id: Option<Uuid>,
    /// The saga's state after the retry: `running`, or `compensating` when
    /// it was undoing the order.
    #[schema(example = "running")]
    pub state: String,
    /// The saga stream's version after the retry (also the `ETag`).
    pub version: u64,
    pub position: Option<i64>,
}

// ---------------------------------------------------------------------------
// Projections

/// A stream id as `POST /projections/{name}/unpark` accepts it: a stream
/// type, `-`, and the aggregate's id (a uuid or a SKU).
pub const STREAM_ID_PATTERN: &str = "^(account|inventory|order|saga)-[A-Za-z0-9-]{1,64}$";

/// The longest stream id ([`STREAM_ID_PATTERN`]).
pub const STREAM_ID_MAX_LEN: usize = 74;

/// `value` if it matches [`STREAM_ID_PATTERN`], else 400 `invalid_id`.
pub fn stream_id(value: &str) -> Result<&str, ApiError> {
    let valid = value.split_once('-').is_some_and(|(kind, id)| {
        ["account", "inventory", "order", "saga"].contains(&kind)
            && (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if valid {
        Ok(value)
    } else {
        Err(ApiError::InvalidId(format!(
            "stream_id must match {STREAM_ID_PATTERN}, got {value:?}"
        )))
    }
}

/// `POST /projections/{name}/rebuild`: `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildProjectionRequest {}

/// `202` to `POST /projections/{name}/rebuild`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebuildRequestedResponse {
    /// The projection.
    #[schema(example = "accounts")]
    pub projection: String,
    /// The operator who asked (the token's `sub`).
    pub requested_by: String,
    pub requested_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /projections/{name}/unpark`: `{}` for every parked stream, or one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnparkProjectionRequest {
    /// Only this stream (e.g. `account-0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a11`);
    /// absent: every parked stream of the projection.
    #[serde(default)]
    #[schema(
        example = "account-0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a11",
        pattern = "^(account|inventory|order|saga)-[A-Za-z0-9-]{1,64}$",
        min_length = 1,
        max_length = 74
    )]
    pub stream_id: Option<String>,
}

/// `200` to `POST /projections/{name}/unpark`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnparkedResponse {
    #[schema(example = "accounts")]
    pub projection: String,
    /// Each stream un-parked (none when nothing was parked), with what was
    /// applied of it.
    pub streams: Vec<UnparkedStream>,
}

/// One stream `POST /projections/{name}/unpark` un-parked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnparkedStream {
    pub stream_id: String,
    /// Events applied from the event store.
    pub applied: u64,
    /// Its event failed again, and parked it again.
    pub parked_again: bool,
}

/// `POST /projections/{name}/reset`: `{"confirm": "<name>"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetProjectionRequest {
    /// The projection's name again (else 422 `confirmation_mismatch`).
    #[schema(example = "accounts", max_length = 64)]
    pub confirm: String,
}

/// `200` to `POST /projections/{name}/reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResetResponse {
    #[schema(example = "accounts")]
    pub projection: String,
    /// Always `true`: its read model is empty.
    pub reset: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::extract::parse_json;

    fn int(text: &str) -> Result<Int, ApiError> {
        parse_json::<MoneyRequest>(format!("{{\"amount\":{text}}}").as_bytes()).map(|r| r.amount)
    }

    #[test]
    fn integers_in_and_out_of_range() {
        assert_eq!(int("5").ok(), Some(Int::Value(5)));
        assert_eq!(int("-5").ok(), Some(Int::Value(-5)));
        assert_eq!(int("9223372036854775807").ok(), Some(Int::Value(i64::MAX)));
        assert_eq!(int("9223372036854775808").ok(), Some(Int::OutOfRange));
        assert_eq!(int("-9223372036854775809").ok(), Some(Int::OutOfRange));
        assert_eq!(int("99999999999999999999999").ok(), Some(Int::OutOfRange));
        assert_eq!(int("1e30").ok(), Some(Int::OutOfRange));
        // JSON Schema's integers: a zero fraction is still an integer.
        assert_eq!(int("10.0").ok(), Some(Int::Value(10)));
        assert_eq!(int("1e3").ok(), Some(Int::Value(1000)));
        assert_eq!(int("-0.0").ok(), Some(Int::Value(0)));
        for type_error in ["1.5", "1e-3", "\"10\"", "null", "true", "[1]"] {
            assert!(
                matches!(int(type_error), Err(ApiError::InvalidBody(_))),
                "{type_error} accepted"
            );
        }
    }

    #[test]
    fn amounts_must_be_positive() {
        let code = |text: &str| {
            int(text)
                .and_then(|v| amount("amount", v))
                .map_err(|e| e.code())
        };
        assert_eq!(code("1").map(Amount::amount), Ok(1));
        assert_eq!(code("0"), Err("invalid_amount"));
        assert_eq!(code("-1"), Err("invalid_amount"));
        assert_eq!(code("9223372036854775808"), Err("invalid_amount"));
    }

    fn order(lines: serde_json::Value) -> Result<PlaceOrder, ApiError> {
        let body = json!({
            "customer_id": Uuid::now_v7(),
            "account_id": Uuid::now_v7(),
            "currency": "EUR",
            "lines": lines,
            "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                 "postal_code": "28013", "country": "ES"}
        });
        parse_json::<PlaceOrderRequest>(body.to_string().as_bytes()).and_then(PlaceOrder::try_from)
    }

    #[test]
    fn order_lines_are_checked_together() {
        let line = |sku: &str, quantity: i64, unit_price: i64| json!({"sku": sku, "quantity": quantity, "unit_price": unit_price});
        assert!(order(json!([{"sku": "A", "quantity": 1}])).is_ok());
        let parsed = order(json!([line("A", 2, 7)])).expect("valid");
        assert_eq!(
            parsed.lines[0].expected_price.map(UnitPrice::amount),
            Some(7)
        );
        let code = |lines| order(lines).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code(json!([])), Err("invalid_order"));
        let many: Vec<_> = (0..101).map(|i| line(&format!("S{i}"), 1, 1)).collect();
        assert_eq!(code(json!(many)), Err("invalid_order"));
        let hundred: Vec<_> = (0..100).map(|i| line(&format!("S{i}"), 1, 1)).collect();
        assert_eq!(code(json!(hundred)), Ok(()));
        assert_eq!(
            code(json!([line("A", 1, 1), line("A", 2, 1)])),
            Err("invalid_order")
        );
        assert_eq!(code(json!([line("a", 1, 1)])), Err("invalid_id"));
        assert_eq!(code(json!([line("A", 0, 1)])), Err("invalid_quantity"));
        assert_eq!(code(json!([line("A", 1, -1)])), Err("invalid_amount"));
        assert_eq!(code(json!([line("A", 1, 0)])), Err("invalid_amount"));
        // A malformed SKU (400) is found before a bad quantity (422).
        assert_eq!(
            code(json!([line("A", 0, 1), line("b", 1, 1)])),
            Err("invalid_id")
        );
    }
}

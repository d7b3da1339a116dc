//! The order: placed, then `placed -> reserved -> paid -> shipped`, or
//! cancelled from any state before `shipped`.
//!
//! Rules: 1 to 100 lines, each SKU at most once, total without overflow;
//! every line at the catalog's price, looked up when the order is placed
//! and carried in the command (an unknown SKU, an unpriced item, an item
//! priced in another currency, or a price the client saw that is no longer
//! the catalog's refuse the order); the order records those prices and its
//! total is computed from them;
//! `shipped` and `cancelled` are terminal; a requested cancellation blocks
//! shipping; repeating a cancellation request, or requesting/cancelling an
//! already cancelled order, appends nothing.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec;
use crate::inventory::CatalogPrice;
use crate::values::{
    AccountId, Currency, CustomerId, Money, OrderId, OrderLine, Price, Quantity, ShippingAddress,
    Sku, UnitPrice,
};
use crate::{Aggregate, DecodeError, DomainError, DomainEvent, ErrorKind};

/// The order aggregate. Stream id: `order-{order_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order;

/// The most lines one order may have.
pub const MAX_ORDER_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    Place {
        order_id: OrderId,
        customer_id: CustomerId,
        account_id: AccountId,
        currency: Currency,
        lines: Vec<LineToPlace>,
        shipping_address: ShippingAddress,
    },
    MarkReserved,
    MarkPaid,
    MarkShipped {
        tracking_number: String,
    },
    /// The customer asks to cancel; the saga compensates and then sends
    /// `Cancel { reason: CustomerRequest }`.
    RequestCancellation {
        reason: String,
    },
    Cancel {
        reason: CancellationReason,
    },
}

/// A line as the customer asked for it, with what the catalog said about its
/// SKU when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineToPlace {
    pub sku: Sku,
    pub quantity: Quantity,
    /// The unit price the client showed its user, if it sent one: the order
    /// is refused (`price_changed`) when the catalog's differs.
    pub expected_price: Option<UnitPrice>,
    /// The catalog's price of `sku`, looked up on the command side.
    pub catalog: CatalogPrice,
}

impl LineToPlace {
    /// A line without a client-side price, of an item the catalog holds at
    /// `price`.
    pub fn priced(sku: Sku, quantity: Quantity, price: Price) -> LineToPlace {
        LineToPlace {
            sku,
            quantity,
            expected_price: None,
            catalog: CatalogPrice::Priced(price),
        }
    }

    /// The line at the catalog's price, or why it cannot be ordered.
    pub fn price(&self, currency: Currency) -> Result<OrderLine, OrderError> {
        let price = match self.catalog {
            CatalogPrice::Unknown => return Err(OrderError::UnknownSku(self.sku.clone())),
            CatalogPrice::Unpriced => return Err(OrderError::ItemNotPriced(self.sku.clone())),
            CatalogPrice::Priced(price) => price,
        };
        if price.currency != currency {
            return Err(OrderError::CurrencyMismatch {
                sku: self.sku.clone(),
                item: price.currency,
                order: currency,
            });
        }
        if let Some(expected) = self.expected_price {
            if expected != price.unit_price {
                return Err(OrderError::PriceChanged {
                    sku: self.sku.clone(),
                    expected,
                    current: price.unit_price,
                });
            }
        }
        Ok(OrderLine::new(
            self.sku.clone(),
            self.quantity,
            price.unit_price.money(),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancellationReason {
    OutOfStock,
    PaymentDeclined,
    ShippingFailed,
    CustomerRequest,
}

impl CancellationReason {
    pub const ALL: [CancellationReason; 4] = [
        CancellationReason::OutOfStock,
        CancellationReason::PaymentDeclined,
        CancellationReason::ShippingFailed,
        CancellationReason::CustomerRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancellationReason::OutOfStock => "out_of_stock",
            CancellationReason::PaymentDeclined => "payment_declined",
            CancellationReason::ShippingFailed => "shipping_failed",
            CancellationReason::CustomerRequest => "customer_request",
        }
    }
}

impl fmt::Display for CancellationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    NotPlaced,
    Placed,
    Reserved,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::NotPlaced => "not_placed",
            OrderStatus::Placed => "placed",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// `shipped` and `cancelled`: nothing changes afterwards.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Shipped | OrderStatus::Cancelled)
    }

    /// Whether an order may go from `self` to `next` (or stay).
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus as S;
        self == next
            || matches!(
                (self, next),
                (S::NotPlaced, S::Placed)
                    | (S::Placed, S::Reserved)
                    | (S::Reserved, S::Paid)
                    | (S::Paid, S::Shipped)
                    | (S::Placed | S::Reserved | S::Paid, S::Cancelled)
            )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        customer_id: CustomerId,
        account_id: AccountId,
        currency: Currency,
        lines: Vec<OrderLine>,
        total: Money,
        shipping_address: ShippingAddress,
    },
    OrderReserved,
    OrderPaid,
    OrderShipped {
        tracking_number: String,
    },
    CancellationRequested {
        reason: String,
    },
    OrderCancelled {
        reason: CancellationReason,
    },
}

impl OrderEvent {
    /// Every event type name, in declaration order.
    pub const EVENT_TYPES: &'static [&'static str] = &[
        "OrderPlaced",
        "OrderReserved",
        "OrderPaid",
        "OrderShipped",
        "CancellationRequested",
        "OrderCancelled",
    ];
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::OrderReserved => "OrderReserved",
            OrderEvent::OrderPaid => "OrderPaid",
            OrderEvent::OrderShipped { .. } => "OrderShipped",
            OrderEvent::CancellationRequested { .. } => "CancellationRequested",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Value {
        codec::to_payload(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        if schema_version != 1 || !Self::EVENT_TYPES.contains(&event_type) {
            return Err(codec::unknown(event_type, schema_version));
        }
        codec::from_payload(event_type, payload)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderState {
    pub status: OrderStatus,
    pub order_id: Option<OrderId>,
    pub customer_id: Option<CustomerId>,
    pub account_id: Option<AccountId>,
    pub currency: Option<Currency>,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: Option<ShippingAddress>,
    /// The customer's reason, once a cancellation was requested.
    pub cancellation_requested: Option<String>,
    pub cancellation_reason: Option<CancellationReason>,
    pub tracking_number: Option<String>,
}

/// Why an order cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    #[error("an order needs at least one line")]
    NoLines,
    #[error("an order has at most {max} lines, got {0}", max = MAX_ORDER_LINES)]
    TooManyLines(usize),
    #[error("sku {0} appears on more than one line")]
    DuplicateSku(Sku),
    #[error("the order total overflows")]
    TotalOverflow,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order not found")]
    NotFound,
    #[error("order already exists")]
    AlreadyExists,
    #[error("invalid order: {0}")]
    InvalidOrder(#[from] InvalidOrder),
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    #[error("sku {0} has no price yet")]
    ItemNotPriced(Sku),
    #[error("sku {sku} is priced in {item}, the order is in {order}")]
    CurrencyMismatch {
        sku: Sku,
        item: Currency,
        order: Currency,
    },
    #[error("the unit price of sku {sku} is now {current}, not {expected}")]
    PriceChanged {
        sku: Sku,
        expected: UnitPrice,
        current: UnitPrice,
    },
    #[error("order is {status} and can no longer be cancelled")]
    NotCancellable { status: OrderStatus },
    #[error("cannot {command} an order that is {status}")]
    InvalidTransition {
        status: OrderStatus,
        command: &'static str,
    },
}

impl DomainError for OrderError {
    fn code(&self) -> &'static str {
        match self {
            OrderError::NotFound => "order_not_found",
            OrderError::AlreadyExists => "order_already_exists",
            OrderError::InvalidOrder(_) => "invalid_order",
            OrderError::UnknownSku(_) => "unknown_sku",
            OrderError::ItemNotPriced(_) => "item_not_priced",
            OrderError::CurrencyMismatch { .. } => "currency_mismatch",
            OrderError::PriceChanged { .. } => "price_changed",
            OrderError::NotCancellable { .. } => "order_not_cancellable",
            OrderError::InvalidTransition { .. } => "invalid_transition",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            OrderError::NotFound => ErrorKind::NotFound,
            OrderError::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Rejected,
        }
    }
}

/// Checks the shape of an order's lines, given their SKUs: 1 to
/// [`MAX_ORDER_LINES`] lines, each SKU at most once.
pub fn check_skus<'a>(skus: impl IntoIterator<Item = &'a Sku>) -> Result<(), InvalidOrder> {
    let mut seen = BTreeSet::new();
    for sku in skus {
        if !seen.insert(sku) {
            return Err(InvalidOrder::DuplicateSku(sku.clone()));
        }
    }
    match seen.len() {
        0 => Err(InvalidOrder::NoLines),
        n if n > MAX_ORDER_LINES => Err(InvalidOrder::TooManyLines(n)),
        _ => Ok(()),
    }
}

/// Checks the lines together and returns the total.
pub fn order_total(lines: &[OrderLine]) -> Result<Money, InvalidOrder> {
    check_skus(lines.iter().map(|line| &line.sku))?;
    let mut total = Money::ZERO;
    for line in lines {
        total = line
            .line_total()
            .and_then(|t| total.checked_add(t))
            .ok_or(InvalidOrder::TotalOverflow)?;
    }
    Ok(total)
}

impl Aggregate for Order {
    const STREAM_TYPE: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn initial() -> OrderState {
        OrderState::default()
    }

    fn decide(state: &OrderState, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderStatus as S;
        let status = state.status;
        let invalid = |command: &'static str| OrderError::InvalidTransition { status, command };
        match (status, command) {
            (
                S::NotPlaced,
                C::Place {
                    order_id,
                    customer_id,
                    account_id,
                    currency,
                    lines,
                    shipping_address,
                },
            ) => {
                check_skus(lines.iter().map(|line| &line.sku))?;
                let lines = lines
                    .iter()
                    .map(|line| line.price(*currency))
                    .collect::<Result<Vec<_>, _>>()?;
                let total = order_total(&lines)?;
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id: *order_id,
                    customer_id: *customer_id,
                    account_id: *account_id,
                    currency: *currency,
                    lines,
                    total,
                    shipping_address: shipping_address.clone(),
                }])
            }
            (S::NotPlaced, _) => Err(OrderError::NotFound),
            (_, C::Place { .. }) => Err(OrderError::AlreadyExists),

            (S::Shipped, C::RequestCancellation { .. } | C::Cancel { .. }) => {
                Err(OrderError::NotCancellable { status })
            }
            (S::Cancelled, C::RequestCancellation { .. } | C::Cancel { .. }) => Ok(vec![]),
            (_, C::RequestCancellation { .. }) if state.cancellation_requested.is_some() => {
                Ok(vec![])
            }
            (_, C::RequestCancellation { reason }) => Ok(vec![OrderEvent::CancellationRequested {
                reason: reason.clone(),
            }]),
            (_, C::Cancel { reason }) => Ok(vec![OrderEvent::OrderCancelled { reason: *reason }]),

            (S::Placed, C::MarkReserved) => Ok(vec![OrderEvent::OrderReserved]),
            (_, C::MarkReserved) => Err(invalid("mark reserved")),
            (S::Reserved, C::MarkPaid) => Ok(vec![OrderEvent::OrderPaid]),
            (_, C::MarkPaid) => Err(invalid("mark paid")),
            (S::Paid, C::MarkShipped { tracking_number })
                if state.cancellation_requested.is_none() =>
            {
                Ok(vec![OrderEvent::OrderShipped {
                    tracking_number: tracking_number.clone(),
                }])
            }
            (_, C::MarkShipped { .. }) => Err(invalid("mark shipped")),
        }
    }

    fn evolve(mut state: OrderState, event: &OrderEvent) -> OrderState {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                account_id,
                currency,
                lines,
                total,
                shipping_address,
            } => {
                state.status = OrderStatus::Placed;
                state.order_id = Some(*order_id);
                state.customer_id = Some(*customer_id);
                state.account_id = Some(*account_id);
                state.currency = Some(*currency);
                state.lines = lines.clone();
                state.total = *total;
                state.shipping_address = Some(shipping_address.clone());
            }
            OrderEvent::OrderReserved => state.status = OrderStatus::Reserved,
            OrderEvent::OrderPaid => state.status = OrderStatus::Paid,
            OrderEvent::OrderShipped { tracking_number } => {
                state.status = OrderStatus::Shipped;
                state.tracking_number = Some(tracking_number.clone());
            }
            OrderEvent::CancellationRequested { reason } => {
                state.cancellation_requested = Some(reason.clone());
            }
            OrderEvent::OrderCancelled { reason } => {
                state.status = OrderStatus::Cancelled;
                state.cancellation_reason = Some(*reason);
            }
        }
        state
    }
}

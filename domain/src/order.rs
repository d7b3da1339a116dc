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

/// What may be asked of an [`Order`]. The customer places it and may ask
/// to cancel it; the fulfilment saga sends everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Places the order: checks the lines' shape ([`check_skus`]:
    /// `invalid_order`), prices each line at the catalog's price
    /// ([`LineToPlace::price`]: `unknown_sku`, `item_not_priced`,
    /// `currency_mismatch`, `price_changed`) and adds them up
    /// ([`order_total`]: `invalid_order` on overflow).
    /// `order_already_exists` if the stream has an order.
    Place {
        /// The order's id; its stream is `order-{order_id}`, its saga's
        /// `saga-{order_id}`.
        order_id: OrderId,
        /// Who orders.
        customer_id: CustomerId,
        /// The account the saga charges the total to. The account checks,
        /// when charged, that it is this customer's and in this currency.
        account_id: AccountId,
        /// The order's currency: every line's item must be priced in it.
        currency: Currency,
        /// What is ordered, with the catalog's answer for each SKU: 1 to
        /// [`MAX_ORDER_LINES`] lines, each SKU on one line only.
        lines: Vec<LineToPlace>,
        /// Where the carrier delivers.
        shipping_address: ShippingAddress,
    },
    /// Sent by the saga once every line is reserved: `placed -> reserved`
    /// (`invalid_transition` from any other status).
    MarkReserved,
    /// Sent by the saga once the total was charged (or there was nothing to
    /// charge): `reserved -> paid` (`invalid_transition` from any other
    /// status).
    MarkPaid,
    /// Sent by the saga once the carrier took the parcel: `paid -> shipped`.
    /// Refused (`invalid_transition`) once a cancellation was requested:
    /// that is how a cancellation wins a race with shipping.
    MarkShipped {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// The customer asks to cancel; the saga compensates and then sends
    /// `Cancel { reason: CustomerRequest }`. A shipped order is
    /// `order_not_cancellable`; asking again, or about a cancelled order,
    /// appends nothing.
    RequestCancellation {
        /// The customer's reason, free text kept for people (the domain
        /// does not check it; the Command API does).
        reason: String,
    },
    /// Sent by the saga at the end of its compensation: the order is
    /// `cancelled`, for good. A shipped order is `order_not_cancellable`; a
    /// cancelled one appends nothing.
    Cancel {
        /// Why the order could not be fulfilled.
        reason: CancellationReason,
    },
}

/// A line as the customer asked for it, with what the catalog said about its
/// SKU when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineToPlace {
    /// The item ordered.
    pub sku: Sku,
    /// How many units.
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

/// Why an order was cancelled: which step of its saga was refused, or the
/// customer's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancellationReason {
    /// A line's stock could not be reserved (typically
    /// `insufficient_stock`).
    OutOfStock,
    /// The account refused the charge (`insufficient_funds`,
    /// `account_closed`, `currency_mismatch`, `customer_mismatch`).
    PaymentDeclined,
    /// The carrier refused the shipment (`shipment_refused`).
    ShippingFailed,
    /// The customer asked to cancel before the order was marked shipped.
    CustomerRequest,
}

impl CancellationReason {
    /// Every reason, in declaration order.
    pub const ALL: [CancellationReason; 4] = [
        CancellationReason::OutOfStock,
        CancellationReason::PaymentDeclined,
        CancellationReason::ShippingFailed,
        CancellationReason::CustomerRequest,
    ];

    /// The reason in snake case, as serde writes it and an order's
    /// `cancellation_reason` shows it: `out_of_stock`, `payment_declined`,
    /// `shipping_failed`, `customer_request`.
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

/// Where an order is in its life: `placed -> reserved -> paid -> shipped`,
/// or `cancelled` from any of the first three ([`OrderStatus::can_become`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// No order in this stream yet: the initial state.
    #[default]
    NotPlaced,
    /// Placed; its saga reserves the lines.
    Placed,
    /// Every line is reserved; payment is next.
    Reserved,
    /// The total was charged (or was zero); shipping is next.
    Paid,
    /// Handed to the carrier, for good: it can no longer be cancelled.
    Shipped,
    /// Cancelled, for good, with a [`CancellationReason`].
    Cancelled,
}

impl OrderStatus {
    /// The status in snake case, as serde writes it: `not_placed`,
    /// `placed`, `reserved`, `paid`, `shipped`, `cancelled`.
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

/// What happened to an [`Order`], as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum OrderEvent {
    /// The order was placed at the catalog's prices of that moment; its
    /// saga starts from this event.
    OrderPlaced {
        /// The order's id.
        order_id: OrderId,
        /// Who ordered.
        customer_id: CustomerId,
        /// The account to charge.
        account_id: AccountId,
        /// The order's currency.
        currency: Currency,
        /// The lines, each with the unit price it was placed at.
        lines: Vec<OrderLine>,
        /// The sum of the lines, in minor units of `currency`: what the
        /// saga charges.
        total: Money,
        /// Where it goes.
        shipping_address: ShippingAddress,
    },
    /// Every line's stock is reserved.
    OrderReserved,
    /// The account was charged the total (or there was nothing to charge).
    OrderPaid,
    /// The carrier took the order; nothing changes afterwards.
    OrderShipped {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// The customer asked to cancel: shipping is blocked from now on, and
    /// the saga compensates, then cancels the order.
    CancellationRequested {
        /// The customer's reason, as given.
        reason: String,
    },
    /// The order was cancelled; nothing changes afterwards.
    OrderCancelled {
        /// Why.
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

/// An order as its events leave it. What `OrderPlaced` sets is empty or
/// `None` until the order is placed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderState {
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// The order's id.
    pub order_id: Option<OrderId>,
    /// Who ordered.
    pub customer_id: Option<CustomerId>,
    /// The account charged.
    pub account_id: Option<AccountId>,
    /// The order's currency.
    pub currency: Option<Currency>,
    /// The lines, at the prices they were placed at.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines, in minor units of `currency`.
    pub total: Money,
    /// Where it goes.
    pub shipping_address: Option<ShippingAddress>,
    /// The customer's reason, once a cancellation was requested.
    pub cancellation_requested: Option<String>,
    /// Why it was cancelled, once it was.
    pub cancellation_reason: Option<CancellationReason>,
    /// The carrier's tracking number, once shipped.
    pub tracking_number: Option<String>,
}

/// Why an order cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    /// No lines at all.
    #[error("an order needs at least one line")]
    NoLines,
    /// More than [`MAX_ORDER_LINES`] lines; how many there were.
    #[error("an order has at most {max} lines, got {0}", max = MAX_ORDER_LINES)]
    TooManyLines(usize),
    /// The first SKU found on a second line.
    #[error("sku {0} appears on more than one line")]
    DuplicateSku(Sku),
    /// A line's total, or the order's, would pass [`Money::MAX`].
    #[error("the order total overflows")]
    TotalOverflow,
}

/// Why an [`Order`] refuses a command; nothing is appended. Each variant's
/// doc starts with its [`DomainError::code`]. `NotFound` is of
/// [`ErrorKind::NotFound`], `AlreadyExists` of [`ErrorKind::AlreadyExists`],
/// every other of [`ErrorKind::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// `order_not_found`: no order in this stream (any command but
    /// `Place`).
    #[error("order not found")]
    NotFound,
    /// `order_already_exists`: `Place` where an order exists.
    #[error("order already exists")]
    AlreadyExists,
    /// `invalid_order`: the lines do not make an order.
    #[error("invalid order: {0}")]
    InvalidOrder(#[from] InvalidOrder),
    /// `unknown_sku`: no item has this SKU.
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    /// `item_not_priced`: the item has no price yet (it was created before
    /// prices existed).
    #[error("sku {0} has no price yet")]
    ItemNotPriced(Sku),
    /// `currency_mismatch`: the item is priced in another currency than
    /// the order.
    #[error("sku {sku} is priced in {item}, the order is in {order}")]
    CurrencyMismatch {
        /// The line's SKU.
        sku: Sku,
        /// The item's currency.
        item: Currency,
        /// The order's currency.
        order: Currency,
    },
    /// `price_changed`: the unit price the client showed is no longer the
    /// catalog's.
    #[error("the unit price of sku {sku} is now {current}, not {expected}")]
    PriceChanged {
        /// The line's SKU.
        sku: Sku,
        /// The price the client sent, in minor units.
        expected: UnitPrice,
        /// The catalog's price, in minor units.
        current: UnitPrice,
    },
    /// `order_not_cancellable`: a cancellation, requested or decided, of a
    /// shipped order.
    #[error("order is {status} and can no longer be cancelled")]
    NotCancellable {
        /// The order's status: `shipped`.
        status: OrderStatus,
    },
    /// `invalid_transition`: a saga's command that the order's status does
    /// not allow (marking paid an order that is not reserved, marking
    /// shipped one whose cancellation was requested).
    #[error("cannot {command} an order that is {status}")]
    InvalidTransition {
        /// The order's status.
        status: OrderStatus,
        /// What was asked, in words: `mark reserved`, `mark paid` or
        /// `mark shipped`.
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

//! Stock and price of one SKU: create, restock, price, reserve for an
//! order, release that reservation, commit it when the order ships.
//!
//! Prices live here, in the catalog: an item is created with a unit price
//! (`> 0`) in a currency, and an operator may change it. An item created
//! before prices existed (`ItemCreated` schema version 1) has none, and
//! cannot be ordered until it is priced.
//!
//! Rules: always `0 <= reserved <= on_hand`, and `reserved` is the sum of the
//! open reservations; an order reserves at most once (reserving again, even
//! after a release or a commit, appends nothing); releasing an unknown,
//! released or committed reservation appends nothing; a commit drops both
//! `on_hand` and `reserved` by the reserved quantity.
//!
//! The state keeps the open reservations only, so it does not grow with the
//! orders an item served: a reserve or a commit for an order without an
//! open reservation recalls that order's past in the stream
//! ([`Aggregate::recall`]) to tell a finished reservation from none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec;
use crate::values::{
    validate_text, Currency, OrderId, Price, Quantity, Sku, UnitPrice, ValueError,
};
use crate::{Aggregate, DecodeError, DomainError, DomainEvent, ErrorKind};

/// The inventory aggregate, one per SKU. Stream id: `inventory-{sku}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inventory;

/// What may be asked of an [`Inventory`] item. Quantities are
/// [`Quantity`]s: whole units, `1..=`[`Quantity::MAX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Creates the item, with `quantity` units on hand and none reserved
    /// (`item_already_exists` if the SKU has one).
    /// `name` is 1..=200 characters and not blank (`invalid_name` otherwise).
    Create {
        /// The item's id; its stream is `inventory-{sku}`.
        sku: Sku,
        /// What the item is called, for people.
        name: String,
        /// Units on hand to start with.
        quantity: Quantity,
        /// What one unit costs, in the only currency it can be ordered in.
        price: Price,
    },
    /// Adds units on hand (`stock_overflow` past
    /// [`InventoryState::MAX_ON_HAND`]).
    Restock {
        /// Units received.
        quantity: Quantity,
    },
    /// Sets the item's unit price; in `currency` when given, else in the
    /// currency the item is priced in (an unpriced item needs one:
    /// `currency_required`). Setting the current price appends nothing.
    /// Orders placed before keep the prices they recorded.
    SetPrice {
        /// The price of one unit, in minor units.
        unit_price: UnitPrice,
        /// The price's currency; `None` keeps the item's.
        currency: Option<Currency>,
    },
    /// Sent by the order saga: holds units for an order out of what is
    /// available (`insufficient_stock` if fewer are). An order reserves at
    /// most once: reserving again, even after a release or a commit,
    /// appends nothing.
    Reserve {
        /// The order the units are held for.
        order_id: OrderId,
        /// How many: the order's line for this SKU.
        quantity: Quantity,
    },
    /// Sent by the order saga when it compensates: the order's reserved
    /// units are available again. A reservation that is unknown, released
    /// or committed is left alone (nothing is appended).
    Release {
        /// The order whose reservation ends.
        order_id: OrderId,
    },
    /// Sent by the order saga once the order shipped: the reserved units
    /// leave the stock. Committing again appends nothing; an order that
    /// holds no reservation here (none, or released) is
    /// `reservation_not_found`.
    Commit {
        /// The order whose reservation is sold.
        order_id: OrderId,
    },
}

/// What happened to an [`Inventory`] item, as stored. Quantities are whole
/// units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum InventoryEvent {
    /// The item exists, with `quantity` units on hand and none reserved.
    ///
    /// Schema version 2. Version 1 had no `price`: it upcasts to an item
    /// without one (`price: null`).
    ItemCreated {
        /// The item's SKU.
        sku: Sku,
        /// Its name.
        name: String,
        /// Units on hand to start with.
        quantity: Quantity,
        /// Its price; `None` only for an item created before prices
        /// existed (schema version 1).
        price: Option<Price>,
    },
    /// Units were added on hand.
    ItemRestocked {
        /// How many.
        quantity: Quantity,
    },
    /// The item's price from now on.
    PriceChanged {
        /// The unit price and its currency.
        price: Price,
    },
    /// Units were held for an order: `reserved` grows, `on_hand` stays.
    StockReserved {
        /// The order they are held for.
        order_id: OrderId,
        /// How many.
        quantity: Quantity,
    },
    /// An order's reservation ended unsold (its saga compensated): the
    /// units are available again.
    ReservationReleased {
        /// The order whose reservation ended.
        order_id: OrderId,
        /// Every unit it had reserved.
        quantity: Quantity,
    },
    /// An order shipped: its reserved units left the stock, and `on_hand`
    /// and `reserved` both dropped by them.
    ReservationCommitted {
        /// The order that shipped.
        order_id: OrderId,
        /// Every unit it had reserved.
        quantity: Quantity,
    },
}

impl InventoryEvent {
    /// Every event type name, in declaration order.
    pub const EVENT_TYPES: &'static [&'static str] = &[
        "ItemCreated",
        "ItemRestocked",
        "StockReserved",
        "ReservationReleased",
        "ReservationCommitted",
        "PriceChanged",
    ];

    /// The current schema version of `ItemCreated`.
    pub const ITEM_CREATED_SCHEMA_VERSION: u32 = 2;

    /// The schema version `to_payload` writes for `event_type`, if known.
    pub fn current_schema_version(event_type: &str) -> Option<u32> {
        match event_type {
            "ItemCreated" => Some(Self::ITEM_CREATED_SCHEMA_VERSION),
            t if Self::EVENT_TYPES.contains(&t) => Some(1),
            _ => None,
        }
    }
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InventoryEvent::ItemCreated { .. } => "ItemCreated",
            InventoryEvent::ItemRestocked { .. } => "ItemRestocked",
            InventoryEvent::StockReserved { .. } => "StockReserved",
            InventoryEvent::ReservationReleased { .. } => "ReservationReleased",
            InventoryEvent::ReservationCommitted { .. } => "ReservationCommitted",
            InventoryEvent::PriceChanged { .. } => "PriceChanged",
        }
    }

    fn order_id(&self) -> Option<OrderId> {
        match self {
            InventoryEvent::StockReserved { order_id, .. }
            | InventoryEvent::ReservationReleased { order_id, .. }
            | InventoryEvent::ReservationCommitted { order_id, .. } => Some(*order_id),
            InventoryEvent::ItemCreated { .. }
            | InventoryEvent::ItemRestocked { .. }
            | InventoryEvent::PriceChanged { .. } => None,
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            InventoryEvent::ItemCreated { .. } => Self::ITEM_CREATED_SCHEMA_VERSION,
            _ => 1,
        }
    }

    fn to_payload(&self) -> Value {
        codec::to_payload(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        let current = Self::current_schema_version(event_type)
            .ok_or_else(|| codec::unknown(event_type, schema_version))?;
        let payload = match (event_type, schema_version) {
            (_, v) if v == current => payload,
            ("ItemCreated", 1) => upcast_item_created_v1(payload),
            _ => return Err(codec::unknown(event_type, schema_version)),
        };
        codec::from_payload(event_type, payload)
    }
}

/// v1 `{sku, name, quantity}` -> v2 `{sku, name, quantity, price: null}`:
/// an item created before prices existed has none.
fn upcast_item_created_v1(payload: Value) -> Value {
    match payload {
        Value::Object(mut map) => {
            map.entry("price").or_insert(Value::Null);
            Value::Object(map)
        }
        // Not an object: let decoding report it.
        other => other,
    }
}

/// What the catalog says about a SKU when an order is placed: the facts the
/// order's decision needs, looked up on the command side beforehand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogPrice {
    /// No item has this SKU.
    Unknown,
    /// The item exists but has no price yet.
    Unpriced,
    /// The item's current price.
    Priced(Price),
}

/// An inventory item as its events leave it. Counts are units, and always
/// `reserved <= on_hand`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventoryState {
    /// Whether the item was created.
    pub exists: bool,
    /// Its SKU; `None` until created.
    pub sku: Option<Sku>,
    /// Its name; `None` until created.
    pub name: Option<String>,
    /// `None` for an item created before prices existed, until it is priced.
    #[serde(default)]
    pub price: Option<Price>,
    /// Units in stock, reserved or not; at most
    /// [`InventoryState::MAX_ON_HAND`].
    pub on_hand: u64,
    /// Units held for orders not shipped yet: the sum of `reservations`.
    pub reserved: u64,
    /// Open reservations: order -> quantity.
    pub reservations: BTreeMap<OrderId, Quantity>,
    /// How the reservations of the orders recalled for the decision at hand
    /// ended ([`Aggregate::recall`]). Never folded, never snapshotted: an
    /// item does not keep every order it served.
    #[serde(skip)]
    pub ended: BTreeMap<OrderId, ReservationEnd>,
}

/// How a reservation that is no longer open ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationEnd {
    /// The order's saga gave the units back.
    Released,
    /// The order shipped and the units left the stock.
    Committed,
}

impl InventoryState {
    /// The largest `on_hand` (it must fit the API's `i64`).
    pub const MAX_ON_HAND: u64 = i64::MAX as u64;

    /// `on_hand - reserved`.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// The catalog's answer for this SKU.
    pub fn catalog_price(&self) -> CatalogPrice {
        match (self.exists, self.price) {
            (false, _) => CatalogPrice::Unknown,
            (true, None) => CatalogPrice::Unpriced,
            (true, Some(price)) => CatalogPrice::Priced(price),
        }
    }

    /// Whether `order_id` ever reserved here (open, or released or
    /// committed as recalled).
    pub fn has_seen(&self, order_id: &OrderId) -> bool {
        self.reservations.contains_key(order_id) || self.ended.contains_key(order_id)
    }
}

/// Why an [`Inventory`] item refuses a command; nothing is appended. Each
/// variant's doc starts with its [`DomainError::code`]. `NotFound` is of
/// [`ErrorKind::NotFound`], `AlreadyExists` of [`ErrorKind::AlreadyExists`],
/// every other of [`ErrorKind::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// `item_not_found`: no item with this SKU (any command but `Create`).
    #[error("item not found")]
    NotFound,
    /// `item_already_exists`: `Create` for a SKU that has an item.
    #[error("item already exists")]
    AlreadyExists,
    /// `insufficient_stock`: a reservation of more units than are
    /// available; the saga cancels the order as `out_of_stock`.
    #[error("insufficient stock: {available} available, {requested} requested")]
    InsufficientStock {
        /// Units available: `on_hand - reserved`.
        available: u64,
        /// Units asked for.
        requested: Quantity,
    },
    /// `reservation_not_found`: a commit for an order that holds no
    /// reservation here and never committed one.
    #[error("no reservation for order {order_id}")]
    ReservationNotFound {
        /// The order the commit named.
        order_id: OrderId,
    },
    /// `stock_overflow`: a restock that would take `on_hand` past
    /// [`InventoryState::MAX_ON_HAND`].
    #[error("stock would exceed {max}", max = InventoryState::MAX_ON_HAND)]
    StockOverflow,
    /// `invalid_name`: a blank name, or one over
    /// [`TEXT_MAX_CHARS`](crate::TEXT_MAX_CHARS) characters, as the
    /// [`ValueError`] says.
    #[error("invalid name: {0}")]
    InvalidName(ValueError),
    /// `currency_required`: `SetPrice` without a currency for an item that
    /// has no price yet.
    #[error("the item has no price yet: its first price needs a currency")]
    CurrencyRequired,
}

impl DomainError for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            InventoryError::NotFound => "item_not_found",
            InventoryError::AlreadyExists => "item_already_exists",
            InventoryError::InsufficientStock { .. } => "insufficient_stock",
            InventoryError::ReservationNotFound { .. } => "reservation_not_found",
            InventoryError::StockOverflow => "stock_overflow",
            InventoryError::InvalidName(_) => "invalid_name",
            InventoryError::CurrencyRequired => "currency_required",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            InventoryError::NotFound => ErrorKind::NotFound,
            InventoryError::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Rejected,
        }
    }
}

impl Aggregate for Inventory {
    const STREAM_TYPE: &'static str = "inventory";
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    /// 2: `committed` and `released` (every order ever served) are gone.
    const STATE_SCHEMA: u32 = 2;

    fn initial() -> InventoryState {
        InventoryState::default()
    }

    /// A reserve or a commit for an order without an open reservation needs
    /// to know whether that order's reservation ended (and how).
    fn recall_key(state: &InventoryState, command: &InventoryCommand) -> Option<OrderId> {
        match command {
            InventoryCommand::Reserve { order_id, .. } | InventoryCommand::Commit { order_id }
                if !state.reservations.contains_key(order_id) =>
            {
                Some(*order_id)
            }
            _ => None,
        }
    }

    fn recall(mut state: InventoryState, past: &[InventoryEvent]) -> InventoryState {
        for event in past {
            match event {
                InventoryEvent::ReservationReleased { order_id, .. } => {
                    state.ended.insert(*order_id, ReservationEnd::Released);
                }
                InventoryEvent::ReservationCommitted { order_id, .. } => {
                    state.ended.insert(*order_id, ReservationEnd::Committed);
                }
                _ => {}
            }
        }
        state
    }

    fn decide(
        state: &InventoryState,
        command: &InventoryCommand,
    ) -> Result<Vec<InventoryEvent>, InventoryError> {
        use InventoryCommand as C;
        if let C::Create {
            sku,
            name,
            quantity,
            price,
        } = command
        {
            if state.exists {
                return Err(InventoryError::AlreadyExists);
            }
            validate_text("name", name).map_err(InventoryError::InvalidName)?;
            return Ok(vec![InventoryEvent::ItemCreated {
                sku: sku.clone(),
                name: name.clone(),
                quantity: *quantity,
                price: Some(*price),
            }]);
        }
        if !state.exists {
            return Err(InventoryError::NotFound);
        }
        match command {
            C::Create { .. } => Err(InventoryError::AlreadyExists),
            C::Restock { quantity } => {
                state
                    .on_hand
                    .checked_add(u64::from(*quantity))
                    .filter(|v| *v <= InventoryState::MAX_ON_HAND)
                    .ok_or(InventoryError::StockOverflow)?;
                Ok(vec![InventoryEvent::ItemRestocked {
                    quantity: *quantity,
                }])
            }
            C::SetPrice {
                unit_price,
                currency,
            } => {
                let currency = currency
                    .or(state.price.map(|p| p.currency))
                    .ok_or(InventoryError::CurrencyRequired)?;
                let price = Price::new(*unit_price, currency);
                if state.price == Some(price) {
                    return Ok(vec![]);
                }
                Ok(vec![InventoryEvent::PriceChanged { price }])
            }
            C::Reserve { order_id, quantity } => {
                if state.has_seen(order_id) {
                    return Ok(vec![]);
                }
                let available = state.available();
                if available < u64::from(*quantity) {
                    return Err(InventoryError::InsufficientStock {
                        available,
                        requested: *quantity,
                    });
                }
                Ok(vec![InventoryEvent::StockReserved {
                    order_id: *order_id,
                    quantity: *quantity,
                }])
            }
            C::Release { order_id } => Ok(state
                .reservations
                .get(order_id)
                .map(|quantity| InventoryEvent::ReservationReleased {
                    order_id: *order_id,
                    quantity: *quantity,
                })
                .into_iter()
                .collect()),
            C::Commit { order_id } => match state.reservations.get(order_id) {
                Some(quantity) => Ok(vec![InventoryEvent::ReservationCommitted {
                    order_id: *order_id,
                    quantity: *quantity,
                }]),
                None if state.ended.get(order_id) == Some(&ReservationEnd::Committed) => Ok(vec![]),
                None => Err(InventoryError::ReservationNotFound {
                    order_id: *order_id,
                }),
            },
        }
    }

    fn evolve(mut state: InventoryState, event: &InventoryEvent) -> InventoryState {
        match event {
            InventoryEvent::ItemCreated {
                sku,
                name,
                quantity,
                price,
            } => {
                state.exists = true;
                state.sku = Some(sku.clone());
                state.name = Some(name.clone());
                state.price = *price;
                state.on_hand = u64::from(*quantity);
            }
            InventoryEvent::ItemRestocked { quantity } => {
                state.on_hand = state.on_hand.saturating_add(u64::from(*quantity));
            }
            InventoryEvent::PriceChanged { price } => state.price = Some(*price),
            InventoryEvent::StockReserved { order_id, quantity } => {
                state.reserved = state.reserved.saturating_add(u64::from(*quantity));
                state.reservations.insert(*order_id, *quantity);
            }
            InventoryEvent::ReservationReleased { order_id, quantity } => {
                state.reserved = state.reserved.saturating_sub(u64::from(*quantity));
                state.reservations.remove(order_id);
            }
            InventoryEvent::ReservationCommitted { order_id, quantity } => {
                state.on_hand = state.on_hand.saturating_sub(u64::from(*quantity));
                state.reserved = state.reserved.saturating_sub(u64::from(*quantity));
                state.reservations.remove(order_id);
            }
        }
        state
    }
}

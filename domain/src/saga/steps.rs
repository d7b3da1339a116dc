//! The steps of a saga and the order they run in.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::order::CancellationReason;
use crate::values::{
    AccountId, Currency, CustomerId, Money, OrderId, OrderLine, ShippingAddress, Sku,
};

/// One step of the saga: a command to one aggregate or to the carrier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Step {
    /// Reserve a line's quantity of `sku` for the order
    /// ([`InventoryCommand::Reserve`](crate::InventoryCommand::Reserve)).
    ReserveStock {
        /// The line's SKU.
        sku: Sku,
    },
    /// Mark the order reserved.
    MarkReserved,
    /// Charge the order's total to its account
    /// ([`AccountCommand::Charge`](crate::AccountCommand::Charge));
    /// skipped for a zero total.
    ChargePayment,
    /// Mark the order paid.
    MarkPaid,
    /// Hand the order to the carrier, which answers with a tracking number.
    Ship,
    /// Mark the order shipped, with the tracking number. After it there is
    /// nothing to compensate.
    MarkShipped,
    /// Commit a line's reservation: the units leave the stock
    /// ([`InventoryCommand::Commit`](crate::InventoryCommand::Commit)).
    CommitStock {
        /// The line's SKU.
        sku: Sku,
    },
    // Compensations.
    /// Ask the carrier to cancel the shipment.
    CancelShipment,
    /// Give back the order's charge
    /// ([`AccountCommand::Refund`](crate::AccountCommand::Refund)).
    RefundPayment,
    /// Release a line's reservation
    /// ([`InventoryCommand::Release`](crate::InventoryCommand::Release)).
    ReleaseStock {
        /// The line's SKU.
        sku: Sku,
    },
    /// Cancel the order with the compensation's reason
    /// ([`OrderCommand::Cancel`](crate::OrderCommand::Cancel)).
    CancelOrder,
}

impl Step {
    /// The step's name, without its SKU.
    pub fn name(&self) -> &'static str {
        match self {
            Step::ReserveStock { .. } => "reserve_stock",
            Step::MarkReserved => "mark_reserved",
            Step::ChargePayment => "charge_payment",
            Step::MarkPaid => "mark_paid",
            Step::Ship => "ship",
            Step::MarkShipped => "mark_shipped",
            Step::CommitStock { .. } => "commit_stock",
            Step::CancelShipment => "cancel_shipment",
            Step::RefundPayment => "refund_payment",
            Step::ReleaseStock { .. } => "release_stock",
            Step::CancelOrder => "cancel_order",
        }
    }

    /// The SKU of a per-line step.
    pub fn sku(&self) -> Option<&Sku> {
        match self {
            Step::ReserveStock { sku } | Step::CommitStock { sku } | Step::ReleaseStock { sku } => {
                Some(sku)
            }
            _ => None,
        }
    }

    /// Whether the step undoes another.
    pub fn is_compensation(&self) -> bool {
        matches!(
            self,
            Step::CancelShipment
                | Step::RefundPayment
                | Step::ReleaseStock { .. }
                | Step::CancelOrder
        )
    }

    /// Why the order is cancelled when this forward step is refused, if a
    /// refusal of it is a business outcome at all.
    pub fn refusal_reason(&self) -> Option<CancellationReason> {
        match self {
            Step::ReserveStock { .. } => Some(CancellationReason::OutOfStock),
            Step::ChargePayment => Some(CancellationReason::PaymentDeclined),
            Step::Ship => Some(CancellationReason::ShippingFailed),
            // The order refuses to be marked shipped only once the customer
            // asked to cancel it.
            Step::MarkShipped => Some(CancellationReason::CustomerRequest),
            _ => None,
        }
    }
}

/// `name` or `name:SKU`: unique within a saga, used in idempotency keys.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sku() {
            Some(sku) => write!(f, "{}:{}", self.name(), sku),
            None => f.write_str(self.name()),
        }
    }
}

/// What the saga knows of its order, copied from `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOrder {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered: the charge is checked against the account's owner.
    pub customer_id: CustomerId,
    /// The account charged.
    pub account_id: AccountId,
    /// The order's currency.
    pub currency: Currency,
    /// The lines, at the prices they were placed at: one reservation each.
    pub lines: Vec<OrderLine>,
    /// What is charged, in minor units of `currency`; zero skips
    /// [`Step::ChargePayment`].
    pub total: Money,
    /// Where the carrier delivers.
    pub shipping_address: ShippingAddress,
}

impl SagaOrder {
    /// The forward steps of this order, in order.
    pub fn forward_steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .lines
            .iter()
            .map(|line| Step::ReserveStock {
                sku: line.sku.clone(),
            })
            .collect();
        steps.push(Step::MarkReserved);
        if !self.total.is_zero() {
            steps.push(Step::ChargePayment);
        }
        steps.push(Step::MarkPaid);
        steps.push(Step::Ship);
        steps.push(Step::MarkShipped);
        steps.extend(self.lines.iter().map(|line| Step::CommitStock {
            sku: line.sku.clone(),
        }));
        steps
    }
}

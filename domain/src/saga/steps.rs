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
    ReserveStock { sku: Sku },
    MarkReserved,
    ChargePayment,
    MarkPaid,
    Ship,
    MarkShipped,
    CommitStock { sku: Sku },
    // Compensations.
    CancelShipment,
    RefundPayment,
    ReleaseStock { sku: Sku },
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
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub account_id: AccountId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    pub total: Money,
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

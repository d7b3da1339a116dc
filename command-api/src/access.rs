//! Who may act on which aggregate (the API guide, "Identity and access";
//! design decision 9): a customer acts only on what it owns, read from the state the
//! decision loads (an account's `customer_id`, an order's), and anything
//! else answers exactly as a missing aggregate does.
//!
//! Where the check runs: in the decision itself. [`Guarded`] is the
//! aggregate `A` whose `decide` first asks whether the caller the command
//! carries may act on the state, and answers `A`'s own not-found error when
//! it may not. The alternative, a hook the repository calls between load and
//! decide, needs a second argument on every path through the repository;
//! wrapping the decider gets the same guarantees from the repository as it
//! is: the check runs wherever a decision runs, so on every re-read after a
//! conflict and on the state the fast path remembered, and a refusal is
//! what the domain would have said for a missing aggregate (the same error
//! value, so the same problem body, stored under the idempotency key the
//! same way), with nothing appended. The domain stays a function of state
//! and command, without callers in it.

use std::fmt;
use std::marker::PhantomData;

use auth::Caller;
use domain::{
    AccountError, Aggregate, BankAccount, CustomerId, FulfilmentSaga, Inventory, InventoryError,
    Order, OrderError, SagaError,
};

/// An aggregate whose state may belong to a customer.
pub trait Owned: Aggregate {
    /// The customer the state belongs to; `None` for one that does not
    /// exist yet, or that no customer owns (the shop's inventory, sagas).
    fn owner(state: &Self::State) -> Option<CustomerId>;

    /// The refusal for an aggregate that does not exist.
    fn not_found() -> Self::Error;
}

impl Owned for BankAccount {
    fn owner(state: &Self::State) -> Option<CustomerId> {
        state.customer_id
    }

    fn not_found() -> AccountError {
        AccountError::NotFound
    }
}

impl Owned for Order {
    fn owner(state: &Self::State) -> Option<CustomerId> {
        state.customer_id
    }

    fn not_found() -> OrderError {
        OrderError::NotFound
    }
}

impl Owned for Inventory {
    fn owner(_: &Self::State) -> Option<CustomerId> {
        None
    }

    fn not_found() -> InventoryError {
        InventoryError::NotFound
    }
}

impl Owned for FulfilmentSaga {
    fn owner(_: &Self::State) -> Option<CustomerId> {
        None
    }

    fn not_found() -> SagaError {
        SagaError::NotFound
    }
}

/// Who may run a command on an aggregate, beside the route's role (checked
/// before the handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Whoever the route's role lets in: commands that create an aggregate
    /// (its owner is the caller, or the id is taken whoever has it) and the
    /// operators' commands.
    Anyone,
    /// Only the customer that owns the aggregate.
    Owner,
    /// The owner, or any operator (`POST /orders/{id}/cancel`).
    OwnerOrOperator,
}

impl Rule {
    /// Whether `caller` may act on `state` of `A`. An aggregate that does
    /// not exist, or that no customer owns, is nobody's: only `Anyone` (and
    /// an operator under `OwnerOrOperator`) gets to it, and the caller then
    /// hears what the domain says of it.
    pub fn permits<A: Owned>(self, caller: &Caller, state: &A::State) -> bool {
        match self {
            Rule::Anyone => true,
            Rule::OwnerOrOperator if caller.is_operator() => true,
            Rule::Owner | Rule::OwnerOrOperator => {
                caller.owns_everything()
                    || A::owner(state).is_some_and(|owner| caller.owns(owner.as_uuid()))
            }
        }
    }
}

/// A command of `A` with who sends it and the rule it runs under.
pub struct GuardedCommand<C> {
    pub caller: Caller,
    pub rule: Rule,
    pub command: C,
}

impl<C: fmt::Debug> fmt::Debug for GuardedCommand<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedCommand")
            .field("caller", &self.caller.subject())
            .field("rule", &self.rule)
            .field("command", &self.command)
            .finish()
    }
}

/// `A`, deciding only for callers its [`Rule`] permits: the same stream,
/// state, events and errors, so the repository loads and appends it as `A`.
pub struct Guarded<A>(PhantomData<fn() -> A>);

impl<A: Owned> Aggregate for Guarded<A> {
    const STREAM_TYPE: &'static str = A::STREAM_TYPE;
    type State = A::State;
    type Command = GuardedCommand<A::Command>;
    type Event = A::Event;
    type Error = A::Error;

    const STATE_SCHEMA: u32 = A::STATE_SCHEMA;

    fn initial() -> A::State {
        A::initial()
    }

    fn recall_key(state: &A::State, guarded: &Self::Command) -> Option<domain::OrderId> {
        A::recall_key(state, &guarded.command)
    }

    fn recall(state: A::State, past: &[A::Event]) -> A::State {
        A::recall(state, past)
    }

    fn decide(state: &A::State, guarded: &Self::Command) -> Result<Vec<A::Event>, A::Error> {
        if !guarded.rule.permits::<A>(&guarded.caller, state) {
            return Err(A::not_found());
        }
        A::decide(state, &guarded.command)
    }

    fn evolve(state: A::State, event: &A::Event) -> A::State {
        A::evolve(state, event)
    }
}

#[cfg(test)]
mod tests {
    use domain::{AccountCommand, AccountId, Amount, Currency};
    use uuid::Uuid;

    use super::*;

    fn opened(owner: Uuid) -> domain::AccountState {
        let events = BankAccount::decide(
            &BankAccount::initial(),
            &AccountCommand::Open {
                account_id: AccountId::new(Uuid::now_v7()),
                customer_id: CustomerId::new(owner),
                currency: Currency::EUR,
            },
        )
        .expect("opens");
        BankAccount::fold(BankAccount::initial(), &events)
    }

    fn deposit(caller: Caller, rule: Rule) -> GuardedCommand<AccountCommand> {
        GuardedCommand {
            caller,
            rule,
            command: AccountCommand::Deposit {
                amount: Amount::new(100).expect("amount"),
            },
        }
    }

    #[test]
    fn another_customers_account_is_refused_as_a_missing_one() {
        let owner = Uuid::now_v7();
        let state = opened(owner);
        let missing = Guarded::<BankAccount>::decide(
            &BankAccount::initial(),
            &deposit(Caller::customer(owner), Rule::Owner),
        );
        assert_eq!(missing, Err(AccountError::NotFound));
        for caller in [Caller::customer(Uuid::now_v7()), Caller::operator("ops")] {
            let refused = Guarded::<BankAccount>::decide(&state, &deposit(caller, Rule::Owner));
            assert_eq!(refused, missing);
        }
        for caller in [Caller::customer(owner), Caller::insecure_everything()] {
            let decided = Guarded::<BankAccount>::decide(&state, &deposit(caller, Rule::Owner));
            assert!(decided.is_ok(), "{decided:?}");
        }
    }

    #[test]
    fn an_operator_passes_owner_or_operator_and_anyone_passes_anyone() {
        let state = opened(Uuid::now_v7());
        let stranger = Caller::customer(Uuid::now_v7());
        assert!(Rule::OwnerOrOperator.permits::<BankAccount>(&Caller::operator("ops"), &state));
        assert!(!Rule::OwnerOrOperator.permits::<BankAccount>(&stranger, &state));
        assert!(Rule::Anyone.permits::<BankAccount>(&stranger, &state));
        // Nobody owns what does not exist.
        let nothing = BankAccount::initial();
        assert!(!Rule::Owner.permits::<BankAccount>(&stranger, &nothing));
        assert!(Rule::Owner.permits::<BankAccount>(&Caller::insecure_everything(), &nothing));
    }
}

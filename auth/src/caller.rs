//! Who is asking: the [`Caller`] a verified token stands for, and why a
//! request has none ([`AuthError`]).

use uuid::Uuid;

/// A role a token may carry in its `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Acts on what it owns: its accounts, and the orders and sagas whose
    /// `customer_id` is its `sub`.
    Customer,
    /// Runs the shop: inventory, prices, sagas, projections, any read.
    Operator,
}

impl Role {
    /// The role's name in the `roles` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Operator => "operator",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Role> {
        match name {
            "customer" => Some(Role::Customer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// Whom a token is issued to ([`crate::issue_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A customer: `sub` is its customer id, role `customer`.
    Customer(Uuid),
    /// An operator: `sub` is a name, role `operator`.
    Operator(String),
}

/// The verified identity behind a request. Only built from a verified
/// token, by the constructors below, or by
/// [`Caller::insecure_everything`]; once you hold one, a customer's subject
/// is a UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    subject: String,
    customer: bool,
    operator: bool,
    customer_id: Option<Uuid>,
    owns_everything: bool,
}

/// The subject recorded as the actor when authentication is switched off.
const INSECURE_SUBJECT: &str = "insecure-no-auth";

impl Caller {
    /// A caller from verified claims: `roles` non-empty, every one known,
    /// and a customer's `sub` a UUID.
    pub(crate) fn from_claims(subject: String, roles: &[String]) -> Result<Caller, AuthError> {
        if subject.is_empty() {
            return Err(AuthError::invalid("empty sub"));
        }
        if roles.is_empty() {
            return Err(AuthError::invalid("no roles"));
        }
        let (mut customer, mut operator) = (false, false);
        for name in roles {
            match Role::parse(name) {
                Some(Role::Customer) => customer = true,
                Some(Role::Operator) => operator = true,
                None => return Err(AuthError::invalid(format!("unknown role {name:?}"))),
            }
        }
        let customer_id = if customer {
            let id = Uuid::parse_str(&subject)
                .map_err(|_| AuthError::invalid("a customer's sub is not a UUID"))?;
            Some(id)
        } else {
            None
        };
        Ok(Caller {
            subject,
            customer,
            operator,
            customer_id,
            owns_everything: false,
        })
    }

    /// A customer (for tests and internal callers).
    pub fn customer(id: Uuid) -> Caller {
        Caller {
            subject: id.to_string(),
            customer: true,
            operator: false,
            customer_id: Some(id),
            owns_everything: false,
        }
    }

    /// An operator (for tests and internal callers).
    pub fn operator(name: impl Into<String>) -> Caller {
        Caller {
            subject: name.into(),
            customer: false,
            operator: true,
            customer_id: None,
            owns_everything: false,
        }
    }

    /// The caller of every request under `--insecure-no-auth`: both roles,
    /// owner of everything, actor `insecure-no-auth`.
    pub fn insecure_everything() -> Caller {
        Caller {
            subject: INSECURE_SUBJECT.to_owned(),
            customer: true,
            operator: true,
            customer_id: None,
            owns_everything: true,
        }
    }

    /// The token's `sub`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// What events appended for this caller record as their `actor`.
    pub fn actor(&self) -> &str {
        &self.subject
    }

    pub fn has_role(&self, role: Role) -> bool {
        match role {
            Role::Customer => self.customer,
            Role::Operator => self.operator,
        }
    }

    pub fn is_customer(&self) -> bool {
        self.customer
    }

    pub fn is_operator(&self) -> bool {
        self.operator
    }

    /// The customer id of a customer token (`None` for an operator, and
    /// for [`Caller::insecure_everything`], which owns every customer's).
    pub fn customer_id(&self) -> Option<Uuid> {
        self.customer_id
    }

    /// Whether the caller acts as the owner of what `customer_id` owns:
    /// that customer itself, or anyone under `--insecure-no-auth`.
    /// An operator owns nothing (it may read anything: check the role).
    pub fn owns(&self, customer_id: Uuid) -> bool {
        self.owns_everything || self.customer_id == Some(customer_id)
    }

    /// True only for [`Caller::insecure_everything`].
    pub fn owns_everything(&self) -> bool {
        self.owns_everything
    }
}

/// Why a request has no [`Caller`]. Both are 401 with
/// `WWW-Authenticate: Bearer`; the body carries [`AuthError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no credentials")]
    Unauthenticated,
    /// Anything wrong with the credentials. The reason is for the logs,
    /// never for the client.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

impl AuthError {
    pub(crate) fn invalid(reason: impl Into<String>) -> AuthError {
        AuthError::InvalidToken(reason.into())
    }

    /// The stable code of the API guide: `unauthenticated` or `invalid_token`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated => "unauthenticated",
            AuthError::InvalidToken(_) => "invalid_token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_customer_is_its_uuid_and_owns_only_its_own() {
        let id = Uuid::new_v4();
        let caller = Caller::from_claims(id.to_string(), &roles(&["customer"])).unwrap();
        assert_eq!(caller, Caller::customer(id));
        assert_eq!(caller.customer_id(), Some(id));
        assert!(caller.owns(id));
        assert!(!caller.owns(Uuid::new_v4()));
        assert!(!caller.is_operator());
        assert_eq!(caller.actor(), id.to_string());
    }

    #[test]
    fn an_operator_is_a_name_and_owns_nothing() {
        let caller = Caller::from_claims("alice".into(), &roles(&["operator"])).unwrap();
        assert_eq!(caller, Caller::operator("alice"));
        assert!(caller.is_operator());
        assert!(!caller.is_customer());
        assert_eq!(caller.customer_id(), None);
        assert!(!caller.owns(Uuid::new_v4()));
    }

    #[test]
    fn insecure_everything_has_both_roles_and_owns_everything() {
        let caller = Caller::insecure_everything();
        assert!(caller.is_operator() && caller.is_customer());
        assert!(caller.owns(Uuid::new_v4()));
        assert_eq!(caller.actor(), "insecure-no-auth");
    }

    #[test]
    fn bad_claims_are_invalid_tokens() {
        for (sub, names) in [
            ("alice", vec!["customer"]),
            ("alice", vec!["customer", "operator"]),
            ("alice", vec![]),
            ("alice", vec!["admin"]),
            ("alice", vec!["operator", "Operator"]),
            ("", vec!["operator"]),
        ] {
            let error = Caller::from_claims(sub.into(), &roles(&names)).unwrap_err();
            assert_eq!(error.code(), "invalid_token", "{sub} {names:?}");
        }
        assert_eq!(AuthError::Unauthenticated.code(), "unauthenticated");
    }
}

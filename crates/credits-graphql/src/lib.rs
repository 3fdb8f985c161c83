//! The GraphQL API of the credits service (`shared/contract.graphql`): schema, scalars, the
//! one table of error codes, access control and request limits. It holds no state of its
//! own; every resolver calls the `Ledger` facade. Serialization of domain types to GraphQL
//! lives here and nowhere else.

pub mod access;
pub mod error;
pub mod limits;
pub mod mutation;
pub mod objects;
pub mod query;
pub mod reviews;
pub mod scalars;
pub mod subscription;
pub mod types;

use async_graphql::Schema;
use credits_actors::Ledger;

pub use access::Principal;
pub use error::{ApiError, Code};
pub use types::Role;

/// Largest list a resolver reads in one go.
pub const MAX_LIST: usize = 1000;

pub type CreditsSchema = Schema<query::Query, mutation::Mutation, subscription::Subscription>;

/// Schema options that differ between deployments.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub introspection: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            introspection: true,
        }
    }
}

/// Builds the schema around a running service.
pub fn schema(ledger: Ledger, config: &ApiConfig) -> CreditsSchema {
    let mut builder = Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .data(ledger)
        .limit_depth(limits::MAX_DEPTH)
        .limit_complexity(limits::MAX_COMPLEXITY)
        .extension(limits::Limits::default());
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema's SDL, as checked in at `graphql/schema.graphql`.
pub fn sdl() -> String {
    Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .finish()
        .sdl()
}

/// Who a bearer token belongs to: the bootstrap admin token (compared by hash), or a
/// token minted by `createApiToken`. `None` for anything else.
pub async fn authenticate(
    ledger: &Ledger,
    admin_token_hash: Option<&credits_store::TokenHash>,
    token: &str,
) -> Result<Option<Principal>, ApiError> {
    let hash = credits_store::TokenHash::of_secret(token);
    if admin_token_hash.is_some_and(|h| h == &hash) {
        return Ok(Some(Principal {
            role: Role::Admin,
            owner_id: None,
        }));
    }
    let row = ledger.store().find_token(&hash).await?;
    Ok(row.and_then(|t| {
        let role = match t.role {
            credits_store::TokenRole::Admin => Role::Admin,
            credits_store::TokenRole::Service => Role::Service,
            credits_store::TokenRole::User => Role::User,
        };
        // Ownership checks read a USER's owner id; a USER token without one (which no
        // command mints) is refused rather than read as staff.
        let orphan = role == Role::User && t.owner_id.is_none();
        (!orphan).then_some(Principal {
            role,
            owner_id: t.owner_id,
        })
    }))
}

/// Reads `Bearer <token>` from a header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

//! Every error a client sees carries `extensions.code` (SPEC 10). This module is the one
//! table from domain errors to codes, so the codes cannot drift between resolvers.

use async_graphql::ErrorExtensions;
use credits_actors::ExecError;
use credits_core::{AmountError, OpError};

/// The codes of SPEC 10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    NotFound,
    InvalidInput,
    InsufficientCredits,
    ModelNotAllowed,
    UnknownModel,
    MemberLimitExceeded,
    IdempotencyConflict,
    ReservationNotActive,
    PricingFailed,
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::InvalidInput => "INVALID_INPUT",
            Code::InsufficientCredits => "INSUFFICIENT_CREDITS",
            Code::ModelNotAllowed => "MODEL_NOT_ALLOWED",
            Code::UnknownModel => "UNKNOWN_MODEL",
            Code::MemberLimitExceeded => "MEMBER_LIMIT_EXCEEDED",
            Code::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Code::ReservationNotActive => "RESERVATION_NOT_ACTIVE",
            Code::PricingFailed => "PRICING_FAILED",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// An error for a client: a code and a message in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidInput, message)
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(Code::Forbidden, "this token may not do that")
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Unavailable, message)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        async_graphql::Error::new(e.message).extend_with(|_, ext| ext.set("code", e.code.as_str()))
    }
}

/// For errors answered outside a resolver (a refused request or WebSocket operation):
/// no location in the document.
impl From<ApiError> for async_graphql::ServerError {
    fn from(e: ApiError) -> Self {
        let e = async_graphql::Error::from(e);
        let mut error = async_graphql::ServerError::new(e.message, None);
        error.extensions = e.extensions;
        error
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let code = match &e {
            OpError::InvalidInput(_) => Code::InvalidInput,
            OpError::NotFound(_) => Code::NotFound,
            OpError::ModelNotAllowed { .. } => Code::ModelNotAllowed,
            OpError::MemberLimitExceeded { .. } => Code::MemberLimitExceeded,
            OpError::InsufficientCredits { .. } => Code::InsufficientCredits,
            OpError::ReservationNotActive => Code::ReservationNotActive,
            OpError::IdempotencyConflict => Code::IdempotencyConflict,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Op(op) => op.into(),
            ExecError::NotFound => ApiError::not_found("wallet"),
            ExecError::Unavailable(why) => ApiError::unavailable(why),
            ExecError::StaleLimits => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<AmountError> for ApiError {
    fn from(e: AmountError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<credits_pricing::PricingError> for ApiError {
    fn from(e: credits_pricing::PricingError) -> Self {
        use credits_pricing::PricingError as P;
        let code = match &e {
            P::UnknownModel { .. } => Code::UnknownModel,
            P::InvalidInput { .. } => Code::InvalidInput,
            _ => Code::PricingFailed,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<credits_store::StoreError> for ApiError {
    fn from(e: credits_store::StoreError) -> Self {
        // An answer larger than a bound is the request's size, not the store's health:
        // asking again would fail again.
        match e {
            credits_store::StoreError::TooLarge { .. } => {
                return ApiError::invalid(format!("{e}: narrow the request (e.g. from and to)"));
            }
            credits_store::StoreError::InvalidCursor => return ApiError::invalid("invalid cursor"),
            _ => {}
        }
        tracing::warn!(error = %e, "store error");
        ApiError::unavailable("the store is unavailable")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<credits_actors::ServiceError> for ApiError {
    fn from(e: credits_actors::ServiceError) -> Self {
        use credits_actors::ServiceError as S;
        match e {
            S::Exec(e) => e.into(),
            S::Pricing(e) => e.into(),
            S::Store(e) => e.into(),
            S::Invalid(m) => ApiError::invalid(m),
            S::NotFound(what) => ApiError::not_found(what),
            S::Forbidden(m) => ApiError::new(Code::Forbidden, m),
        }
    }
}

/// For `map_err` where the type needs a name.
pub fn service(e: credits_actors::ServiceError) -> ApiError {
    e.into()
}

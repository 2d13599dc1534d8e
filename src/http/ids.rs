//! Ids in paths are UUIDs, parsed at the edge: anything else names nothing, so it is 404
//! before it reaches the database (PostgreSQL would refuse a NUL byte with an error).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// The `{id}` of a path, as the hyphenated lower-case UUID the database stores.
pub struct ResourceId(pub String);

impl ResourceId {
    /// `None` when `text` is not a UUID.
    pub fn parse(text: &str) -> Option<String> {
        uuid::Uuid::try_parse(text)
            .ok()
            .map(|id| id.hyphenated().to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ResourceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("resource"))?;
        ResourceId::parse(&raw)
            .map(ResourceId)
            .ok_or_else(|| ApiError::not_found("resource"))
    }
}

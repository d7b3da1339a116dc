//! Extractors whose rejections are [`ApiError`]s, so a malformed request gets
//! the same problem+json shape as everything else.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Query parameters deserialised into `T` (which rejects unknown fields).
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
        Ok(Params(value))
    }
}

/// The one path parameter, as a string; the handler parses it into an id.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidId(rejection.body_text()))?;
        Ok(PathParam(value))
    }
}

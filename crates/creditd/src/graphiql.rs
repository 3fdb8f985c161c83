//! GraphiQL at `GET /graphql`, served whole from the binary: our own page
//! (`graphiql.html`) and React and GraphiQL as vendored from npm
//! (`assets/graphiql/README.md` says which versions and how to refresh them), so it works
//! on a machine that reaches nothing but this server, subscriptions included. The page must
//! never load anything from another origin.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The page: loads only [`ASSETS`] and points GraphiQL at `/graphql` (HTTP and WebSocket).
pub const PAGE: &str = include_str!("graphiql.html");

/// Where [`ASSETS`] are served; `graphiql.html` names them under it.
pub const ASSETS_PREFIX: &str = "/graphql/assets/";

/// A year: an asset's name carries its package's version, so a name never changes content.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// A vendored file, stored and served gzip-compressed.
pub struct Asset {
    /// The file name under [`ASSETS_PREFIX`], with the package's version in it.
    pub name: &'static str,
    pub content_type: &'static str,
    pub gzip: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            gzip: include_bytes!(concat!("../assets/graphiql/", $name, ".gz")),
        }
    };
}

pub const ASSETS: &[Asset] = &[
    asset!(
        "react-18.3.1.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "react-dom-18.3.1.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("graphiql-4.1.2.min.js", "text/javascript; charset=utf-8"),
    asset!("graphiql-4.1.2.min.css", "text/css; charset=utf-8"),
];

/// `GET /graphql/assets/{name}`. The body is always gzip, whatever the request's
/// `Accept-Encoding`: every browser that can run GraphiQL accepts gzip, and decompressing
/// here would need a deflate crate this binary does not otherwise carry (raw, the files
/// are 2.5 times larger). A script without gzip support (e.g. `curl` without `--compressed`)
/// gets the compressed bytes with `Content-Encoding: gzip` and can pipe them to `gzip -d`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CONTENT_ENCODING, "gzip"),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            a.gzip,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `src` and `href` values in the page, in order.
    fn references(page: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for attribute in [" src=\"", " href=\""] {
            let mut rest = page;
            while let Some(at) = rest.find(attribute) {
                rest = &rest[at + attribute.len()..];
                let end = rest.find('"').expect("a closing quote");
                found.push(&rest[..end]);
            }
        }
        found
    }

    #[test]
    fn the_page_loads_exactly_the_embedded_assets() {
        let mut referenced: Vec<&str> = references(PAGE)
            .into_iter()
            .filter(|r| *r != "data:,")
            .collect();
        referenced.sort_unstable();
        let mut served: Vec<String> = ASSETS
            .iter()
            .map(|a| format!("{ASSETS_PREFIX}{}", a.name))
            .collect();
        served.sort_unstable();
        assert_eq!(referenced, served);
    }

    #[test]
    fn assets_are_gzip() {
        for a in ASSETS {
            assert!(a.gzip.starts_with(&[0x1f, 0x8b]), "{} is not gzip", a.name);
        }
    }
}

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

/// The page's content policy: its own files and API only, its one inline script by hash
/// (so no other script can run in the page that holds an admin's token), never framed.
/// Styles may be inline: GraphiQL's editor writes them.
pub fn page_policy() -> &'static str {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(inline_script(PAGE).as_bytes()));
        format!(
            "default-src 'self'; script-src 'self' 'sha256-{hash}'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
    })
}

/// The text of the page's one inline `<script>` element, as the browser hashes it.
fn inline_script(page: &str) -> &str {
    let start = page
        .find("<script>")
        .expect("the page has an inline script")
        + "<script>".len();
    let end = page[start..]
        .find("</script>")
        .expect("the inline script ends");
    &page[start..start + end]
}

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

    /// Found by review: the page that holds an admin's token had no content policy. Its
    /// one inline script is allowed by hash, so the page must keep exactly one.
    #[test]
    fn the_policy_allows_the_one_inline_script_by_hash() {
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script");
        let script = inline_script(PAGE);
        assert!(script.contains("GraphiQL"), "{script}");
        let policy = page_policy();
        assert!(policy.contains("script-src 'self' 'sha256-"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}

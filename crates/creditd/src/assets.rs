//! The dashboard's static files, embedded in the binary (no CDN, nothing fetched at run time).

/// (path, content type, body)
pub const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../dashboard/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../../../dashboard/index.html"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../../dashboard/style.css"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/app.js"),
    ),
    (
        "/gql.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/gql.js"),
    ),
    (
        "/ops.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/ops.js"),
    ),
    (
        "/credits.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/credits.js"),
    ),
    (
        "/time.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/time.js"),
    ),
    (
        "/chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../dashboard/chart.js"),
    ),
];

pub fn find(path: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}

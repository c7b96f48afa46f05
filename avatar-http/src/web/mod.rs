//! The static pages, compiled into the binary (no CDN: everything is served locally).

/// The playground at `/`.
pub const INDEX_HTML: &str = include_str!("index.html");
/// The API reference at `/docs`.
pub const DOCS_HTML: &str = include_str!("docs.html");

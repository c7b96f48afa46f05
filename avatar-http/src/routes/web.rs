//! `GET /`: the avatar playground page.

use axum::response::Html;

/// The self-contained web page (no external assets).
pub async fn index() -> Html<&'static str> {
    Html(crate::web::INDEX_HTML)
}

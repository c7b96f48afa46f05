//! `GET /openapi.json` and `GET /docs` (a self-contained page that renders the spec).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use crate::state::AppState;

/// The OpenAPI 3.1 document, generated from the handlers' types.
pub async fn openapi(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.openapi_json.clone(),
    )
        .into_response()
}

/// The API reference page: renders `/openapi.json` in the browser, with no external assets.
pub async fn docs() -> Html<&'static str> {
    Html(crate::web::DOCS_HTML)
}

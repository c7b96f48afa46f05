//! Typed reads of JSON body fields, shared by every endpoint that takes a JSON object. `null`
//! counts as absent; integers, numbers and booleans may also come as strings (form-minded
//! clients send `"3"` and `"true"`). Each endpoint turns a [`FieldError`] into its own error
//! shape (our `ErrorBody`, FastAPI's `{detail}`, seed 001's response).

use serde_json::{Map, Value};

/// A field that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A request body that must be a JSON object (errors name the field `body`).
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, FieldError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(FieldError::new("body", "must be a JSON object")),
        Err(e) => Err(FieldError::new("body", format!("invalid JSON: {e}"))),
    }
}

/// The value of `field`, `None` when absent or `null`.
pub fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

/// A string field.
pub fn string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match present(body, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

/// A non-negative integer field.
pub fn count(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, FieldError> {
    match present(body, field) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| FieldError::new(field, format!("{n} is not a non-negative integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| FieldError::new(field, format!("{s:?} is not a non-negative integer"))),
        Some(_) => Err(FieldError::new(field, "must be an integer")),
    }
}

/// A number field.
pub fn number(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, FieldError> {
    match present(body, field) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| FieldError::new(field, format!("{s:?} is not a number"))),
        Some(_) => Err(FieldError::new(field, "must be a number")),
    }
}

/// A boolean field.
pub fn boolean(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, FieldError> {
    match present(body, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(FieldError::new(field, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_read_leniently_and_refused_clearly() {
        let body = json!({"s": "x", "n": 3, "ns": " 4 ", "f": 1.5, "fs": "2.5", "b": true,
                          "bs": "FALSE", "null": null, "neg": -1, "obj": {}});
        let body = body.as_object().unwrap();
        assert_eq!(string(body, "s"), Ok(Some("x".into())));
        assert_eq!(string(body, "null"), Ok(None));
        assert_eq!(string(body, "missing"), Ok(None));
        assert_eq!(count(body, "n"), Ok(Some(3)));
        assert_eq!(count(body, "ns"), Ok(Some(4)));
        assert_eq!(number(body, "f"), Ok(Some(1.5)));
        assert_eq!(number(body, "fs"), Ok(Some(2.5)));
        assert_eq!(boolean(body, "b"), Ok(Some(true)));
        assert_eq!(boolean(body, "bs"), Ok(Some(false)));
        assert_eq!(count(body, "neg").unwrap_err().field, "neg");
        assert!(string(body, "n").unwrap_err().message.contains("string"));
        assert!(count(body, "obj").is_err() && number(body, "s").is_err());
        assert!(boolean(body, "n").is_err());
    }
}

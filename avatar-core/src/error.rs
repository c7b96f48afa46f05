//! The library's one error type: every front end maps it to its own idiom
//! (an exception in Python and Node, a 4xx/5xx JSON body over HTTP).

use std::path::PathBuf;

/// Errors returned by avatar-core.
#[derive(Debug, thiserror::Error)]
pub enum AvatarError {
    /// A user-supplied option is out of range or malformed; `field` names it.
    #[error("invalid {field}: {message}")]
    InvalidOption {
        /// The option's name as the user wrote it (`seed`, `bg_color`, `size`, ...).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The requested backend exists but this build does not include it.
    #[error("backend {backend} is not compiled into this build (enable the `{feature}` feature)")]
    BackendNotCompiled {
        /// The backend that was asked for.
        backend: String,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// A weight file is missing a tensor the model needs.
    #[error("weights: missing tensor `{name}`")]
    MissingTensor {
        /// The tensor's key in the file.
        name: String,
    },
    /// A tensor in a weight file has the wrong shape for the configured model.
    #[error("weights: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's key in the file.
        name: String,
        /// The shape the model config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A tensor in a weight file has a dtype we cannot load.
    #[error("weights: tensor `{name}` has unsupported dtype {dtype} (expected f32, f16 or bf16)")]
    TensorDtype {
        /// The tensor's key in the file.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A weight file's tensor names or shapes do not match the model; nothing was loaded.
    #[error("weights {file}: {}", key_summary(.missing, .unexpected, .mismatched))]
    WeightKeys {
        /// The file involved.
        file: String,
        /// Tensors the model needs that the file lacks.
        missing: Vec<String>,
        /// Tensors in the file that the model does not use.
        unexpected: Vec<String>,
        /// `name: expected [..], found [..]` for tensors of the wrong shape.
        mismatched: Vec<String>,
    },
    /// A weight or config file could not be parsed.
    #[error("weights: {0}")]
    Weights(String),
    /// A model config is inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Fetching an `hf://` reference from the model hub failed (see [`crate::hub`]).
    #[error("download {reference}: {message}")]
    Download {
        /// The reference as written (`hf://owner/name@revision/path`).
        reference: String,
        /// What failed.
        message: String,
    },
    /// Encoding or decoding an image failed.
    #[error("image: {0}")]
    Image(String),
    /// Work was cancelled by the caller (progress callback or cancel token).
    #[error("cancelled")]
    Cancelled,
    /// A tensor operation failed on the device.
    #[error("backend: {0}")]
    Backend(String),
}

impl AvatarError {
    /// Shorthand for [`AvatarError::InvalidOption`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AvatarError::InvalidOption {
            field,
            message: message.into(),
        }
    }

    /// Shorthand for [`AvatarError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AvatarError::Io {
            path: path.into(),
            source,
        }
    }

    /// A stable machine-readable code for the error kind, used by every front end (the `code` of
    /// Node errors, the Python exception class, the HTTP error body).
    ///
    /// ```
    /// use avatar_core::AvatarError;
    /// assert_eq!(AvatarError::invalid("seed", "bad").code(), "ERR_INVALID_OPTION");
    /// assert_eq!(AvatarError::Cancelled.code(), "ERR_CANCELLED");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            AvatarError::InvalidOption { .. } => "ERR_INVALID_OPTION",
            AvatarError::BackendNotCompiled { .. } => "ERR_BACKEND_NOT_COMPILED",
            AvatarError::MissingTensor { .. }
            | AvatarError::WeightKeys { .. }
            | AvatarError::TensorShape { .. }
            | AvatarError::TensorDtype { .. }
            | AvatarError::Weights(_) => "ERR_WEIGHTS",
            AvatarError::Config(_) => "ERR_CONFIG",
            AvatarError::Io { .. } => "ERR_IO",
            AvatarError::Download { .. } => "ERR_DOWNLOAD",
            AvatarError::Image(_) => "ERR_IMAGE",
            AvatarError::Cancelled => "ERR_CANCELLED",
            AvatarError::Backend(_) => "ERR_BACKEND",
        }
    }

    /// The offending option's name, for [`AvatarError::InvalidOption`].
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AvatarError::InvalidOption { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Whether the error is the caller's fault (bad input) rather than the server's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            AvatarError::InvalidOption { .. } | AvatarError::Cancelled
        )
    }
}

/// `missing 2 (a, b); unexpected 1 (c)`: at most 8 names per list.
fn key_summary(missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let list = |label: &str, names: &[String]| {
        let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(", … {more} more")
        } else {
            String::new()
        };
        format!("{label} {} ({}{tail})", names.len(), shown.join(", "))
    };
    let parts: Vec<String> = [
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(label, names)| list(label, names))
    .collect();
    parts.join("; ")
}

/// Result alias used across the crate.
pub type Result<T, E = AvatarError> = std::result::Result<T, E>;

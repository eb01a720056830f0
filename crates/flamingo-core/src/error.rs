//! The one error type of the engine. Every variant carries a message a user can act on,
//! and a stable `code()` that the Node binding exposes as `error.code`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` (or an option object) is malformed or inconsistent.
    #[error("invalid config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// A `config.json` names an architecture this engine does not implement.
    #[error("unsupported model_type \"{model_type}\" in {}: supported are {supported}", path.display())]
    UnsupportedModel {
        model_type: String,
        path: PathBuf,
        supported: String,
    },
    /// A weight is missing, has the wrong shape, or a file is not a valid weights file.
    #[error("{0}")]
    Weights(String),
    /// A checkpoint lacks required keys (or, in strict mode, has unexpected ones).
    #[error("{0}")]
    Checkpoint(String),
    /// A pickle tried to do something other than describe tensors; nothing was executed.
    #[error("refused to load {}: {message} (pickles are parsed, never executed)", path.display())]
    UnsafePickle { path: PathBuf, message: String },
    /// A file is truncated or corrupt.
    #[error("corrupt file {}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// The caller passed tensors or options that cannot be computed on.
    #[error("{0}")]
    InvalidInput(String),
    /// The operation was cancelled by the caller.
    #[error("the operation was aborted")]
    Aborted,
    /// An error from a tensor operation (an engine bug or an out-of-memory, not bad input).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Stable machine-readable code, exposed to JavaScript as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "ERR_IO",
            Error::Config { .. } => "ERR_CONFIG",
            Error::UnsupportedModel { .. } => "ERR_UNSUPPORTED_MODEL",
            Error::Weights(_) => "ERR_WEIGHTS",
            Error::Checkpoint(_) => "ERR_CHECKPOINT",
            Error::UnsafePickle { .. } => "ERR_UNSAFE_PICKLE",
            Error::Corrupt { .. } => "ERR_CORRUPT_FILE",
            Error::InvalidInput(_) => "ERR_INVALID_INPUT",
            Error::Aborted => "ABORT_ERR",
            Error::Candle(_) => "ERR_ENGINE",
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `bail!`-style shorthand for invalid input.
#[macro_export]
macro_rules! invalid_input {
    ($($arg:tt)*) => {
        return Err($crate::Error::InvalidInput(format!($($arg)*)))
    };
}

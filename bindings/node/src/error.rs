//! Errors as JavaScript sees them: an `Error` whose `code` is a stable string (the core's
//! `Error::code()`, or one of the binding's own codes below) and whose `message` is the
//! core's user-facing message.

use napi::{Env, JsError, Unknown};

/// The model was disposed before this call.
pub const ERR_DISPOSED: &str = "ERR_DISPOSED";
/// The engine thread panicked while running this call: an engine bug, not bad input.
pub const ERR_ENGINE_PANIC: &str = "ERR_ENGINE_PANIC";
/// Bad arguments caught by the binding itself (the core uses the same code).
pub const ERR_INVALID_INPUT: &str = "ERR_INVALID_INPUT";

/// An error on its way to JavaScript. Plain data, so it can be built on the engine thread
/// and turned into a JS `Error` on the JS thread.
#[derive(Debug)]
pub struct BindingError {
    pub code: &'static str,
    pub message: String,
}

impl BindingError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ERR_INVALID_INPUT, message)
    }

    pub fn disposed() -> Self {
        Self::new(
            ERR_DISPOSED,
            "this model has been disposed; load it again to keep using it",
        )
    }

    /// Builds the JS `Error` (with `code`) and wraps it so that rejecting a promise with the
    /// result rejects it with exactly that object. napi-rs' own `Error<Status>` would put a
    /// napi status name (`GenericFailure`) in `code` instead of ours.
    pub fn into_js(self, env: &Env) -> napi::Error {
        let err: napi::Error<&'static str> = napi::Error::new(self.code, self.message);
        // SAFETY: `env` is the live environment of the JS thread this runs on (deferred
        // resolvers and napi callbacks only), which is what `into_value` requires.
        unsafe {
            let value = JsError::from(err).into_value(env.raw());
            napi::Error::from(Unknown::from_raw_unchecked(env.raw(), value))
        }
    }
}

impl From<flamingo_core::Error> for BindingError {
    fn from(e: flamingo_core::Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<candle_core::Error> for BindingError {
    fn from(e: candle_core::Error) -> Self {
        flamingo_core::Error::from(e).into()
    }
}

pub type BindingResult<T> = std::result::Result<T, BindingError>;

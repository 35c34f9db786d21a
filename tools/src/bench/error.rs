//! The bench's errors: a message with what was being done, printed as `bench: FAILED: ...`.

/// Formats an error with what was being done.
pub fn err<E: std::fmt::Display>(context: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{context}: {e}")
}

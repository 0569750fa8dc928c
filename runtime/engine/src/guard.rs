//! Containment of panics inside tract.
//!
//! tract is a large dependency fed with files from outside the process; an assertion deep in it
//! must become an error for that model, not a dead agent. The check costs nothing when nothing
//! panics.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`, turning a panic into its message.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(message)
}

fn message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r: Result<(), String> = contain(|| panic!("boom {}", 7));
        std::panic::set_hook(quiet);
        assert_eq!(r, Err("boom 7".to_string()));
        assert_eq!(contain(|| 3), Ok(3));
    }
}

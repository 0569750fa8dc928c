//! How the binaries print an error: its chain of causes on one line, each said once.
//!
//! Library errors often put their cause's text in their own message (`refused: {0}`) and also
//! expose it as their `source`, so anyhow's `{:#}` would print it twice (`refused: X: X`). An
//! operator reads every word of an error; a repeated one reads like two different failures.

/// `e` and its causes, outermost first, joined by `": "`, leaving out a cause whose text the
/// message before it already says.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bundle targets aarch64 but this device is x86_64")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("refused: {0}")]
        Refused(#[from] Inner),
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = anyhow::Error::from(Outer::from(Inner)).context("install b.drv");
        assert_eq!(
            format!("{e:#}"),
            "install b.drv: refused: bundle targets aarch64 but this device is x86_64: bundle targets aarch64 but this device is x86_64"
        );
        assert_eq!(error_text(&e), "install b.drv: refused: bundle targets aarch64 but this device is x86_64");
    }

    #[test]
    fn causes_with_their_own_words_are_all_kept() {
        let e = anyhow::anyhow!("disk full").context("writing slot b").context("install b.drv");
        assert_eq!(error_text(&e), "install b.drv: writing slot b: disk full");
    }
}

//! One way to write a moment for people: RFC 3339 in UTC to the second
//! (`2026-12-07T04:44:29Z`). Messages, errors and status lines use it wherever a person reads a
//! time; raw Unix seconds stay on the wire and in JSON meant for programs.

use std::time::{Duration, UNIX_EPOCH};

/// `unix_s` (seconds since the Unix epoch) as RFC 3339, UTC.
pub fn rfc3339(unix_s: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_s)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_as_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_613_451), "2026-12-07T03:17:31Z");
    }
}

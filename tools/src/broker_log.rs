//! The embedded broker's (rumqttd's) diagnostics, in Drover's log at levels that mean something.
//!
//! rumqttd reports through `tracing`, and with no tracing subscriber installed `tracing` turns
//! every span rumqttd opens into a log record at the span's level: `ERROR rumqttd::router::routing
//! publish; topic=…` for each routine publish. It also logs ordinary per-client events (a client
//! that went away, a connection that stopped) at error level. An operator running with
//! `RUST_LOG=info` would see a wall of errors and miss the real ones.
//!
//! [`install`] sets a `tracing` subscriber for the process that drops spans and hands rumqttd's
//! events to the `log` facade, with the routine per-connection ones lowered to debug. The
//! `drover` binary calls it once in `main` (a process-wide setting, like the logger itself).

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Fragments of rumqttd events that describe one client's connection ending or failing:
/// routine on a broker (clients come and go, and a disconnect can race the router), so debug,
/// not error.
const ROUTINE: [&str; 6] = [
    "disconnected",
    "connection-stop",
    "router-drop",
    "Remote link error",
    "Error while handling MQTT connect packet",
    "is already gone",
];

/// Installs the bridge for the whole process; a no-op if a tracing subscriber is already set.
pub fn install() {
    let _ = tracing::subscriber::set_global_default(EventsToLog);
}

/// The level an event from `target` with `message` gets in Drover's log.
fn level_of(target: &str, message: &str, level: tracing::Level) -> log::Level {
    if target.starts_with("rumqttd") && ROUTINE.iter().any(|r| message.contains(r)) {
        return log::Level::Debug;
    }
    match level {
        tracing::Level::ERROR => log::Level::Error,
        tracing::Level::WARN => log::Level::Warn,
        tracing::Level::INFO => log::Level::Info,
        tracing::Level::DEBUG => log::Level::Debug,
        tracing::Level::TRACE => log::Level::Trace,
    }
}

/// A subscriber with no spans: events go to `log`, spans are given one id and forgotten.
struct EventsToLog;

impl Subscriber for EventsToLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Spans are never recorded; an event is worth formatting if its most verbose possible
        // level could pass the logger's filter.
        metadata.is_event() && log::max_level() >= level_of("", "", *metadata.level()).to_level_filter()
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let level = level_of(meta.target(), &text.message, *meta.level());
        let logger = log::logger();
        let probe = log::Metadata::builder().level(level).target(meta.target()).build();
        if !logger.enabled(&probe) {
            return;
        }
        logger.log(
            &log::Record::builder()
                .metadata(probe)
                .args(format_args!("{}{}", text.message, text.fields))
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .build(),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// An event's message and its other fields (`; key=value`), as text.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields += &format!("; {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields += &format!("; {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_connection_events_are_debug_and_real_errors_stay_errors() {
        assert_eq!(level_of("rumqttd::server::broker", "disconnected", tracing::Level::ERROR), log::Level::Debug);
        assert_eq!(level_of("rumqttd::server::broker", "connection-stop", tracing::Level::ERROR), log::Level::Debug);
        assert_eq!(level_of("rumqttd::server::broker", "Tls accept error", tracing::Level::ERROR), log::Level::Error);
        assert_eq!(
            level_of("rumqttd::router::routing", "no space for new connection", tracing::Level::ERROR),
            log::Level::Error
        );
        assert_eq!(level_of("other", "disconnected", tracing::Level::ERROR), log::Level::Error);
        let gone = "no-connection id 0 is already gone";
        assert_eq!(level_of("rumqttd::router::routing", gone, tracing::Level::ERROR), log::Level::Debug);
    }
}

//! MQTT topic names (`drover_wire::topic::parse`) and the version and architecture strings of a
//! manifest: every topic the broker delivers is parsed before its payload is looked at.
//! Parsing never panics, and a parsed device, group, fleet or rollout topic builds back to
//! the same text.
#![no_main]

use drover_wire::topic::{self, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let built = match topic::parse(text) {
        Some(Parsed::Device(device, leaf)) => Some(topic::device(&device, leaf)),
        Some(Parsed::Group(group, leaf)) => Some(topic::group(&group, leaf)),
        Some(Parsed::Fleet(leaf)) => Some(topic::fleet(leaf)),
        Some(Parsed::Rollout(id)) => Some(topic::rollout_events(&id)),
        Some(Parsed::Chunk(_)) | None => None,
    };
    if let Some(built) = built {
        assert_eq!(built.as_str(), text, "parse then build gives the topic back");
    }
    if let Some(version) = drover_wire::AgentVersion::parse(text) {
        let again = drover_wire::AgentVersion::parse(&format!("{}.{}.{}", version.major, version.minor, version.patch));
        assert_eq!(again, Some(version));
    }
    let _ = drover_wire::Arch::parse(text);
});

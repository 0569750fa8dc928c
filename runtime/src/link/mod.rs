//! The agent's side of the MQTT link that the operator tools share: payload encoding and
//! broker connection settings. The topic tree and the messages themselves are wire types
//! (`drover_wire::topic`, `drover_wire::message`).

pub mod backoff;
pub mod codec;
pub mod connect;
pub mod pump;

pub use backoff::Backoff;
pub use codec::{DecodeError, PayloadFormat, decode, encode};
pub use connect::{BrokerSettings, ConnectError};

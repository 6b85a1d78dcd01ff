//! Session transcripts: `record` writes what a session saw (`--record`), `replay` plays a
//! transcript against a database and compares the replies (`ovn-nb-proxy replay`).

pub mod record;
pub mod replay;

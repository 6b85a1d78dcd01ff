//! Views of database tables fed by the proxy's own monitors. Pure: they apply the
//! `<table-updates2>` values they are given; the connections live in `proxy::monitor`.
//!
//! * `nb::LspCache`: Logical_Switch_Port (`name`, `options`, `external_ids`), the state a
//!   transaction does not carry.
//! * `sb::SbCache`: Southbound `Port_Binding` and `Chassis`, for the migration timelines.

pub mod nb;
pub mod sb;

pub use nb::{BadUpdate, LspCache, Touched, COLUMNS};
pub use sb::SbCache;

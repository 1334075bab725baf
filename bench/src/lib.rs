//! Shared parts of the benchmark programs (`tocsin-bench`,
//! `tocsin-alert-bench`, `tocsin-log-bench`).

pub mod data;
pub mod logs;
pub mod peers;
pub mod tsbs;
pub mod util;

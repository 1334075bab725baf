pub(crate) mod alerts;
mod client;
pub(crate) mod repair;
pub(crate) mod rules;
pub(crate) mod serve;
pub(crate) mod sql;
pub(crate) mod tail;
pub(crate) mod token;
pub(crate) mod trace;

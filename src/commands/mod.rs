pub(crate) mod serve;
pub(crate) mod sql;

//! Integration tests: the real `tocsin` binary, driven through gRPC, HTTP and
//! the CLI. One test binary, grouped by topic.

mod alerting;
mod auth;
mod backup;
mod bad_input;
mod chaos;
mod console;
mod crash;
mod e2e;
mod faults;
mod flight;
mod grafana;
mod hardening;
mod persistence;
mod promql;
mod protocols;
mod reader;
mod rollup;
mod search;
mod server;
mod syslog;
mod tail;
mod tls;
mod trace;
mod util;
mod webhook;

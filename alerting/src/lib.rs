//! Tocsin's alerting engine.
//!
//! Rules (YAML, [`config`]) run SQL on an interval; each result row is an
//! alert instance checked against thresholds ([`rule`]). The
//! [`dispatch::Dispatcher`] routes firing alerts to receivers, groups them,
//! applies inhibition, silences and maintenance windows, and drives
//! escalation chains; [`notify`] delivers with retries. The
//! [`engine::AlertEngine`] ties it together, persists its state so that a
//! restart continues where it stopped, records history in the `system`
//! database and answers the HTTP API.

pub mod calendar;
pub mod config;
pub mod dispatch;
pub mod duration;
pub mod engine;
pub mod external;
pub mod links;
pub mod matcher;
pub mod notify;
pub mod on_ingest;
pub mod oncall;
pub mod rule;
pub mod ruletest;
pub mod state;
pub mod tables;
pub mod template;
pub mod templates;
pub mod testkit;

use std::sync::atomic::{AtomicI64, Ordering};

pub use config::{Config, ConfigError};
pub use engine::{AlertEngine, AlertFilter, EngineError, EngineOptions};

/// "Now", in Unix milliseconds. Injected, so that tests control time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(start_ms))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

//! A deterministic log generator shaped like a web shop's backend: business
//! flows (one trace id each) cross gateway, auth, orders, inventory, billing
//! and notifier; search and a media edge log on their own. Messages come from
//! templates with variable parts (ids, amounts, durations, addresses), levels
//! are mostly `info` with realistic shares of debug, warn, error and fatal,
//! and every event carries `region` and `tenant` attributes.
//!
//! A rare token (`RARE_TOKEN`) is planted in exactly `rare` events spread
//! evenly over the whole range, so a search for it has a known answer.

use std::fmt::Write as _;

use tocsin_proto::v1::{Label, LogEvent};

use crate::data::Rng;

/// The planted rare token.
pub const RARE_TOKEN: &str = "ERR-7731-QUOTA";

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
const FLOW: [&str; 6] = ["gateway", "auth", "orders", "inventory", "billing", "notifier"];
const WORDS: [&str; 12] = [
    "shoes",
    "laptop",
    "coffee",
    "headphones",
    "lamp",
    "desk",
    "phone case",
    "novel",
    "tent",
    "kettle",
    "jacket",
    "mug",
];

/// The generator's shape: `lines` events evenly over `[start_ns, start_ns + span_ns)`.
#[derive(Debug, Clone, Copy)]
pub struct LogShape {
    pub lines: u64,
    pub start_ns: i64,
    pub span_ns: i64,
    pub rare: u64,
    pub seed: u64,
}

impl LogShape {
    /// Timestamp of event `i`.
    pub fn ts(&self, i: u64) -> i64 {
        self.start_ns + (i128::from(i) * i128::from(self.span_ns) / i128::from(self.lines.max(1))) as i64
    }

    /// Whether event `i` carries the rare token: `rare` events, evenly spaced.
    pub fn is_rare(&self, i: u64) -> bool {
        if self.rare == 0 {
            return false;
        }
        let every = (self.lines / self.rare).max(1);
        i % every == every / 2 && i / every < self.rare
    }

    /// Events `[from, to)`. Generation is a pure function of the shape and
    /// the range, so writers can produce chunks in parallel; a flow never
    /// spans two chunks that start at multiples of 64.
    pub fn events(&self, from: u64, to: u64) -> Vec<LogEvent> {
        let mut rng = Rng::new(self.seed ^ from.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut i = from;
        while i < to {
            // A flow of 3..=6 hops, or a standalone event.
            if rng.below(4) == 0 {
                out.push(self.standalone(&mut rng, i));
                i += 1;
                continue;
            }
            let hops = (3 + rng.below(4)).min(to - i);
            let trace = rng.next_u64();
            let tenant = rng.below(500);
            let region = REGIONS[rng.below(3) as usize];
            let user = rng.below(2_000_000);
            let order = rng.below(90_000_000) + 10_000_000;
            let failing = rng.below(50) == 0;
            for hop in 0..hops {
                let service = FLOW[hop as usize];
                let mut e = self.event(&mut rng, i, service, tenant, region);
                e.trace_id = format!("{trace:016x}");
                e.span_id = format!("{:08x}", rng.next_u64() as u32);
                let last = hop + 1 == hops;
                flow_message(&mut rng, &mut e, service, user, order, failing && last);
                self.plant(&mut e, i);
                out.push(e);
                i += 1;
            }
        }
        out
    }

    fn event(&self, rng: &mut Rng, i: u64, service: &str, tenant: u64, region: &str) -> LogEvent {
        LogEvent {
            timestamp: self.ts(i),
            service: service.to_string(),
            host: format!("{service}-{}", rng.below(8) + 1),
            level: "info".to_string(),
            message: String::new(),
            trace_id: String::new(),
            span_id: String::new(),
            attributes: vec![
                Label { name: "region".into(), value: region.to_string() },
                Label { name: "tenant".into(), value: format!("t-{tenant}") },
            ],
        }
    }

    fn standalone(&self, rng: &mut Rng, i: u64) -> LogEvent {
        let service = if rng.below(2) == 0 { "search" } else { "media-edge" };
        let (tenant, region) = (rng.below(500), REGIONS[rng.below(3) as usize]);
        let mut e = self.event(rng, i, service, tenant, region);
        let m = &mut e.message;
        match (service, rng.below(20)) {
            ("search", 0) => {
                e.level = "warn".into();
                let _ = write!(
                    m,
                    "slow query \"{}\" took {} ms on shard {}",
                    word(rng),
                    500 + rng.below(4000),
                    rng.below(32)
                );
            }
            ("search", 1..=4) => {
                e.level = "debug".into();
                let _ = write!(m, "cache hit ratio 0.{:02} on shard {}", rng.below(100), rng.below(32));
            }
            ("search", _) => {
                let _ = write!(m, "query \"{}\" returned {} hits in {} ms", word(rng), rng.below(5000), rng.below(120));
            }
            (_, 0) => {
                e.level = "error".into();
                let _ =
                    write!(m, "origin fetch failed for /v/{:08x}.ts: connection reset by peer", rng.next_u64() as u32);
            }
            (_, 1..=3) => {
                e.level = "debug".into();
                let _ =
                    write!(m, "segment /v/{:08x}.ts served from cache tier {}", rng.next_u64() as u32, rng.below(3));
            }
            _ => {
                let _ = write!(
                    m,
                    "GET /v/{:08x}.ts 200 {} bytes in {} ms to {}",
                    rng.next_u64() as u32,
                    100_000 + rng.below(4_000_000),
                    rng.below(400),
                    ip(rng)
                );
            }
        }
        self.plant(&mut e, i);
        e
    }

    fn plant(&self, e: &mut LogEvent, i: u64) {
        if self.is_rare(i) {
            e.level = "error".into();
            e.message = format!("quota exceeded {RARE_TOKEN} for tenant t-{}", i % 500);
        }
    }
}

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

fn ip(rng: &mut Rng) -> String {
    format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(254) + 1)
}

fn flow_message(rng: &mut Rng, e: &mut LogEvent, service: &str, user: u64, order: u64, fail: bool) {
    let m = &mut e.message;
    let roll = rng.below(100);
    match service {
        "gateway" if fail => {
            e.level = "error".into();
            let _ = write!(m, "POST /api/v2/checkout 502 upstream timeout after {} ms", 3000 + rng.below(2000));
        }
        "gateway" => {
            let _ = write!(m, "POST /api/v2/checkout 200 {} ms from {}", 20 + rng.below(300), ip(rng));
        }
        "auth" if roll < 3 => {
            e.level = "warn".into();
            let _ = write!(m, "login failed for user-{user}: bad password from {}", ip(rng));
        }
        "auth" => {
            let _ = write!(m, "token validated for user-{user} in {} ms", rng.below(15));
        }
        "orders" if roll < 10 => {
            e.level = "debug".into();
            let _ = write!(m, "order ORD-{order} state pending -> reserved");
        }
        "orders" => {
            let _ = write!(m, "order ORD-{order} created with {} items for user-{user}", 1 + rng.below(9));
        }
        "inventory" if roll < 4 => {
            e.level = "warn".into();
            let _ = write!(m, "stock low for SKU-{}: {} left", rng.below(200_000), rng.below(5));
        }
        "inventory" => {
            let _ = write!(
                m,
                "reserved {} units of SKU-{} in warehouse wh-{}",
                1 + rng.below(5),
                rng.below(200_000),
                rng.below(12)
            );
        }
        "billing" if fail || roll < 2 => {
            e.level = "error".into();
            let _ = write!(m, "card declined for ORD-{order}: insufficient funds (psp-{})", rng.below(4));
        }
        "billing" if roll < 3 => {
            e.level = "fatal".into();
            let _ = write!(m, "ledger write failed for ORD-{order}: deadlock detected, transaction aborted");
        }
        "billing" => {
            let _ = write!(
                m,
                "charged {}.{:02} EUR to card ending {:04} for ORD-{order}",
                5 + rng.below(500),
                rng.below(100),
                rng.below(10_000)
            );
        }
        _ if fail => {
            e.level = "error".into();
            let _ = write!(m, "sms to +4479{:08} failed for ORD-{order}: gateway timeout", rng.below(100_000_000));
        }
        _ => {
            let _ = write!(m, "email sent to user-{user}@example.com for ORD-{order}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> LogShape {
        LogShape { lines: 100_000, start_ns: 0, span_ns: 86_400_000_000_000, rare: 20, seed: 7 }
    }

    #[test]
    fn generation_is_deterministic_and_has_the_planted_rare_token() {
        let s = shape();
        let a = s.events(0, 50_000);
        let b = s.events(50_000, 100_000);
        assert_eq!(a.len() + b.len(), 100_000);
        assert_eq!(a, s.events(0, 50_000));
        let rare = a.iter().chain(&b).filter(|e| e.message.contains(RARE_TOKEN)).count();
        assert_eq!(rare, 20);
        // Timestamps are increasing and inside the span.
        assert!(a.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        assert!(b.last().is_some_and(|e| e.timestamp < s.span_ns));
    }

    #[test]
    fn levels_and_flows_look_like_a_backend() {
        let events = shape().events(0, 100_000);
        let share = |l: &str| events.iter().filter(|e| e.level == l).count() as f64 / events.len() as f64;
        assert!(share("info") > 0.6, "info share {}", share("info"));
        assert!(share("error") > 0.001 && share("error") < 0.05);
        assert!(share("fatal") > 0.0);
        let traced: Vec<_> = events.iter().filter(|e| !e.trace_id.is_empty()).collect();
        assert!(traced.len() > events.len() / 2);
        // One flow starts at the gateway.
        let first = traced[0];
        assert_eq!(first.service, "gateway");
        assert!(traced.iter().filter(|e| e.trace_id == first.trace_id).count() >= 3);
    }
}

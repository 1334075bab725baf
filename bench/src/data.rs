//! The TSBS `cpu-only` dataset, regenerated deterministically: same tags,
//! fields and random-walk shape as TSBS, from our own seeded generator (so
//! the data does not change with a crate version).

use tocsin_proto::v1::{
    DoubleValues, FieldColumn, Int64Values, Label, RowSeries, WriteRowsRequest, field_column::Values,
};

pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

/// TSBS' default start: 2016-01-01T00:00:00Z.
pub const START_NS: i64 = 1_451_606_400_000_000_000;
pub const INTERVAL_NS: i64 = 10_000_000_000;

/// splitmix64: tiny, fast, and stable forever.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal, Box-Muller.
    fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

const REGIONS: [(&str, [&str; 3]); 9] = [
    ("us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ("us-west-1", ["us-west-1a", "us-west-1b", "us-west-1c"]),
    ("us-west-2", ["us-west-2a", "us-west-2b", "us-west-2c"]),
    ("eu-west-1", ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("eu-central-1", ["eu-central-1a", "eu-central-1b", "eu-central-1c"]),
    ("ap-southeast-1", ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1c"]),
    ("ap-southeast-2", ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2c"]),
    ("ap-northeast-1", ["ap-northeast-1a", "ap-northeast-1b", "ap-northeast-1c"]),
    ("sa-east-1", ["sa-east-1a", "sa-east-1b", "sa-east-1c"]),
];
const OS: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
const ARCH: [&str; 2] = ["x64", "x86"];
const TEAM: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const ENV: [&str; 3] = ["production", "staging", "test"];

pub fn host_tags(host: usize, rng: &mut Rng) -> Vec<Label> {
    let (region, dcs) = REGIONS[rng.below(REGIONS.len() as u64) as usize];
    let l = |n: &str, v: String| Label { name: n.into(), value: v };
    vec![
        l("hostname", format!("host_{host}")),
        l("region", region.into()),
        l("datacenter", dcs[rng.below(3) as usize].into()),
        l("rack", rng.below(100).to_string()),
        l("os", OS[rng.below(3) as usize].into()),
        l("arch", ARCH[rng.below(2) as usize].into()),
        l("team", TEAM[rng.below(4) as usize].into()),
        l("service", rng.below(20).to_string()),
        l("service_version", rng.below(2).to_string()),
        l("service_environment", ENV[rng.below(3) as usize].into()),
    ]
}

/// One host's whole series: tags, and for each field its values.
pub struct HostData {
    pub tags: Vec<Label>,
    pub fields: Vec<Vec<f64>>,
}

pub fn generate(hosts: usize, steps: usize, seed: u64) -> Vec<HostData> {
    (0..hosts)
        .map(|h| {
            let mut rng = Rng::new(seed ^ (h as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let tags = host_tags(h, &mut rng);
            let fields = (0..FIELDS.len())
                .map(|_| {
                    let mut v = rng.f64() * 100.0;
                    (0..steps)
                        .map(|_| {
                            v = (v + rng.normal()).clamp(0.0, 100.0);
                            v
                        })
                        .collect()
                })
                .collect();
            HostData { tags, fields }
        })
        .collect()
}

/// Requests of `steps_per_batch` consecutive samples of every host: in
/// time order, as collectors would send them.
pub fn requests(data: &[HostData], steps: usize, steps_per_batch: usize, float: bool) -> Vec<WriteRowsRequest> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < steps {
        let end = (start + steps_per_batch).min(steps);
        let series = data
            .iter()
            .map(|h| RowSeries {
                tags: h.tags.clone(),
                timestamps: (start..end).map(|i| START_NS + i as i64 * INTERVAL_NS).collect(),
                fields: FIELDS
                    .iter()
                    .zip(&h.fields)
                    .map(|(name, v)| FieldColumn {
                        name: (*name).into(),
                        values: Some(if float {
                            Values::F64(DoubleValues { values: v[start..end].to_vec() })
                        } else {
                            Values::I64(Int64Values { values: v[start..end].iter().map(|x| *x as i64).collect() })
                        }),
                    })
                    .collect(),
            })
            .collect();
        out.push(WriteRowsRequest { database: String::new(), table: "cpu".into(), series });
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_bounded() {
        let a = generate(3, 100, 7);
        let b = generate(3, 100, 7);
        assert_eq!(a[2].fields, b[2].fields);
        assert!(a.iter().flat_map(|h| h.fields.iter().flatten()).all(|v| (0.0..=100.0).contains(v)));
        assert_eq!(a[1].tags[0].value, "host_1");
        let reqs = requests(&a, 100, 30, false);
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[3].series[0].timestamps.len(), 10);
    }
}

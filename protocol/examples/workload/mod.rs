//! The pattern benchmark's workload, shared by `benches/patterns.rs` (criterion) and
//! `protocol/examples/match_loop.rs` (profiling driver): a deterministic PRNG, the ten
//! mixed rule shapes and the ~1 KB EventBridge-shaped events. One copy, so the bench and
//! the profiles always measure the same thing.

/// Small deterministic PRNG (xorshift64*), so runs are comparable.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Rule `i` of a set of `n`: ten shapes of mixed operators; `k = i / 10` spreads values
/// so that one event matches only a handful of rules whatever `n` is.
pub fn rule(i: usize) -> String {
    let k = i / 10;
    match i % 10 {
        0 => format!(r#"{{"source":["aws.svc{k}"],"detail-type":["Order Placed"]}}"#),
        1 => format!(
            r#"{{"source":["aws.svc{k}"],"detail-type":[{{"prefix":"Order"}}],"detail":{{"amount":[{{"numeric":[">=",{},"<",{}]}}]}}}}"#,
            (k % 1000) * 10,
            (k % 1000) * 10 + 50
        ),
        2 => format!(r#"{{"detail-type":[{{"prefix":"Order {k} "}}]}}"#),
        3 => format!(
            r#"{{"source":["aws.svc{k}"],"detail":{{"status":[{{"anything-but":["cancelled","failed"]}}]}}}}"#
        ),
        4 => format!(
            r#"{{"source":["aws.svc{k}"],"detail":{{"customer":{{"id":[{{"wildcard":"cust-{k}-*"}}]}}}}}}"#
        ),
        5 => format!(
            r#"{{"$or":[{{"source":["aws.svc{k}"]}},{{"detail":{{"region":["zone-{k}"]}}}}],"detail-type":["Order Shipped"]}}"#
        ),
        6 => format!(
            r#"{{"detail":{{"amount":[{{"numeric":[">",{},"<=",{}]}}],"currency":["EUR"],"orderId":[{{"prefix":"ord-{k}-"}}]}}}}"#,
            k * 10,
            k * 10 + 5
        ),
        7 => format!(
            r#"{{"source":["aws.svc{k}"],"detail":{{"ip":[{{"cidr":"10.{}.{}.0/24"}}]}}}}"#,
            k % 256,
            (k / 256) % 256
        ),
        8 => format!(
            r#"{{"source":[{{"equals-ignore-case":"AWS.SVC{k}"}}],"detail-type":[{{"suffix":"Placed"}}]}}"#
        ),
        _ => format!(
            r#"{{"source":["aws.svc{k}"],"detail":{{"priority":[{{"numeric":[">",{}]}}],"status":["open"]}}}}"#,
            k % 7
        ),
    }
}

/// A ~1 KB EventBridge-shaped event aimed at the rules of shape `k`.
pub fn event(rng: &mut Rng, n_rules: usize) -> String {
    let k = rng.below((n_rules / 10) as u64);
    let types = ["Order Placed", "Order Shipped", "Order Cancelled"];
    let dt = types[rng.below(3) as usize];
    let status = ["open", "cancelled", "shipped"][rng.below(3) as usize];
    format!(
        r#"{{"version":"0","id":"{:08x}-aaaa-7777-4444-{:012x}","detail-type":"{dt}","source":"aws.svc{k}","account":"012345679012","time":"2024-10-02T16:24:49Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1:012345679012:instance/i-{:017x}","arn:aws:s3:::bucket-{k}"],"detail":{{"orderId":"ord-{k}-{}","amount":{},"currency":"EUR","status":"{status}","priority":{},"region":"zone-{}","ip":"10.{}.{}.{}","customer":{{"id":"cust-{k}-{}","name":"Jane Q. Example","email":"jane.example@example.com","address":{{"street":"1 Main Street","city":"Springfield","zip":"12345","country":"US"}}}},"items":[{{"sku":"SKU-{}","qty":1,"price":19.99}},{{"sku":"SKU-{}","qty":2,"price":5.5}},{{"sku":"SKU-{}","qty":1,"price":120}}],"tags":["alpha","beta","gamma"],"notes":"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."}}}}"#,
        rng.next_u64() as u32,
        rng.next_u64() & 0xffff_ffff_ffff,
        rng.next_u64(),
        rng.below(1_000_000),
        k * 10 + rng.below(8),
        rng.below(10),
        rng.below((n_rules / 10) as u64),
        k % 256,
        (k / 256) % 256,
        rng.below(256),
        rng.below(100),
        rng.below(10_000),
        rng.below(10_000),
        rng.below(10_000),
    )
}

/// An index of rules `0..n_rules` (ids as rule numbers): the profiling drivers' index.
#[allow(dead_code)]
pub fn mixed_index(n_rules: usize) -> eventgate_protocol::pattern::RuleIndex<u32> {
    let limits = eventgate_protocol::pattern::PatternLimits::default();
    let mut idx = eventgate_protocol::pattern::RuleIndex::new();
    for i in 0..n_rules {
        match eventgate_protocol::pattern::Pattern::parse(&rule(i), &limits) {
            Ok(p) => idx.insert(i as u32, &p),
            Err(e) => panic!("bench rule {i} rejected: {e}"),
        }
    }
    idx
}

/// Matches `n_events` of `evs` (round robin) with `matches_json`; returns (µs per event,
/// matches per event). The profiling drivers' loop (the criterion bench has its own).
#[allow(dead_code)]
pub fn match_loop(
    idx: &eventgate_protocol::pattern::RuleIndex<u32>,
    evs: &[String],
    n_events: usize,
) -> (f64, f64) {
    let mut out = Vec::with_capacity(256);
    let mut matched = 0usize;
    let t = std::time::Instant::now();
    for i in 0..n_events {
        out.clear();
        if idx.matches_json(&evs[i % evs.len()], &mut out).is_err() {
            panic!("bench event {i} rejected");
        }
        matched += std::hint::black_box(out.len());
    }
    let n = n_events.max(1) as f64;
    (t.elapsed().as_secs_f64() * 1e6 / n, matched as f64 / n)
}

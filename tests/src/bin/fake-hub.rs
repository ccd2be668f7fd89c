//! The fake Hugging Face Hub (tests/src/hub.rs) as a process, for benchmarks: serves
//! `acme/tiny` and `acme/big`, whose weights are `FAKE_HUB_BIG_BYTES` (default 2 GiB) of
//! generated data, on 127.0.0.1, and prints `listening <port>` once it can be asked.

use std::collections::BTreeMap;

use vllama_testkit::hub::{tiny_model, FakeHub};

fn main() {
    let big: usize = std::env::var("FAKE_HUB_BIG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30);
    let mut repos = BTreeMap::new();
    repos.insert(
        "acme/tiny".to_string(),
        tiny_model("0123456789abcdef0123456789abcdef01234567", 1 << 20),
    );
    repos.insert(
        "acme/big".to_string(),
        tiny_model("89abcdef0123456789abcdef0123456789abcdef", big),
    );
    let hub = FakeHub::start(repos, None);
    println!("listening {}", hub.addr.port());
    loop {
        std::thread::park();
    }
}

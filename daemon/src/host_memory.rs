//! Host memory for engines without a GPU: what a CPU engine takes (its weights and its KV
//! cache, both known before it starts) against what the machine has, so that several small
//! engines — a chat model and an embedding model, as every RAG pipeline pairs them — stay
//! loaded together instead of reloading on each switch, and one that does not fit makes
//! room first. Pure functions, and one read of `/proc/meminfo`.

use std::collections::BTreeMap;

use crate::units::ByteSize;

/// The share of the machine's memory engines may take (the rest: the system, vllamad,
/// clients).
const SHARE: f64 = 0.9;

/// The machine's memory engines may use, from `/proc/meminfo`'s `MemTotal` (blocking: a
/// `/proc` read; callers run it off the async threads).
pub fn budget() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib as f64 * 1024.0 * SHARE) as u64)
}

/// The KV cache a CPU engine is given: `--kv-cache-memory-bytes` in its arguments, else
/// vLLM's `VLLM_CPU_KVCACHE_SPACE` (GiB) in its environment. `None`: vLLM sizes it from a
/// fraction of the machine's memory, so the engine is taken to need all of it.
pub fn kv_bytes(args: &[String], env: &BTreeMap<String, String>) -> Option<u64> {
    let flag = "--kv-cache-memory-bytes";
    let from_args = args.iter().enumerate().rev().find_map(|(i, a)| {
        let value = a
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
            .or_else(|| {
                (a == flag)
                    .then(|| args.get(i + 1).map(String::as_str))
                    .flatten()
            })?;
        ByteSize::parse(value).ok().map(|b| b.0)
    });
    from_args.or_else(|| {
        env.get("VLLM_CPU_KVCACHE_SPACE")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|g| *g > 0)
            .map(|g| g * ByteSize::GIB)
    })
}

/// What one CPU engine needs: its weights with a fifth more for activations and the
/// runtime, and its KV cache (all of `budget` when unknown).
pub fn need(weights: u64, kv: Option<u64>, budget: u64) -> u64 {
    match kv {
        Some(kv) => weights.saturating_add(weights / 5).saturating_add(kv),
        None => budget,
    }
}

/// Whether an engine needing `need` fits beside engines that need `used`; the first engine
/// always does (it may still not fit the machine: vLLM then says so itself).
pub fn fits(used: u64, need: u64, budget: u64, loaded: usize) -> bool {
    loaded == 0 || used.saturating_add(need) <= budget
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_kv_cache_from_flags_or_environment() {
        let none = BTreeMap::new();
        assert_eq!(
            kv_bytes(
                &args(&["--enforce-eager", "--kv-cache-memory-bytes", "64M"]),
                &none
            ),
            Some(64 * ByteSize::MIB)
        );
        assert_eq!(
            kv_bytes(&args(&["--kv-cache-memory-bytes=2GiB"]), &none),
            Some(2 * ByteSize::GIB)
        );
        let env = BTreeMap::from([("VLLM_CPU_KVCACHE_SPACE".to_string(), "4".to_string())]);
        assert_eq!(kv_bytes(&[], &env), Some(4 * ByteSize::GIB));
        // The flag wins over the environment, as in vLLM (the flag is read last).
        assert_eq!(
            kv_bytes(&args(&["--kv-cache-memory-bytes", "1G"]), &env),
            Some(ByteSize::GIB)
        );
        assert_eq!(kv_bytes(&args(&["--dtype", "float32"]), &none), None);
    }

    #[test]
    fn engines_fit_by_their_known_needs() {
        let budget = 20 * ByteSize::GIB;
        let chat = need(ByteSize::GIB, Some(4 * ByteSize::GIB), budget);
        let embed = need(ByteSize::GIB / 2, Some(ByteSize::GIB), budget);
        assert!(
            fits(chat, embed, budget, 1),
            "a chat and an embedding model together"
        );
        assert!(!fits(3 * chat, chat, budget, 3));
        // Unknown KV: vLLM takes a share of the whole machine, so it fits only alone.
        let unknown = need(ByteSize::GIB, None, budget);
        assert!(fits(0, unknown, budget, 0));
        assert!(!fits(embed, unknown, budget, 1));
        assert!(super::budget().is_some_and(|b| b > 0));
    }
}

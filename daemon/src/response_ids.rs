//! Which model made each recent stored Response (vLLM's ids say nothing of the model): noted
//! by the relay, read by `GET /v1/responses/{id}` (`openai::responses`). Bounded, oldest
//! forgotten first. Below the daemon's state, which owns one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::names::ModelName;

/// Ids remembered at most; the oldest are forgotten first.
const KEEP: usize = 10_000;

/// Which model made each recent response.
#[derive(Debug, Default)]
pub struct ResponseIds {
    inner: Mutex<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    by_id: HashMap<String, ModelName>,
    order: VecDeque<String>,
}

impl ResponseIds {
    pub fn insert(&self, id: String, model: ModelName) {
        let Ok(mut ids) = self.inner.lock() else {
            return;
        };
        if ids.by_id.insert(id.clone(), model).is_none() {
            ids.order.push_back(id);
        }
        while ids.order.len() > KEEP {
            if let Some(old) = ids.order.pop_front() {
                ids.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<ModelName> {
        self.inner.lock().ok()?.by_id.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_forgets_the_oldest() {
        let ids = ResponseIds::default();
        let m = ModelName::parse("tiny").unwrap();
        for i in 0..KEEP + 5 {
            ids.insert(format!("resp_{i}"), m.clone());
        }
        assert!(ids.get("resp_0").is_none());
        assert!(ids.get(&format!("resp_{}", KEEP + 4)).is_some());
        assert_eq!(ids.inner.lock().unwrap().by_id.len(), KEEP);
    }
}

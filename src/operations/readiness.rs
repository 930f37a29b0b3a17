//! Readiness of the gateway's long-lived parts (broker sources, the cluster backplane), as
//! `GET /readyz` reports it.
//!
//! Owns the table of named components and their current state. Does not decide what a
//! state means for a component (each source or backplane task sets its own), nor the
//! draining flag (the server owns that).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
struct Status {
    ready: bool,
    state: &'static str,
}

/// The shared table of components.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, Status>>>,
}

/// One component's handle: the task that owns it reports through it.
#[derive(Debug, Clone)]
pub struct Component {
    name: String,
    readiness: Readiness,
}

impl Readiness {
    /// Registers `name`, not ready until it says otherwise.
    pub fn component(&self, name: impl Into<String>) -> Component {
        let name = name.into();
        self.lock().insert(
            name.clone(),
            Status {
                ready: false,
                state: "starting",
            },
        );
        Component {
            name,
            readiness: self.clone(),
        }
    }

    /// True when every component is ready, with a JSON map of `name → state`.
    pub fn report(&self) -> (bool, Value) {
        let components = self.lock();
        let ready = components.values().all(|status| status.ready);
        let states: Map<String, Value> = components
            .iter()
            .map(|(name, status)| {
                (
                    name.clone(),
                    json!({"ready": status.ready, "state": status.state}),
                )
            })
            .collect();
        (ready, Value::Object(states))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Status>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Component {
    /// Records the component's state; `ready` decides whether `/readyz` may say 200.
    pub fn set(&self, ready: bool, state: &'static str) {
        let mut components = self.readiness.lock();
        if let Some(status) = components.get_mut(&self.name) {
            status.ready = ready;
            status.state = state;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let readiness = Readiness::default();
        assert!(readiness.report().0, "no components: ready");
        let source = readiness.component("source:users");
        let cluster = readiness.component("cluster");
        assert!(!readiness.report().0);
        source.set(true, "consuming");
        assert!(!readiness.report().0);
        cluster.set(true, "connected");
        let (ready, states) = readiness.report();
        assert!(ready);
        assert_eq!(states["source:users"]["state"], "consuming");
        cluster.set(false, "reconnecting");
        assert!(!readiness.report().0);
    }
}

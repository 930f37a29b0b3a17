//! The admin console's table of open connections: who each is (client address, peer socket
//! address) and since when, from the upgrade to the end of the session, announced or not.
//!
//! Owns only that table. Does not own what a connection holds (rules, queues: the hub
//! answers for those, see `hub::Inspect`) nor how a connection is stopped (`stop`). Kept
//! only while the console is on: with it off, listing a connection costs nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::hub::ConnectionId;

/// Who a connection is and since when.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The client's address as the limits see it (`X-Forwarded-For` from trusted proxies).
    pub client: IpAddr,
    /// The socket address the connection came from.
    pub peer: SocketAddr,
    pub since: SystemTime,
}

/// Open connections by id (ids grow, so the order is the order of arrival).
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<ConnectionId, Entry>>,
}

/// A connection's place in the table, removed on drop.
#[derive(Debug)]
pub struct Listed {
    registry: Arc<Registry>,
    connection: ConnectionId,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<ConnectionId, Entry>> {
        // Single inserts and removals: a panic cannot leave the map half-changed.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `connection` until the returned guard is dropped.
    pub fn list(self: &Arc<Self>, connection: ConnectionId, entry: Entry) -> Listed {
        self.lock().insert(connection, entry);
        Listed {
            registry: Arc::clone(self),
            connection,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn get(&self, connection: ConnectionId) -> Option<Entry> {
        self.lock().get(&connection).copied()
    }

    /// Up to `limit` connections with an id above `after`, in id order.
    pub fn page(&self, after: ConnectionId, limit: usize) -> Vec<(ConnectionId, Entry)> {
        self.lock()
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(id, entry)| (*id, *entry))
            .collect()
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_in_id_order_and_forgets_on_drop() {
        let registry = Arc::new(Registry::default());
        let entry = Entry {
            client: IpAddr::from([127, 0, 0, 1]),
            peer: SocketAddr::from(([127, 0, 0, 1], 9)),
            since: SystemTime::now(),
        };
        let listed: Vec<Listed> = [5, 2, 9, 7].map(|id| registry.list(id, entry)).into();
        let ids = |page: Vec<(ConnectionId, Entry)>| {
            page.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        };
        assert_eq!(ids(registry.page(0, 3)), vec![2, 5, 7]);
        assert_eq!(ids(registry.page(7, 3)), vec![9]);
        assert_eq!(registry.len(), 4);
        drop(listed);
        assert!(registry.is_empty());
        assert!(registry.get(5).is_none());
    }
}

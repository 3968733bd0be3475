//! The hub's durable state in its own SQLite file (`websub.db`): subscriptions, intents waiting
//! for verification, published events and the deliveries still owed to each subscriber. Every
//! state change is one transaction; a 202 is only answered after it commits, so an acknowledged
//! request survives a crash.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{StoreError, prepare};

const SCHEMA: &[&str] = &[r#"
CREATE TABLE subscriptions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    api_uuid      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    callback      TEXT NOT NULL,
    secret        TEXT,
    lease_seconds INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    base_url      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (api_uuid, channel, callback)
);
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    api_uuid     TEXT NOT NULL,
    channel      TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body         BLOB NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE deliveries (
    subscription_id INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
    event_seq       INTEGER NOT NULL REFERENCES events(seq),
    attempts        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, event_seq)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE TABLE intents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    api_uuid      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    callback      TEXT NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('subscribe', 'unsubscribe')),
    secret        TEXT,
    lease_seconds INTEGER NOT NULL,
    base_url      TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE intent_marks (
    api_uuid TEXT NOT NULL,
    channel  TEXT NOT NULL,
    callback TEXT NOT NULL,
    last_id  INTEGER NOT NULL,
    PRIMARY KEY (api_uuid, channel, callback)
) WITHOUT ROWID;
"#];

/// A verified subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Row id.
    pub id: i64,
    /// The API's internal id.
    pub api_uuid: String,
    /// Channel (the `hub.topic`).
    pub channel: String,
    /// Where events go.
    pub callback: String,
    /// `hub.secret`, for signatures.
    pub secret: Option<String>,
    /// Unix seconds after which it is gone.
    pub expires_at: i64,
    /// Scheme and host the subscriber used to reach the hub (`http://host:8080`).
    pub base_url: String,
}

/// A subscribe or unsubscribe request waiting for its verification of intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Row id.
    pub id: i64,
    /// The API's internal id.
    pub api_uuid: String,
    /// Channel.
    pub channel: String,
    /// Callback to verify.
    pub callback: String,
    /// `subscribe` or `unsubscribe`.
    pub mode: String,
    /// `hub.secret`.
    pub secret: Option<String>,
    /// Granted lease.
    pub lease_seconds: i64,
    /// Scheme and host the subscriber used.
    pub base_url: String,
}

/// The next event owed to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Event sequence number.
    pub seq: i64,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Content type of the event.
    pub content_type: String,
    /// The event body.
    pub body: Vec<u8>,
}

/// The hub store. One connection, serialised by a mutex; calls are short.
pub struct HubStore {
    conn: Mutex<Connection>,
}

const SUB_COLUMNS: &str = "id, api_uuid, channel, callback, secret, expires_at, base_url";

fn sub_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        id: r.get(0)?,
        api_uuid: r.get(1)?,
        channel: r.get(2)?,
        callback: r.get(3)?,
        secret: r.get(4)?,
        expires_at: r.get(5)?,
        base_url: r.get(6)?,
    })
}

impl HubStore {
    /// Opens (creating if needed) the hub database at `path`, readable by its owner only: it
    /// holds subscribers' secrets, which signing needs in clear.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::init(Connection::open(path)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(StoreError::Io)?;
        }
        Ok(store)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(prepare(conn, SCHEMA)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every operation is one transaction, so a poisoned connection is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a request to verify; returns its id.
    pub fn add_intent(&self, i: &Intent, now: i64) -> Result<i64, StoreError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO intents (api_uuid, channel, callback, mode, secret, lease_seconds, base_url, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![i.api_uuid, i.channel, i.callback, i.mode, i.secret, i.lease_seconds, i.base_url, now],
        )?;
        Ok(c.last_insert_rowid())
    }

    /// Requests still waiting for verification (after a restart).
    pub fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        let c = self.lock();
        let mut stmt = c.prepare(
            "SELECT id, api_uuid, channel, callback, mode, secret, lease_seconds, base_url FROM intents ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Intent {
                    id: r.get(0)?,
                    api_uuid: r.get(1)?,
                    channel: r.get(2)?,
                    callback: r.get(3)?,
                    mode: r.get(4)?,
                    secret: r.get(5)?,
                    lease_seconds: r.get(6)?,
                    base_url: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Drops a request whose verification failed.
    pub fn drop_intent(&self, id: i64) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM intents WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Applies a verified request: a subscription is created or renewed (keeping what it is
    /// still owed), an unsubscription removes it with its deliveries. Requests for one callback
    /// apply in the order they were made, whatever order their verifications end in: an older one
    /// verified after a newer one is dropped, as is one whose API was deleted meanwhile. Returns
    /// the subscription id concerned, if any.
    pub fn apply_intent(&self, i: &Intent, now: i64) -> Result<Option<i64>, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        if tx.execute("DELETE FROM intents WHERE id = ?1", params![i.id])? == 0 {
            return Ok(None);
        }
        let last: Option<i64> = tx
            .query_row(
                "SELECT last_id FROM intent_marks WHERE api_uuid = ?1 AND channel = ?2 AND callback = ?3",
                params![i.api_uuid, i.channel, i.callback],
                |r| r.get(0),
            )
            .optional()?;
        if last.is_some_and(|l| l > i.id) {
            tx.commit()?;
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO intent_marks (api_uuid, channel, callback, last_id) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (api_uuid, channel, callback) DO UPDATE SET last_id = excluded.last_id",
            params![i.api_uuid, i.channel, i.callback, i.id],
        )?;
        let id = if i.mode == "subscribe" {
            tx.query_row(
                "INSERT INTO subscriptions (api_uuid, channel, callback, secret, lease_seconds, expires_at, base_url, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (api_uuid, channel, callback) DO UPDATE SET secret = excluded.secret, \
                 lease_seconds = excluded.lease_seconds, expires_at = excluded.expires_at, base_url = excluded.base_url \
                 RETURNING id",
                params![i.api_uuid, i.channel, i.callback, i.secret, i.lease_seconds, now + i.lease_seconds, i.base_url, now],
                |r| r.get(0),
            )
            .optional()?
        } else {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM subscriptions WHERE api_uuid = ?1 AND channel = ?2 AND callback = ?3",
                    params![i.api_uuid, i.channel, i.callback],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                delete_subscription(&tx, id)?;
            }
            id
        };
        tx.commit()?;
        Ok(id)
    }

    /// One subscription.
    pub fn subscription(&self, id: i64) -> Result<Option<Subscription>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = ?1"),
                params![id],
                sub_row,
            )
            .optional()?)
    }

    /// Every subscription (to resume their deliveries after a restart).
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let c = self.lock();
        let mut stmt = c.prepare(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([], sub_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Removes subscription `id` with what it was still owed if its lease is over at `now`
    /// (a renewal may have just extended it); true when it was removed.
    pub fn remove_expired(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let expired = tx
            .query_row(
                "SELECT 1 FROM subscriptions WHERE id = ?1 AND expires_at <= ?2",
                params![id, now],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if expired {
            delete_subscription(&tx, id)?;
        }
        tx.commit()?;
        Ok(expired)
    }

    /// Removes subscription `id` with what it was still owed (its channel is gone).
    pub fn remove_subscription(&self, id: i64) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        delete_subscription(&tx, id)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores an event for every subscriber of `channel` whose lease runs at `now`; returns the
    /// subscriptions it is owed to. Nothing is stored when there are none.
    pub fn publish(
        &self,
        api_uuid: &str,
        channel: &str,
        content_type: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let subs: Vec<i64> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM subscriptions WHERE api_uuid = ?1 AND channel = ?2 AND expires_at > ?3",
            )?;
            stmt.query_map(params![api_uuid, channel, now], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        if subs.is_empty() {
            return Ok(subs);
        }
        tx.execute(
            "INSERT INTO events (api_uuid, channel, content_type, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![api_uuid, channel, content_type, body, now],
        )?;
        let seq = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO deliveries (subscription_id, event_seq) VALUES (?1, ?2)",
            )?;
            for id in &subs {
                stmt.execute(params![id, seq])?;
            }
        }
        tx.commit()?;
        Ok(subs)
    }

    /// The oldest event still owed to subscription `id`.
    pub fn next_delivery(&self, id: i64) -> Result<Option<Pending>, StoreError> {
        Ok(self
            .lock()
            .prepare_cached(
                "SELECT d.event_seq, d.attempts, e.content_type, e.body FROM deliveries d \
                 JOIN events e ON e.seq = d.event_seq WHERE d.subscription_id = ?1 \
                 ORDER BY d.event_seq LIMIT 1",
            )?
            .query_row(params![id], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    attempts: r.get(1)?,
                    content_type: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// Marks event `seq` delivered to (or given up for) subscription `id`.
    pub fn finish_delivery(&self, id: i64, seq: i64) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.prepare_cached("DELETE FROM deliveries WHERE subscription_id = ?1 AND event_seq = ?2")?
            .execute(params![id, seq])?;
        tx.prepare_cached(
            "DELETE FROM events WHERE seq = ?1 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
        )?
        .execute(params![seq])?;
        tx.commit()?;
        Ok(())
    }

    /// Counts a failed attempt to deliver event `seq` to subscription `id`.
    pub fn failed_attempt(&self, id: i64, seq: i64) -> Result<(), StoreError> {
        self.lock()
            .prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE subscription_id = ?1 AND event_seq = ?2",
            )?
            .execute(params![id, seq])?;
        Ok(())
    }

    /// Subscriptions, and deliveries still owed, for metrics.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let c = self.lock();
        let subs: i64 = c.query_row("SELECT COUNT(*) FROM subscriptions", [], |r| r.get(0))?;
        let owed: i64 = c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?;
        Ok((subs.max(0) as u64, owed.max(0) as u64))
    }

    /// Forgets everything of a deleted API.
    pub fn purge_api(&self, api_uuid: &str) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM deliveries WHERE subscription_id IN (SELECT id FROM subscriptions WHERE api_uuid = ?1)",
            params![api_uuid],
        )?;
        for table in ["subscriptions", "intents", "intent_marks", "events"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE api_uuid = ?1"),
                params![api_uuid],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets the hub state of every API not in `known` (deleted while the hub could not hear
    /// of it); returns how many APIs were forgotten.
    pub fn retain_apis(&self, known: &HashSet<String>) -> Result<usize, StoreError> {
        let stored: Vec<String> = {
            let c = self.lock();
            let mut stmt = c.prepare(
                "SELECT api_uuid FROM subscriptions UNION SELECT api_uuid FROM intents \
                 UNION SELECT api_uuid FROM events",
            )?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        let gone: Vec<String> = stored.into_iter().filter(|u| !known.contains(u)).collect();
        for uuid in &gone {
            self.purge_api(uuid)?;
        }
        Ok(gone.len())
    }
}

/// Deletes a subscription, its deliveries, and the events it was the last one owed.
fn delete_subscription(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<(), StoreError> {
    let owed: Vec<i64> = {
        let mut stmt =
            tx.prepare_cached("SELECT event_seq FROM deliveries WHERE subscription_id = ?1")?;
        stmt.query_map(params![id], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?
    };
    tx.execute(
        "DELETE FROM deliveries WHERE subscription_id = ?1",
        params![id],
    )?;
    tx.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
    let mut unowned = tx.prepare_cached(
        "DELETE FROM events WHERE seq = ?1 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
    )?;
    for seq in owed {
        unowned.execute(params![seq])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(mode: &str, callback: &str, lease: i64) -> Intent {
        Intent {
            id: 0,
            api_uuid: "api".into(),
            channel: "issues".into(),
            callback: callback.into(),
            mode: mode.into(),
            secret: Some("s".into()),
            lease_seconds: lease,
            base_url: "http://h".into(),
        }
    }

    fn verified(s: &HubStore, mode: &str, callback: &str, lease: i64, now: i64) -> Option<i64> {
        let mut i = intent(mode, callback, lease);
        i.id = s.add_intent(&i, now).unwrap();
        s.apply_intent(&i, now).unwrap()
    }

    #[test]
    fn events_fan_out_in_order_and_are_dropped_once_delivered() {
        let s = HubStore::in_memory().unwrap();
        let a = verified(&s, "subscribe", "http://a", 100, 0).unwrap();
        let b = verified(&s, "subscribe", "http://b", 100, 0).unwrap();
        assert!(s.intents().unwrap().is_empty(), "applied intents are gone");
        assert_eq!(
            s.publish("api", "issues", "text/plain", b"e1", 1).unwrap(),
            vec![a, b]
        );
        s.publish("api", "issues", "text/plain", b"e2", 1).unwrap();
        assert!(
            s.publish("api", "other", "text/plain", b"x", 1)
                .unwrap()
                .is_empty()
        );
        let first = s.next_delivery(a).unwrap().unwrap();
        assert_eq!(first.body, b"e1");
        s.failed_attempt(a, first.seq).unwrap();
        assert_eq!(s.next_delivery(a).unwrap().unwrap().attempts, 1);
        s.finish_delivery(a, first.seq).unwrap();
        assert_eq!(s.next_delivery(a).unwrap().unwrap().body, b"e2");
        // b still owes e1: the event stays until b has it.
        assert_eq!(s.next_delivery(b).unwrap().unwrap().body, b"e1");
        s.finish_delivery(b, first.seq).unwrap();
        let events: i64 = s
            .lock()
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1, "e1 dropped once delivered to everyone");
    }

    #[test]
    fn renewal_keeps_what_is_owed_and_unsubscribe_or_expiry_drop_it() {
        let s = HubStore::in_memory().unwrap();
        let a = verified(&s, "subscribe", "http://a", 10, 0).unwrap();
        s.publish("api", "issues", "text/plain", b"e1", 1).unwrap();
        assert_eq!(verified(&s, "subscribe", "http://a", 50, 5), Some(a));
        assert_eq!(s.subscription(a).unwrap().unwrap().expires_at, 55);
        assert!(s.next_delivery(a).unwrap().is_some());
        assert!(
            s.publish("api", "issues", "text/plain", b"late", 60)
                .unwrap()
                .is_empty(),
            "an expired lease gets nothing"
        );
        assert!(
            !s.remove_expired(a, 54).unwrap(),
            "renewed: not expired yet"
        );
        assert_eq!(verified(&s, "unsubscribe", "http://a", 0, 6), Some(a));
        assert!(s.subscription(a).unwrap().is_none());
        assert!(s.next_delivery(a).unwrap().is_none());
        assert_eq!(verified(&s, "unsubscribe", "http://nobody", 0, 6), None);
        let b = verified(&s, "subscribe", "http://b", 10, 0).unwrap();
        s.publish("api", "issues", "text/plain", b"e", 1).unwrap();
        s.purge_api("api").unwrap();
        assert!(s.subscription(b).unwrap().is_none());
    }

    #[test]
    fn intents_apply_in_the_order_they_were_made() {
        let s = HubStore::in_memory().unwrap();
        let mut sub = intent("subscribe", "http://a", 10);
        sub.id = s.add_intent(&sub, 0).unwrap();
        let mut unsub = intent("unsubscribe", "http://a", 0);
        unsub.id = s.add_intent(&unsub, 0).unwrap();
        // The unsubscription's verification ends first, the subscription's after it.
        assert_eq!(s.apply_intent(&unsub, 1).unwrap(), None);
        assert_eq!(
            s.apply_intent(&sub, 2).unwrap(),
            None,
            "the older request is dropped"
        );
        assert!(s.subscriptions().unwrap().is_empty());
        assert!(s.intents().unwrap().is_empty());
        // An intent of a purged API applies nothing.
        let mut late = intent("subscribe", "http://b", 10);
        late.id = s.add_intent(&late, 0).unwrap();
        s.purge_api("api").unwrap();
        assert_eq!(s.apply_intent(&late, 1).unwrap(), None);
        assert!(s.subscriptions().unwrap().is_empty());
        let known = HashSet::from(["kept".to_string()]);
        let mut other = intent("subscribe", "http://c", 10);
        other.api_uuid = "gone".into();
        other.id = s.add_intent(&other, 0).unwrap();
        assert_eq!(s.retain_apis(&known).unwrap(), 1);
        assert!(s.intents().unwrap().is_empty());
    }
}

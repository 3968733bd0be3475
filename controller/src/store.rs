//! SQLite persistence: one row per API, written in one transaction per change, with forward
//! migrations keyed by `PRAGMA user_version`. WAL with `synchronous=NORMAL` makes every committed
//! change survive a process crash (`kill -9`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation on the database failed.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// The database was written by a newer gateway.
    #[error(
        "database schema version {0} is newer than this gateway supports ({1}); upgrade the gateway"
    )]
    TooNew(i64, i64),
}

/// Forward migrations; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apis (
    uuid           TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    handle         TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    version        TEXT NOT NULL,
    context        TEXT NOT NULL,
    desired_state  TEXT NOT NULL CHECK (desired_state IN ('deployed', 'undeployed')),
    origin         TEXT NOT NULL,
    definition     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    deployed_at    TEXT,
    cp_sync_status TEXT CHECK (cp_sync_status IN ('pending', 'success', 'failed')),
    cp_sync_error  TEXT,
    cp_artifact_id TEXT,
    cp_revision    TEXT,
    UNIQUE (kind, handle),
    UNIQUE (kind, display_name, version)
);
"#,
    r#"
CREATE TABLE api_keys (
    uuid         TEXT PRIMARY KEY,
    api_uuid     TEXT NOT NULL REFERENCES apis(uuid) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    display_name TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    masked       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    expires_at   TEXT,
    source       TEXT NOT NULL CHECK (source IN ('local', 'external')),
    UNIQUE (api_uuid, name)
);
CREATE INDEX api_keys_by_api ON api_keys (api_uuid);
"#,
    r#"
CREATE TABLE cp_undeploys (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    api_handle  TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    revision    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"#,
];

/// One stored API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRow {
    /// Internal identifier (UUIDv7).
    pub uuid: String,
    /// `RestApi`.
    pub kind: String,
    /// `metadata.name`.
    pub handle: String,
    /// `spec.displayName`.
    pub display_name: String,
    /// `spec.version`.
    pub version: String,
    /// Resolved context.
    pub context: String,
    /// `deployed` or `undeployed`.
    pub desired_state: String,
    /// `gateway_api`.
    pub origin: String,
    /// The envelope as sent, as JSON text.
    pub definition: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// RFC 3339 time of the last deployment, none while undeployed.
    pub deployed_at: Option<String>,
    /// `pending`, `success`, `failed`, or none without a control plane.
    pub cp_sync_status: Option<String>,
    /// Why the last sync failed.
    pub cp_sync_error: Option<String>,
    /// The API Manager's id of this API, once imported (never erased by a failure).
    pub cp_artifact_id: Option<String>,
    /// The API Manager revision deployed for this API, none while not deployed there.
    pub cp_revision: Option<String>,
}

/// An API Manager revision still to undeploy because its API was deleted here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndeployRow {
    /// Queue position.
    pub seq: i64,
    /// Handle the deleted API had.
    pub api_handle: String,
    /// The API Manager's id of the API.
    pub artifact_id: String,
    /// The deployed revision.
    pub revision: String,
}

/// The outcome of one sync to write back: status and error when the API did not change
/// meanwhile, and what the API Manager now holds in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRecord {
    /// New `cp_sync_status` and `cp_sync_error`; `None` leaves both as they are.
    pub status: Option<(String, Option<String>)>,
    /// The API Manager's id.
    pub artifact_id: Option<String>,
    /// The deployed revision.
    pub revision: Option<String>,
}

/// One stored API key (its hash, never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id (UUIDv7).
    pub uuid: String,
    /// Owning API's uuid.
    pub api_uuid: String,
    /// Name, unique per API.
    pub name: String,
    /// Human-readable name.
    pub display_name: String,
    /// SHA-256 of the value, hex.
    pub key_hash: String,
    /// `***` + the last five characters.
    pub masked: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// User who created it.
    pub created_by: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// RFC 3339 expiry, if any.
    pub expires_at: Option<String>,
    /// `local` (generated) or `external` (caller-supplied value).
    pub source: String,
}

const KEY_COLUMNS: &str = "uuid, api_uuid, name, display_name, key_hash, masked, created_at, created_by, \
                           updated_at, expires_at, source";

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        uuid: r.get(0)?,
        api_uuid: r.get(1)?,
        name: r.get(2)?,
        display_name: r.get(3)?,
        key_hash: r.get(4)?,
        masked: r.get(5)?,
        created_at: r.get(6)?,
        created_by: r.get(7)?,
        updated_at: r.get(8)?,
        expires_at: r.get(9)?,
        source: r.get(10)?,
    })
}

const COLUMNS: &str = "uuid, kind, handle, display_name, version, context, desired_state, origin, definition, \
                       created_at, updated_at, deployed_at, cp_sync_status, cp_sync_error, cp_artifact_id, cp_revision";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ApiRow> {
    Ok(ApiRow {
        uuid: r.get(0)?,
        kind: r.get(1)?,
        handle: r.get(2)?,
        display_name: r.get(3)?,
        version: r.get(4)?,
        context: r.get(5)?,
        desired_state: r.get(6)?,
        origin: r.get(7)?,
        definition: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        deployed_at: r.get(11)?,
        cp_sync_status: r.get(12)?,
        cp_sync_error: r.get(13)?,
        cp_artifact_id: r.get(14)?,
        cp_revision: r.get(15)?,
    })
}

/// Sets up a connection the way every gateway database runs (WAL, `synchronous=NORMAL`, foreign
/// keys, a busy timeout) and applies `migrations`: entry `i` brings the schema from version `i`
/// (`PRAGMA user_version`) to `i + 1`, each in its own transaction.
pub fn prepare(mut conn: Connection, migrations: &[&str]) -> Result<Connection, StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = migrations.len() as i64;
    if current > latest {
        return Err(StoreError::TooNew(current, latest));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// The database connection. Callers serialise access (one writer).
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        Ok(Self {
            conn: prepare(conn, MIGRATIONS)?,
        })
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Inserts a new API.
    pub fn insert(&mut self, a: &ApiRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO apis ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                a.uuid, a.kind, a.handle, a.display_name, a.version, a.context, a.desired_state, a.origin,
                a.definition, a.created_at, a.updated_at, a.deployed_at, a.cp_sync_status, a.cp_sync_error,
                a.cp_artifact_id, a.cp_revision
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces an existing API's definition and state (identified by uuid).
    pub fn update(&mut self, a: &ApiRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE apis SET handle = ?2, display_name = ?3, version = ?4, context = ?5, desired_state = ?6, \
             definition = ?7, updated_at = ?8, deployed_at = ?9, cp_sync_status = ?10, cp_sync_error = ?11 \
             WHERE uuid = ?1",
            params![
                a.uuid, a.handle, a.display_name, a.version, a.context, a.desired_state, a.definition,
                a.updated_at, a.deployed_at, a.cp_sync_status, a.cp_sync_error
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an API by uuid; true when a row was removed. A revision it has deployed in the API
    /// Manager is queued for undeployment in the same transaction.
    pub fn delete(&mut self, uuid: &str, now: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO cp_undeploys (api_handle, artifact_id, revision, created_at) \
             SELECT handle, cp_artifact_id, cp_revision, ?2 FROM apis \
             WHERE uuid = ?1 AND cp_artifact_id IS NOT NULL AND cp_revision IS NOT NULL",
            params![uuid, now],
        )?;
        let n = tx.execute("DELETE FROM apis WHERE uuid = ?1", params![uuid])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Marks every API of `origin` that was never tracked for sync (deployed before a control
    /// plane was configured) as pending; returns how many.
    pub fn mark_untracked_pending(&mut self, origin: &str) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE apis SET cp_sync_status = 'pending' WHERE cp_sync_status IS NULL AND origin = ?1",
            params![origin],
        )?)
    }

    /// Writes the outcome of a sync of API `uuid`.
    pub fn record_sync(&mut self, uuid: &str, r: &SyncRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE apis SET cp_artifact_id = ?2, cp_revision = ?3 WHERE uuid = ?1",
            params![uuid, r.artifact_id, r.revision],
        )?;
        if let Some((status, error)) = &r.status {
            tx.execute(
                "UPDATE apis SET cp_sync_status = ?2, cp_sync_error = ?3 WHERE uuid = ?1",
                params![uuid, status, error],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Queues an API Manager revision for undeployment.
    pub fn add_undeploy(
        &mut self,
        api_handle: &str,
        artifact_id: &str,
        revision: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO cp_undeploys (api_handle, artifact_id, revision, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![api_handle, artifact_id, revision, now],
        )?;
        Ok(())
    }

    /// Revisions still to undeploy, oldest first.
    pub fn undeploys(&self) -> Result<Vec<UndeployRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, api_handle, artifact_id, revision FROM cp_undeploys ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(UndeployRow {
                    seq: r.get(0)?,
                    api_handle: r.get(1)?,
                    artifact_id: r.get(2)?,
                    revision: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Drops a handled undeployment.
    pub fn remove_undeploy(&mut self, seq: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM cp_undeploys WHERE seq = ?1", params![seq])?;
        Ok(())
    }

    /// One API by kind and handle.
    pub fn get(&self, kind: &str, handle: &str) -> Result<Option<ApiRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM apis WHERE kind = ?1 AND handle = ?2"),
                params![kind, handle],
                from_row,
            )
            .optional()?)
    }

    /// Inserts a key.
    pub fn insert_key(&mut self, k: &KeyRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                k.uuid, k.api_uuid, k.name, k.display_name, k.key_hash, k.masked, k.created_at, k.created_by,
                k.updated_at, k.expires_at, k.source
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a key's value, expiry and source (identified by uuid).
    pub fn update_key(&mut self, k: &KeyRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE api_keys SET key_hash = ?2, masked = ?3, updated_at = ?4, expires_at = ?5, source = ?6 \
             WHERE uuid = ?1",
            params![k.uuid, k.key_hash, k.masked, k.updated_at, k.expires_at, k.source],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a key by uuid; true when a row was removed.
    pub fn delete_key(&mut self, uuid: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM api_keys WHERE uuid = ?1", params![uuid])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// True when some key (of any API) has this hash.
    pub fn key_hash_exists(&self, key_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM api_keys WHERE key_hash = ?1",
                params![key_hash],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The keys of one API, oldest first.
    pub fn keys_of(&self, api_uuid: &str) -> Result<Vec<KeyRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE api_uuid = ?1 ORDER BY created_at, uuid"
        ))?;
        let rows = stmt
            .query_map(params![api_uuid], key_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every stored API, oldest first.
    pub fn all(&self) -> Result<Vec<ApiRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM apis ORDER BY created_at, uuid"
        ))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uuid: &str, handle: &str) -> ApiRow {
        ApiRow {
            uuid: uuid.into(),
            kind: "RestApi".into(),
            handle: handle.into(),
            display_name: format!("{handle} API"),
            version: "v1".into(),
            context: format!("/{handle}"),
            desired_state: "deployed".into(),
            origin: "gateway_api".into(),
            definition: "{}".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            deployed_at: Some("2026-01-01T00:00:00Z".into()),
            cp_sync_status: None,
            cp_sync_error: None,
            cp_artifact_id: None,
            cp_revision: None,
        }
    }

    #[test]
    fn crud_round_trip() {
        let mut s = Store::in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.insert(&row("1", "a")).unwrap();
        s.insert(&row("2", "b")).unwrap();
        assert!(
            s.insert(&row("3", "a")).is_err(),
            "handle is unique per kind"
        );
        let mut a = s.get("RestApi", "a").unwrap().unwrap();
        a.desired_state = "undeployed".into();
        a.deployed_at = None;
        s.update(&a).unwrap();
        assert_eq!(s.get("RestApi", "a").unwrap().unwrap(), a);
        assert!(s.delete("1", "now").unwrap());
        assert!(!s.delete("1", "now").unwrap());
        assert_eq!(s.all().unwrap().len(), 1);
    }

    #[test]
    fn sync_records_and_undeploys_of_deleted_apis() {
        let mut s = Store::in_memory().unwrap();
        s.insert(&row("1", "a")).unwrap();
        s.insert(&row("2", "b")).unwrap();
        let synced = SyncRecord {
            status: Some(("success".into(), None)),
            artifact_id: Some("apim-1".into()),
            revision: Some("rev-1".into()),
        };
        s.record_sync("1", &synced).unwrap();
        let a = s.get("RestApi", "a").unwrap().unwrap();
        assert_eq!(a.cp_sync_status.as_deref(), Some("success"));
        assert_eq!(a.cp_artifact_id.as_deref(), Some("apim-1"));
        // A record without status keeps status and error.
        let ids_only = SyncRecord {
            status: None,
            artifact_id: Some("apim-1".into()),
            revision: None,
        };
        s.record_sync("1", &ids_only).unwrap();
        let a = s.get("RestApi", "a").unwrap().unwrap();
        assert_eq!(a.cp_sync_status.as_deref(), Some("success"));
        assert_eq!(a.cp_revision, None);
        s.record_sync("1", &synced).unwrap();
        // Deleting a synced API queues its revision; a never-synced one queues nothing.
        s.delete("1", "t").unwrap();
        s.delete("2", "t").unwrap();
        let u = s.undeploys().unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(
            (
                u[0].api_handle.as_str(),
                u[0].artifact_id.as_str(),
                u[0].revision.as_str()
            ),
            ("a", "apim-1", "rev-1")
        );
        s.add_undeploy("c", "apim-3", "rev-3", "t").unwrap();
        s.remove_undeploy(u[0].seq).unwrap();
        assert_eq!(s.undeploys().unwrap()[0].artifact_id, "apim-3");
    }

    fn key(uuid: &str, api: &str, name: &str) -> KeyRow {
        KeyRow {
            uuid: uuid.into(),
            api_uuid: api.into(),
            name: name.into(),
            display_name: name.into(),
            key_hash: format!("hash-{uuid}"),
            masked: "***abcde".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "admin".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            source: "local".into(),
        }
    }

    #[test]
    fn keys_belong_to_apis_and_go_with_them() {
        let mut s = Store::in_memory().unwrap();
        s.insert(&row("1", "a")).unwrap();
        s.insert_key(&key("k1", "1", "one")).unwrap();
        s.insert_key(&key("k2", "1", "two")).unwrap();
        assert!(
            s.insert_key(&key("k3", "1", "one")).is_err(),
            "name unique per API"
        );
        assert!(
            s.insert_key(&key("k4", "nope", "x")).is_err(),
            "the API must exist"
        );
        assert!(s.key_hash_exists("hash-k1").unwrap());
        let mut k = s.keys_of("1").unwrap().remove(0);
        k.key_hash = "rotated".into();
        s.update_key(&k).unwrap();
        assert!(!s.key_hash_exists("hash-k1").unwrap());
        assert!(s.delete_key("k2").unwrap());
        s.delete("1", "now").unwrap();
        assert!(
            s.keys_of("1").unwrap().is_empty(),
            "deleting the API deletes its keys"
        );
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = std::env::temp_dir().join(format!("store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.insert(&row("1", "a")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.all().unwrap().len(), 1);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

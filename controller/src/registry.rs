//! The registry of APIs: every change is checked for conflicts, committed to SQLite in one
//! transaction, then reflected in memory and pushed to the router, all under one lock so the
//! three never disagree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gateway_xds::{Xds, XdsError, XdsSettings};
use tracing::{error, warn};

use crate::model::{ApiRequest, DesiredState};
use crate::store::{ApiRow, Store, StoreError};
use crate::validate::{ValidApi, validate_rest_api};

/// Kind of the REST API resource.
pub const REST_API: &str = "RestApi";
/// Origin of APIs deployed through the management API.
pub const ORIGIN_GATEWAY: &str = "gateway_api";

/// One API as the registry holds it.
#[derive(Debug, Clone)]
pub struct ApiEntry {
    /// The stored row.
    pub row: ApiRow,
    /// The validated definition; `None` if a stored definition no longer validates (it is then
    /// kept but not routed).
    pub valid: Option<ValidApi>,
}

impl ApiEntry {
    fn deployed(&self) -> bool {
        self.row.desired_state == DesiredState::Deployed.as_str()
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such API.
    #[error("{0}")]
    NotFound(String),
    /// The change collides with another API.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The router translation could not start.
    #[error(transparent)]
    Xds(#[from] XdsError),
    /// The registry lock was poisoned by a panic elsewhere.
    #[error("registry unavailable")]
    Poisoned,
}

struct State {
    store: Store,
    apis: HashMap<String, Arc<ApiEntry>>,
    /// Route key -> handle of the deployed API serving it.
    routes: HashMap<String, String>,
}

impl State {
    fn index(&mut self, e: &ApiEntry) {
        if let (true, Some(v)) = (e.deployed(), &e.valid) {
            for k in &v.route_keys {
                self.routes.insert(k.clone(), e.row.handle.clone());
            }
        }
    }

    fn unindex(&mut self, e: &ApiEntry) {
        if let Some(v) = &e.valid {
            for k in &v.route_keys {
                if self.routes.get(k) == Some(&e.row.handle) {
                    self.routes.remove(k);
                }
            }
        }
    }

    fn check_conflicts(&self, v: &ValidApi, own_uuid: Option<&str>) -> Result<(), RegistryError> {
        if let Some(other) = self.apis.values().find(|e| {
            Some(e.row.uuid.as_str()) != own_uuid
                && e.row.display_name == v.display_name
                && e.row.version == v.version
        }) {
            return Err(RegistryError::Conflict(format!(
                "configuration already exists: API '{}' already has displayName '{}' and version '{}'",
                other.row.handle, v.display_name, v.version
            )));
        }
        if v.state == DesiredState::Deployed {
            for k in &v.route_keys {
                if let Some(owner) = self.routes.get(k).filter(|h| **h != v.name) {
                    return Err(RegistryError::Conflict(format!(
                        "{k} is already served by deployed API '{owner}'"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Current time as RFC 3339 UTC with seconds precision.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn revalidate(row: &ApiRow) -> Option<ValidApi> {
    let req: ApiRequest = serde_json::from_str(&row.definition).ok()?;
    validate_rest_api(&req, Some(&row.handle)).ok()
}

/// The API registry.
pub struct Registry {
    state: Mutex<State>,
    xds: Xds,
    sync_enabled: bool,
}

impl Registry {
    /// Loads every stored API, starts the router translation with the deployed ones, and returns
    /// the registry. `sync_enabled` says whether a control plane is configured.
    pub fn open(
        store: Store,
        settings: XdsSettings,
        sync_enabled: bool,
    ) -> Result<Self, RegistryError> {
        let mut state = State {
            store,
            apis: HashMap::new(),
            routes: HashMap::new(),
        };
        let mut initial = Vec::new();
        for row in state.store.all()? {
            let valid = revalidate(&row);
            if valid.is_none() {
                error!(
                    api = row.handle,
                    "stored definition no longer validates; kept but not routed"
                );
            }
            let entry = ApiEntry { row, valid };
            if let (true, Some(v)) = (entry.deployed(), &entry.valid) {
                initial.push(v.routes.clone());
            }
            state.index(&entry);
            state.apis.insert(entry.row.handle.clone(), Arc::new(entry));
        }
        let xds = Xds::start(settings, initial)?;
        Ok(Self {
            state: Mutex::new(state),
            xds,
            sync_enabled,
        })
    }

    /// The router translation this registry feeds.
    pub fn xds(&self) -> &Xds {
        &self.xds
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, RegistryError> {
        self.state.lock().map_err(|_| RegistryError::Poisoned)
    }

    fn publish(&self, e: &ApiEntry) {
        match (&e.valid, e.deployed()) {
            (Some(v), true) => self.xds.upsert(v.routes.clone()),
            _ => self.xds.remove(&e.row.handle),
        }
    }

    /// Creates an API. `definition` is the envelope as sent, as JSON text.
    pub fn create(&self, v: ValidApi, definition: String) -> Result<Arc<ApiEntry>, RegistryError> {
        let mut st = self.lock()?;
        if st.apis.contains_key(&v.name) {
            return Err(RegistryError::Conflict(format!(
                "configuration already exists: an API with name '{}' already exists",
                v.name
            )));
        }
        st.check_conflicts(&v, None)?;
        let ts = now();
        let row = ApiRow {
            uuid: uuid::Uuid::now_v7().to_string(),
            kind: REST_API.into(),
            handle: v.name.clone(),
            display_name: v.display_name.clone(),
            version: v.version.clone(),
            context: v.context().to_string(),
            desired_state: v.state.as_str().into(),
            origin: ORIGIN_GATEWAY.into(),
            definition,
            created_at: ts.clone(),
            updated_at: ts.clone(),
            deployed_at: (v.state == DesiredState::Deployed).then_some(ts),
            cp_sync_status: self.sync_enabled.then(|| "pending".to_string()),
            cp_sync_error: None,
        };
        st.store.insert(&row)?;
        let entry = Arc::new(ApiEntry {
            row,
            valid: Some(v),
        });
        st.index(&entry);
        st.apis.insert(entry.row.handle.clone(), entry.clone());
        self.publish(&entry);
        Ok(entry)
    }

    /// Replaces the definition of API `id` (which `v` already names).
    pub fn update(&self, v: ValidApi, definition: String) -> Result<Arc<ApiEntry>, RegistryError> {
        let mut st = self.lock()?;
        let old = st.apis.get(&v.name).cloned().ok_or_else(|| {
            RegistryError::NotFound(format!("RestAPI with handle '{}' not found", v.name))
        })?;
        st.check_conflicts(&v, Some(&old.row.uuid))?;
        let ts = now();
        let deployed = v.state == DesiredState::Deployed;
        let row = ApiRow {
            display_name: v.display_name.clone(),
            version: v.version.clone(),
            context: v.context().to_string(),
            desired_state: v.state.as_str().into(),
            definition,
            updated_at: ts.clone(),
            deployed_at: deployed.then(|| ts.clone()),
            cp_sync_status: self.sync_enabled.then(|| "pending".to_string()),
            cp_sync_error: None,
            ..old.row.clone()
        };
        st.store.update(&row)?;
        let entry = Arc::new(ApiEntry {
            row,
            valid: Some(v),
        });
        st.unindex(&old);
        st.index(&entry);
        st.apis.insert(entry.row.handle.clone(), entry.clone());
        self.publish(&entry);
        Ok(entry)
    }

    /// Deletes API `id`.
    pub fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let mut st = self.lock()?;
        let old = st.apis.get(id).cloned().ok_or_else(|| {
            RegistryError::NotFound(format!("RestAPI with handle '{id}' not found"))
        })?;
        if !st.store.delete(&old.row.uuid)? {
            warn!(api = id, "row already gone from the database");
        }
        st.unindex(&old);
        st.apis.remove(id);
        self.xds.remove(id);
        Ok(())
    }

    /// One API by id.
    pub fn get(&self, id: &str) -> Result<Arc<ApiEntry>, RegistryError> {
        self.lock()?
            .apis
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("RestAPI with handle '{id}' not found")))
    }

    /// Every API, newest first.
    pub fn list(&self) -> Result<Vec<Arc<ApiEntry>>, RegistryError> {
        let mut all: Vec<Arc<ApiEntry>> = self.lock()?.apis.values().cloned().collect();
        all.sort_by(|a, b| b.row.uuid.cmp(&a.row.uuid));
        Ok(all)
    }
}

//! The registry: typed reads and compare-and-swap writes of the documents
//! in `model.rs`, in etcd. Every value is JSON; one that does not parse is
//! reported with its key, never silently skipped as absent.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::{Endpoint, HostInfo, TokenRecord, VmDoc, VmStatus};
use crate::etcd::{Etcd, EtcdError, Expect};

/// What went wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A value that is not the document its key says.
    #[error("registry key {key}: {why}")]
    Corrupt {
        /// The key.
        key: String,
        /// The parser's message.
        why: String,
    },
}

/// A versioned document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The document.
    pub doc: T,
    /// Its `mod_revision` (the compare-and-swap version).
    pub rev: u64,
}

/// The registry of one cluster.
pub struct Registry {
    etcd: Etcd,
    prefix: String,
}

fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        key: key.into(),
        why: e.to_string(),
    })
}

fn json<T: Serialize>(doc: &T) -> Vec<u8> {
    // Our own plain-data types: serialization cannot fail.
    serde_json::to_vec(doc).unwrap_or_default()
}

impl Registry {
    /// The registry under `prefix` (e.g. `/hotspare`) of the etcd at `hosts`.
    pub fn new(hosts: &str, prefix: &str) -> Result<Registry, RegistryError> {
        Ok(Registry {
            etcd: Etcd::new(hosts)?,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn list<T: DeserializeOwned>(&mut self, dir: &str) -> Result<Vec<Versioned<T>>, RegistryError> {
        let prefix = self.key(dir);
        self.etcd
            .list(&prefix)?
            .into_iter()
            .map(|kv| {
                Ok(Versioned {
                    doc: parse(&kv.key, &kv.value)?,
                    rev: kv.mod_revision,
                })
            })
            .collect()
    }

    // ---- hosts ----

    /// A lease of `ttl` seconds for this host's keys.
    pub fn lease(&mut self, ttl: u64) -> Result<u64, RegistryError> {
        Ok(self.etcd.grant(ttl)?)
    }

    /// Renews the lease; false when it had expired (the caller registers
    /// again with a new one).
    pub fn renew(&mut self, lease: u64) -> Result<bool, RegistryError> {
        Ok(self.etcd.keep_alive(lease)? > 0)
    }

    /// Ends the lease (the host leaves the registry at once).
    pub fn revoke(&mut self, lease: u64) -> Result<(), RegistryError> {
        Ok(self.etcd.revoke(lease)?)
    }

    /// Registers `host` under `lease`.
    pub fn put_host(&mut self, host: &HostInfo, lease: u64) -> Result<(), RegistryError> {
        let key = self.key(&format!("hosts/{}", host.id));
        Ok(self.etcd.put(&key, &json(host), lease)?)
    }

    /// The live hosts.
    pub fn hosts(&mut self) -> Result<Vec<HostInfo>, RegistryError> {
        Ok(self.list("hosts/")?.into_iter().map(|v| v.doc).collect())
    }

    // ---- VMs ----

    /// Every VM.
    pub fn vms(&mut self) -> Result<Vec<Versioned<VmDoc>>, RegistryError> {
        self.list("vms/")
    }

    /// One VM.
    pub fn vm(&mut self, name: &str) -> Result<Option<Versioned<VmDoc>>, RegistryError> {
        let key = self.key(&format!("vms/{name}"));
        self.etcd
            .get(&key)?
            .map(|kv| {
                Ok(Versioned {
                    doc: parse(&key, &kv.value)?,
                    rev: kv.mod_revision,
                })
            })
            .transpose()
    }

    /// Writes `doc` if the VM's document is still at `expect` (`None`: the
    /// VM must not exist). Whether it was written.
    pub fn swap_vm(&mut self, doc: &VmDoc, expect: Option<u64>) -> Result<bool, RegistryError> {
        let key = self.key(&format!("vms/{}", doc.spec.name));
        let expect = expect.map_or(Expect::Absent, Expect::Revision);
        Ok(self.etcd.swap(&key, expect, &json(doc))?.is_ok())
    }

    /// Removes a VM: its document, its endpoints and its fencing record.
    pub fn delete_vm(&mut self, name: &str) -> Result<bool, RegistryError> {
        let existed = self.etcd.delete(&self.key(&format!("vms/{name}")))?;
        self.etcd
            .delete_prefix(&self.key(&format!("endpoints/{name}/")))?;
        self.etcd.delete(&self.key(&format!("vm/{name}")))?;
        self.etcd.delete(&self.key(&format!("status/{name}")))?;
        Ok(existed)
    }

    /// The VM's fencing record (term, primary, spares), if it has one.
    pub fn record(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::replication::arbiter::Record>, RegistryError> {
        let key = self.key(&format!("vm/{name}"));
        self.etcd
            .get(&key)?
            .map(|kv| {
                crate::replication::arbiter::decode(&key, &kv.value).map_err(|e| {
                    RegistryError::Corrupt {
                        key: key.clone(),
                        why: e.to_string(),
                    }
                })
            })
            .transpose()
    }

    /// Publishes a VM's live status under `lease`.
    pub fn put_status(&mut self, vm: &str, st: &VmStatus, lease: u64) -> Result<(), RegistryError> {
        let key = self.key(&format!("status/{vm}"));
        Ok(self.etcd.put(&key, &json(st), lease)?)
    }

    /// A VM's live status, if its primary's agent publishes one.
    pub fn status(&mut self, vm: &str) -> Result<Option<VmStatus>, RegistryError> {
        let key = self.key(&format!("status/{vm}"));
        self.etcd
            .get(&key)?
            .map(|kv| parse(&key, &kv.value))
            .transpose()
    }

    // ---- endpoints ----

    /// Every published endpoint.
    pub fn endpoints(&mut self) -> Result<Vec<Endpoint>, RegistryError> {
        Ok(self
            .list("endpoints/")?
            .into_iter()
            .map(|v| v.doc)
            .collect())
    }

    /// Publishes `ep` under the host's lease.
    pub fn put_endpoint(&mut self, ep: &Endpoint, lease: u64) -> Result<(), RegistryError> {
        let key = self.key(&format!("endpoints/{}/{}", ep.vm, ep.host));
        Ok(self.etcd.put(&key, &json(ep), lease)?)
    }

    /// Withdraws the endpoint of `vm` on `host`.
    pub fn delete_endpoint(&mut self, vm: &str, host: &str) -> Result<(), RegistryError> {
        self.etcd
            .delete(&self.key(&format!("endpoints/{vm}/{host}")))?;
        Ok(())
    }

    // ---- tokens ----

    /// The token whose SHA-256 (hex) is `hash`.
    pub fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, RegistryError> {
        let key = self.key(&format!("tokens/{hash}"));
        self.etcd
            .get(&key)?
            .map(|kv| parse(&key, &kv.value))
            .transpose()
    }

    /// Stores a token's record unless its hash is already there; whether
    /// it was stored.
    pub fn add_token(&mut self, hash: &str, rec: &TokenRecord) -> Result<bool, RegistryError> {
        let key = self.key(&format!("tokens/{hash}"));
        Ok(self.etcd.swap(&key, Expect::Absent, &json(rec))?.is_ok())
    }
}

//! etcd v3 as the arbiter, through the shared JSON-gateway client
//! (`crate::etcd`, which says why the gateway and not `etcd-client`).
//!
//! The swap is one txn: compare the key's `mod_revision` with the version
//! read (or `create_revision == 0` for "no record"), put on success, range
//! on failure, so a lost race returns the winner's record in the same round
//! trip.

use super::{decode, encode, Arbiter, ArbiterError, Record, Swap, Versioned};
use crate::etcd::{Etcd, EtcdError, Expect, Kv};

/// An etcd v3 cluster (one or more members' client URLs).
pub struct EtcdArbiter {
    etcd: Etcd,
    prefix: String,
}

impl EtcdArbiter {
    /// Parses `HOST:PORT[,HOST:PORT…][/PREFIX]` (the part after `etcd://`).
    pub fn from_spec(rest: &str) -> Result<EtcdArbiter, String> {
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{}", p.trim_matches('/'))),
            None => (rest, "/hotspare".to_string()),
        };
        if prefix == "/" {
            return Err("an empty key prefix".into());
        }
        let etcd = Etcd::new(hosts).map_err(|e| match e {
            EtcdError::Spec(s) => format!("{s} (expected etcd://HOST:PORT[,HOST:PORT...])"),
            e => e.to_string(),
        })?;
        Ok(EtcdArbiter { etcd, prefix })
    }

    fn key(&self, vm: &str) -> String {
        format!("{}/vm/{vm}", self.prefix)
    }

    fn error(&self, e: EtcdError) -> ArbiterError {
        match e {
            EtcdError::Malformed { why, .. } => ArbiterError::Malformed {
                what: self.describe(),
                why,
            },
            EtcdError::Unreachable { why, .. } | EtcdError::Spec(why) => {
                ArbiterError::Unreachable {
                    what: self.describe(),
                    why,
                }
            }
        }
    }

    fn versioned(&self, kv: Option<Kv>) -> Result<Versioned, ArbiterError> {
        Ok(match kv {
            None => Versioned {
                record: None,
                version: 0,
            },
            Some(kv) => Versioned {
                record: Some(decode(&self.describe(), &kv.value)?),
                version: kv.mod_revision,
            },
        })
    }
}

impl Arbiter for EtcdArbiter {
    fn describe(&self) -> String {
        format!(
            "etcd at {} (keys under {})",
            self.etcd.endpoints(),
            self.prefix
        )
    }

    fn identity(&mut self) -> Result<String, ArbiterError> {
        let id = self
            .etcd
            .cluster_id(&format!("{}/", self.prefix))
            .map_err(|e| self.error(e))?;
        Ok(format!("etcd cluster {id}, prefix {}", self.prefix))
    }

    fn read(&mut self, vm: &str) -> Result<Versioned, ArbiterError> {
        let kv = self.etcd.get(&self.key(vm)).map_err(|e| self.error(e))?;
        self.versioned(kv)
    }

    fn swap(&mut self, vm: &str, expect: u64, new: &Record) -> Result<Swap, ArbiterError> {
        let expect = match expect {
            0 => Expect::Absent,
            r => Expect::Revision(r),
        };
        let key = self.key(vm);
        match self
            .etcd
            .swap(&key, expect, &encode(new))
            .map_err(|e| self.error(e))?
        {
            Ok(rev) => Ok(Swap::Done(rev)),
            Err(now) => Ok(Swap::Changed(self.versioned(now)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_endpoints_and_prefix() {
        let a = EtcdArbiter::from_spec("10.0.0.1:2379,10.0.0.2:2379/prod/hs/").unwrap();
        assert_eq!(
            a.etcd.endpoints(),
            "http://10.0.0.1:2379,http://10.0.0.2:2379"
        );
        assert_eq!(a.prefix, "/prod/hs");
        assert_eq!(EtcdArbiter::from_spec("h:1").unwrap().prefix, "/hotspare");
        for bad in ["", "/x", "host", "host:port", "h:1/"] {
            assert!(EtcdArbiter::from_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_dead_endpoint_is_unreachable_not_a_decision() {
        // Port 1 on loopback refuses at once.
        let mut a = EtcdArbiter::from_spec("127.0.0.1:1").unwrap();
        let e = a.read("vm").unwrap_err();
        assert!(matches!(e, ArbiterError::Unreachable { .. }), "{e}");
        let r = Record {
            term: 1,
            primary: "p".into(),
            spares: vec![],
            async_spares: vec![],
            protected: false,
            sync: 0,
            stopped: false,
        };
        assert!(matches!(
            a.swap("vm", 0, &r),
            Err(ArbiterError::Unreachable { .. })
        ));
    }
}

//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`), shared by
//! the arbiter (`replication/arbiter/etcd.rs`) and the host service's
//! registry (`service/registry.rs`).
//!
//! Why the gateway and not the `etcd-client` crate: the arbiter's record is
//! read and swapped a handful of times per failover and the registry is
//! polled a few times a second, never on the epoch path, so a blocking
//! HTTP/1.1 client (`ureq`) on the caller's thread does all we need.
//! `etcd-client` would bring tonic, prost, an async runtime on a thread of
//! its own and `protobuf-compiler` at build time, for the same few calls.
//! The gateway is part of every etcd v3 server (3.4 serves it at `/v3/`).
//!
//! Endpoints are tried in turn, starting with the last one that answered,
//! so one dead member of a cluster costs one connect timeout.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// How long one endpoint gets to accept a connection (loopback and a LAN
/// answer in well under a millisecond; a partitioned one never does).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
/// How long one request may take once connected (an etcd without quorum
/// holds a write until its own request timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// What went wrong talking to etcd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (the last error is kept).
    #[error("etcd at {endpoints} unreachable: {why}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        why: String,
    },
    /// An answer that is not what etcd sends.
    #[error("etcd at {endpoints} answered something unexpected: {why}")]
    Malformed {
        /// The endpoints.
        endpoints: String,
        /// What was wrong.
        why: String,
    },
    /// An endpoint list that is not `HOST:PORT[,HOST:PORT...]`.
    #[error("{0}")]
    Spec(String),
}

/// A key's value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The revision of its last change (the compare-and-swap version).
    pub mod_revision: u64,
    /// The lease it is attached to (0: none).
    pub lease: u64,
}

/// What a compare-and-swap compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key's `mod_revision` must be this.
    Revision(u64),
}

/// One etcd v3 cluster.
pub struct Etcd {
    endpoints: Vec<String>,
    current: usize,
    agent: ureq::Agent,
}

impl Etcd {
    /// A client of the members at `HOST:PORT[,HOST:PORT...]`.
    pub fn new(hosts: &str) -> Result<Etcd, EtcdError> {
        let mut endpoints = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            if h.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(EtcdError::Spec(format!("endpoint {h:?} is not HOST:PORT")));
            }
            endpoints.push(format!("http://{h}"));
        }
        if endpoints.is_empty() {
            return Err(EtcdError::Spec(
                "no etcd endpoint (expected HOST:PORT[,HOST:PORT...])".into(),
            ));
        }
        // No pooled connections: a request on a kept-alive connection to a
        // member that has since become unreachable would wait for the
        // whole request timeout; a fresh connect fails in CONNECT_TIMEOUT.
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections(0)
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build();
        Ok(Etcd {
            endpoints,
            current: 0,
            agent,
        })
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    fn malformed(&self, why: impl Into<String>) -> EtcdError {
        EtcdError::Malformed {
            endpoints: self.endpoints(),
            why: why.into(),
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let at = (self.current + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => match resp.into_json::<Value>() {
                    // Every etcd answer has a header; without one this is
                    // not etcd (or not a whole answer): try the next member.
                    // (The streaming lease keep-alive nests it in `result`.)
                    Ok(v) if v.get("header").is_some() || v.pointer("/result/header").is_some() => {
                        self.current = at;
                        return Ok(v);
                    }
                    Ok(v) => last = format!("{url}: an answer without a header: {v}"),
                    Err(e) => last = format!("{url}: {e}"),
                },
                // An answer that is an error (no leader, request timed
                // out, …) decides nothing: try the next member.
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    last = format!("{url}: HTTP {code}: {}", text.trim());
                }
                // The transport error names the URL itself.
                Err(e) => last = e.to_string(),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints(),
            why: last,
        })
    }

    /// The cluster's id (from any answer's header).
    pub fn cluster_id(&mut self, any_key: &str) -> Result<String, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": B64.encode(any_key), "count_only": true }),
        )?;
        v.pointer("/header/cluster_id")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.malformed("no cluster_id in the response header"))
    }

    /// The key's value, if it exists.
    pub fn get(&mut self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        Ok(self.kvs(v.get("kvs"))?.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        self.kvs(v.get("kvs"))
    }

    /// Writes `value` at `key` (attached to `lease` unless 0).
    pub fn put(&mut self, key: &str, value: &[u8], lease: u64) -> Result<(), EtcdError> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", &body).map(|_| ())
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, EtcdError> {
        let v = self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))?;
        Ok(num(v.get("deleted")).unwrap_or(0) > 0)
    }

    /// Deletes every key under `prefix`; how many.
    pub fn delete_prefix(&mut self, prefix: &str) -> Result<u64, EtcdError> {
        let v = self.call(
            "/v3/kv/deleterange",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        Ok(num(v.get("deleted")).unwrap_or(0))
    }

    /// Writes `value` at `key` if the key is as `expect` says: the new
    /// revision, or the key as it is now (None: absent) when it was not.
    pub fn swap(
        &mut self,
        key: &str,
        expect: Expect,
        value: &[u8],
    ) -> Result<Result<u64, Option<Kv>>, EtcdError> {
        let k = B64.encode(key);
        let compare = match expect {
            Expect::Absent => {
                json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
            Expect::Revision(r) => {
                json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
            }
        };
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": {"key": k, "value": B64.encode(value)}}],
            "failure": [{"request_range": {"key": k}}],
        });
        let v = self.call("/v3/kv/txn", &body)?;
        if v.get("succeeded")
            .and_then(|s| s.as_bool())
            .unwrap_or(false)
        {
            let rev = num(v.pointer("/header/revision"))
                .ok_or_else(|| self.malformed("a txn answer without a revision"))?;
            return Ok(Ok(rev));
        }
        let kvs = v.pointer("/responses/0/response_range/kvs");
        Ok(Err(self.kvs(kvs)?.into_iter().next()))
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn grant(&mut self, ttl: u64) -> Result<u64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        num(v.get("ID")).ok_or_else(|| self.malformed("a lease grant without an ID"))
    }

    /// Renews lease `id`; its remaining TTL in seconds (0: it had expired).
    pub fn keep_alive(&mut self, id: u64) -> Result<u64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        // The gateway streams: one result object.
        let r = v.get("result").unwrap_or(&v);
        Ok(num(r.get("TTL")).unwrap_or(0))
    }

    /// Ends lease `id` now (its keys go with it).
    pub fn revoke(&mut self, id: u64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .map(|_| ())
    }

    fn kvs(&self, kvs: Option<&Value>) -> Result<Vec<Kv>, EtcdError> {
        let Some(arr) = kvs.and_then(|k| k.as_array()) else {
            return Ok(Vec::new());
        };
        arr.iter()
            .map(|kv| {
                let dec = |f: &str| {
                    B64.decode(kv.get(f).and_then(|v| v.as_str()).unwrap_or(""))
                        .map_err(|e| self.malformed(format!("{f} is not base64: {e}")))
                };
                Ok(Kv {
                    key: String::from_utf8(dec("key")?)
                        .map_err(|_| self.malformed("a key that is not UTF-8"))?,
                    value: dec("value")?,
                    mod_revision: num(kv.get("mod_revision"))
                        .ok_or_else(|| self.malformed("a key without a mod_revision"))?,
                    lease: num(kv.get("lease")).unwrap_or(0),
                })
            })
            .collect()
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's JSON carries 64-bit integers as strings (and omits zeros).
pub fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_endpoints() {
        let e = Etcd::new("10.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(e.endpoints(), "http://10.0.0.1:2379,http://10.0.0.2:2379");
        for bad in ["", "host", "host:port", ","] {
            assert!(Etcd::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_dead_endpoint_is_unreachable() {
        // Port 1 on loopback refuses at once.
        let mut e = Etcd::new("127.0.0.1:1").unwrap();
        assert!(matches!(e.get("k"), Err(EtcdError::Unreachable { .. })));
        assert!(matches!(e.grant(5), Err(EtcdError::Unreachable { .. })));
    }

    #[test]
    fn prefix_ends_and_numbers() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(num(Some(&json!("42"))), Some(42));
        assert_eq!(num(Some(&json!(7))), Some(7));
        assert_eq!(num(Some(&json!("x"))), None);
        assert_eq!(num(None), None);
    }
}

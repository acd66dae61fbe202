//! etcd v3 as the arbiter, through etcd's JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`).
//!
//! Why the gateway and not the `etcd-client` crate: a record is read and
//! swapped a handful of times per failover, never on the epoch path, so a
//! blocking HTTP/1.1 client (`ureq`) on the caller's thread does all we
//! need. `etcd-client` would bring tonic, prost, an async runtime on a
//! thread of its own and `protobuf-compiler` at build time, for the same two
//! calls. The gateway is part of every etcd v3 server (3.4 serves it at
//! `/v3/`), so any deployment's cluster works.
//!
//! The swap is one txn: compare the key's `mod_revision` with the version
//! read (or `create_revision == 0` for "no record"), put on success, range
//! on failure, so a lost race returns the winner's record in the same round
//! trip. Endpoints are tried in turn, starting with the last one that
//! answered, so one dead member of a cluster costs one connect timeout.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{decode, encode, Arbiter, ArbiterError, Record, Swap, Versioned};

/// How long one endpoint gets to accept a connection (loopback and a LAN
/// answer in well under a millisecond; a partitioned one never does).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
/// How long one request may take once connected (an etcd without quorum
/// holds a write until its own request timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// An etcd v3 cluster (one or more members' client URLs).
pub struct EtcdArbiter {
    endpoints: Vec<String>,
    prefix: String,
    /// The endpoint that answered last.
    current: usize,
    agent: ureq::Agent,
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
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err("no etcd endpoint (expected etcd://HOST:PORT[,HOST:PORT...])".into());
        }
        for h in hosts.split(',') {
            if h.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("endpoint {h:?} is not HOST:PORT"));
            }
        }
        // No pooled connections: a request on a kept-alive connection to a
        // member that has since become unreachable would wait for the
        // whole request timeout; a fresh connect fails in CONNECT_TIMEOUT.
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections(0)
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build();
        Ok(EtcdArbiter {
            endpoints,
            prefix,
            current: 0,
            agent,
        })
    }

    fn key(&self, vm: &str) -> String {
        B64.encode(format!("{}/vm/{vm}", self.prefix))
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, ArbiterError> {
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let at = (self.current + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => match resp.into_json::<Value>() {
                    // Every etcd answer has a header; without one this is
                    // not etcd (or not a whole answer): try the next member.
                    Ok(v) if v.get("header").is_some() => {
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
        Err(ArbiterError::Unreachable {
            what: self.describe(),
            why: last,
        })
    }

    fn malformed(&self, why: impl Into<String>) -> ArbiterError {
        ArbiterError::Malformed {
            what: self.describe(),
            why: why.into(),
        }
    }

    /// A record from a range response's `kvs` (absent: no record).
    fn versioned(&self, kvs: Option<&Value>) -> Result<Versioned, ArbiterError> {
        let Some(kv) = kvs.and_then(|k| k.as_array()).and_then(|a| a.first()) else {
            return Ok(Versioned {
                record: None,
                version: 0,
            });
        };
        let version = num(kv.get("mod_revision"))
            .ok_or_else(|| self.malformed("a key without a mod_revision"))?;
        let value = B64
            .decode(kv.get("value").and_then(|v| v.as_str()).unwrap_or(""))
            .map_err(|e| self.malformed(format!("value is not base64: {e}")))?;
        Ok(Versioned {
            record: Some(decode(&self.describe(), &value)?),
            version,
        })
    }
}

/// etcd's JSON carries 64-bit integers as strings (and omits zeros).
fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

impl Arbiter for EtcdArbiter {
    fn describe(&self) -> String {
        format!(
            "etcd at {} (keys under {})",
            self.endpoints.join(","),
            self.prefix
        )
    }

    fn identity(&mut self) -> Result<String, ArbiterError> {
        let key = B64.encode(format!("{}/", self.prefix));
        let v = self.call("/v3/kv/range", &json!({ "key": key, "count_only": true }))?;
        let id = v
            .pointer("/header/cluster_id")
            .and_then(|c| c.as_str())
            .ok_or_else(|| self.malformed("no cluster_id in the response header"))?;
        Ok(format!("etcd cluster {id}, prefix {}", self.prefix))
    }

    fn read(&mut self, vm: &str) -> Result<Versioned, ArbiterError> {
        let v = self.call("/v3/kv/range", &json!({ "key": self.key(vm) }))?;
        self.versioned(v.get("kvs"))
    }

    fn swap(&mut self, vm: &str, expect: u64, new: &Record) -> Result<Swap, ArbiterError> {
        let key = self.key(vm);
        let compare = if expect == 0 {
            json!({"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        } else {
            json!({"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": expect.to_string()})
        };
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": {"key": key, "value": B64.encode(encode(new))}}],
            "failure": [{"request_range": {"key": key}}],
        });
        let v = self.call("/v3/kv/txn", &body)?;
        if v.get("succeeded")
            .and_then(|s| s.as_bool())
            .unwrap_or(false)
        {
            let rev = num(v.pointer("/header/revision"))
                .ok_or_else(|| self.malformed("a txn answer without a revision"))?;
            return Ok(Swap::Done(rev));
        }
        let kvs = v.pointer("/responses/0/response_range/kvs");
        Ok(Swap::Changed(self.versioned(kvs)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_endpoints_and_prefix() {
        let a = EtcdArbiter::from_spec("10.0.0.1:2379,10.0.0.2:2379/prod/hs/").unwrap();
        assert_eq!(
            a.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
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

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        assert_eq!(num(Some(&json!("42"))), Some(42));
        assert_eq!(num(Some(&json!(7))), Some(7));
        assert_eq!(num(Some(&json!("x"))), None);
        assert_eq!(num(None), None);
    }
}

//! The agent's configuration file (`agent.toml`). Unknown keys are refused;
//! every error names the line and the reason, from the TOML parser or from
//! the checks here. Reference: `docs/service.md#config`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::placement::Resources;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the keys expected (the parser's message names the
    /// line and column).
    #[error("{path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// A value that is not acceptable.
    #[error("{path}:{line}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the key (0: not found).
        line: usize,
        /// `table.key`.
        key: String,
        /// Why.
        why: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host.
    pub host: HostSection,
    /// What it offers to VMs.
    pub capacity: Resources,
    /// The registry and arbiter.
    pub etcd: EtcdSection,
    /// The management API.
    pub api: ApiSection,
    /// The replication streams of this host's VMMs.
    pub replication: ReplicationSection,
    /// Files.
    #[serde(default)]
    pub paths: PathsSection,
}

/// `[host]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Unique in the cluster.
    pub id: String,
    /// Its rack.
    pub rack: String,
    /// Its site.
    pub site: String,
}

/// `[etcd]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The host's lease, seconds: a host silent this long is gone.
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u64,
}

/// `[api]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// `IP:PORT` to serve on.
    pub listen: SocketAddr,
    /// A file holding the first admin token (stored hashed at start).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

/// `[replication]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// The address this host's standbys listen on.
    pub address: IpAddr,
    /// Their ports, `FIRST-LAST`.
    pub ports: String,
    /// The cluster's pre-shared key file.
    pub key_file: PathBuf,
}

/// `[paths]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// Consoles, events, control sockets, per VM.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The `hotspare` binary the VMMs run (default: this one).
    #[serde(default)]
    pub hotspare: Option<PathBuf>,
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            state_dir: default_state_dir(),
            hotspare: None,
        }
    }
}

fn default_prefix() -> String {
    "/hotspare".into()
}
fn default_ttl() -> u64 {
    3
}
fn default_state_dir() -> PathBuf {
    "/var/lib/hotspare".into()
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        AgentConfig::parse(path, &text)
    }

    /// Parses and checks `text` (read from `path`, for messages).
    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        let bad = |table: &str, key: &str, why: String| ConfigError::Invalid {
            path: path.into(),
            line: line_of(text, table, key),
            key: format!("{table}.{key}"),
            why,
        };
        for (key, v) in [
            ("id", &cfg.host.id),
            ("rack", &cfg.host.rack),
            ("site", &cfg.host.site),
        ] {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    "host",
                    key,
                    format!("{v:?}: use letters, digits, '-', '_' and '.' only"),
                ));
            }
        }
        if cfg.capacity.mem_mib == 0 {
            return Err(bad("capacity", "mem_mib", "must be at least 1".into()));
        }
        if cfg.capacity.vcpus == 0 {
            return Err(bad("capacity", "vcpus", "must be at least 1".into()));
        }
        if cfg.etcd.endpoints.is_empty() {
            return Err(bad("etcd", "endpoints", "no endpoint".into()));
        }
        if let Err(e) = crate::etcd::Etcd::new(&cfg.etcd.endpoints.join(",")) {
            return Err(bad("etcd", "endpoints", e.to_string()));
        }
        if !cfg.etcd.prefix.starts_with('/') || cfg.etcd.prefix.len() < 2 {
            return Err(bad(
                "etcd",
                "prefix",
                format!(
                    "{:?}: must start with '/' and name something",
                    cfg.etcd.prefix
                ),
            ));
        }
        if !(1..=3600).contains(&cfg.etcd.lease_ttl_s) {
            return Err(bad(
                "etcd",
                "lease_ttl_s",
                format!("{}: between 1 and 3600 seconds", cfg.etcd.lease_ttl_s),
            ));
        }
        cfg.replication
            .port_range()
            .map_err(|why| bad("replication", "ports", why))?;
        Ok(cfg)
    }

    /// The etcd endpoints as the client and `--arbiter` take them.
    pub fn etcd_hosts(&self) -> String {
        self.etcd.endpoints.join(",")
    }
}

impl ReplicationSection {
    /// `ports` as an inclusive range.
    pub fn port_range(&self) -> Result<(u16, u16), String> {
        let (a, b) = self
            .ports
            .split_once('-')
            .ok_or_else(|| format!("{:?}: expected FIRST-LAST", self.ports))?;
        let p = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?} is not a port number"))
        };
        let (a, b) = (p(a)?, p(b)?);
        if a == 0 || b < a {
            return Err(format!(
                "{:?}: the range runs backwards or starts at 0",
                self.ports
            ));
        }
        Ok((a, b))
    }
}

/// The 1-based line of `key` in `[table]` (0 when not found).
fn line_of(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
        } else if current == table
            && t.split('=')
                .next()
                .is_some_and(|k| k.trim().trim_matches('"') == key)
        {
            return i + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[host]
id = "a1-1"
rack = "a1"
site = "a"

[capacity]
mem_mib = 4096
vcpus = 4

[etcd]
endpoints = ["10.0.0.254:2379"]

[api]
listen = "10.0.0.1:7800"

[replication]
address = "10.0.0.1"
ports = "7100-7199"
key_file = "/etc/hotspare/psk"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.host.id, "a1-1");
        assert_eq!(c.etcd.prefix, "/hotspare");
        assert_eq!(c.etcd.lease_ttl_s, 3);
        assert_eq!(c.replication.port_range().unwrap(), (7100, 7199));
        assert_eq!(c.paths.state_dir, Path::new("/var/lib/hotspare"));
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let cases = [
            (
                GOOD.replace("ports = \"7100-7199\"", "ports = \"7199-7100\""),
                "agent.toml:19: replication.ports",
                "backwards",
            ),
            (
                GOOD.replace("mem_mib = 4096", "mem_mib = 0"),
                "agent.toml:8: capacity.mem_mib",
                "at least 1",
            ),
            (
                GOOD.replace("id = \"a1-1\"", "id = \"a1 1\""),
                "agent.toml:3: host.id",
                "letters",
            ),
            (
                GOOD.replace("[\"10.0.0.254:2379\"]", "[\"nohost\"]"),
                "agent.toml:12: etcd.endpoints",
                "HOST:PORT",
            ),
            // The parser's own errors carry line and column.
            (
                GOOD.replace("vcpus = 4", "vcpus = \"four\""),
                "line 9",
                "vcpus",
            ),
            (
                GOOD.replace("[paths]", "") + "\n[api2]\nx = 1\n",
                "line 22",
                "unknown field",
            ),
            (
                GOOD.replace("listen = \"10.0.0.1:7800\"", "listen = \"here\""),
                "line 15",
                "socket address",
            ),
        ];
        for (text, at, why) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(at) && e.contains(why),
                "{e:?} lacks {at:?} / {why:?}"
            );
        }
    }
}

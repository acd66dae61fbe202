//! The management API: HTTP/JSON on every agent, acting for the whole
//! cluster through the registry. Every call is authenticated (a bearer
//! token, looked up by its hash) and authorized (role and owner) before
//! anything is read for it or written; a malformed body is refused before
//! any write. Reference: `docs/service.md#management-api`.
//!
//! The HTTP server is `tiny_http` (blocking, one thread here): the API
//! serves a few operators and a Prometheus scraper, never the data path.

use std::io::Read;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{self, Need};
use super::metrics::Metrics;
use super::model::{AccessRole, AssignedSpare, Desired, Phase, TokenRecord, VmDoc, VmSpec};
use super::placement::{self, Current};
use super::reconcile::host_views_of;
use super::registry::{Registry, RegistryError};

/// Largest request body accepted.
const MAX_BODY: u64 = 64 << 10;

/// Checks a spec's `run` options with the command line's own parser.
pub type RunCheck = Arc<dyn Fn(&[String]) -> Result<(), String> + Send + Sync>;

/// An answer: status and JSON (or text for `/metrics`).
#[derive(Debug, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// Its content type.
    pub content_type: &'static str,
}

fn answer(status: u16, v: Value) -> Answer {
    Answer {
        status,
        body: v.to_string(),
        content_type: "application/json",
    }
}

fn error(status: u16, why: impl std::fmt::Display) -> Answer {
    answer(status, json!({ "error": why.to_string() }))
}

/// A VM as the API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmView {
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// What the operator wants.
    pub desired: Desired,
    /// Where it is.
    pub phase: Phase,
    /// `protected`, `degraded`, `unprotected`, `stopped`, `finished`, `lost`.
    pub protection: String,
    /// Its primary's host.
    pub primary: String,
    /// Its spares.
    pub spares: Vec<AssignedSpare>,
    /// Rules not met.
    pub unmet: Vec<String>,
    /// The fencing record's term (0: none yet).
    pub term: u64,
    /// Takeovers so far.
    pub failovers: u64,
    /// The last re-protection's time, ms.
    pub last_reprotect_ms: Option<u64>,
    /// Epochs the primary captured (in steps of 50), from its agent.
    pub epochs: Option<u64>,
    /// How many epochs the furthest asynchronous spare lags.
    pub async_lag: Option<u64>,
}

fn view(
    d: &VmDoc,
    rec: Option<&crate::replication::arbiter::Record>,
    st: Option<&super::model::VmStatus>,
) -> VmView {
    let protected = rec.is_some_and(|r| r.protected && !r.stopped);
    let protection = match (&d.phase, d.desired) {
        (_, Desired::Stopped) => "stopped",
        (Phase::Finished, _) => "finished",
        (Phase::Lost { .. }, _) => "lost",
        _ if !protected && d.spec.policy.spares > 0 => "unprotected",
        _ if !d.assign.unmet.is_empty()
            || d.assign.spares.len() < d.spec.policy.spares as usize =>
        {
            "degraded"
        }
        _ if protected => "protected",
        _ => "unprotected",
    };
    VmView {
        name: d.spec.name.clone(),
        owner: d.owner.clone(),
        desired: d.desired,
        phase: d.phase.clone(),
        protection: protection.into(),
        primary: d.assign.primary.clone(),
        spares: d.assign.spares.clone(),
        unmet: d.assign.unmet.iter().map(|u| u.to_string()).collect(),
        term: rec.map_or(0, |r| r.term),
        failovers: d.failovers,
        last_reprotect_ms: d.last_reprotect_ms,
        epochs: st.map(|s| s.epochs),
        async_lag: st.and_then(|s| s.async_lag),
    }
}

/// A request, as the router sees it.
pub struct Request<'a> {
    /// `GET`, `POST`, `DELETE`.
    pub method: &'a str,
    /// The path (no query).
    pub path: &'a str,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// The API's state.
pub struct Api {
    /// The registry (its own client).
    pub registry: Registry,
    /// The metrics `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// The `run` options' checker.
    pub run_check: RunCheck,
}

impl Api {
    /// Answers one request.
    pub fn handle(&mut self, req: &Request) -> Answer {
        match self.route(req) {
            Ok(a) => a,
            Err(e) => error(503, format!("the registry: {e}")),
        }
    }

    fn who(&mut self, req: &Request) -> Result<Result<TokenRecord, Answer>, RegistryError> {
        let token = match auth::bearer(req.authorization) {
            Ok(t) => t,
            Err(d) => return Ok(Err(error(d.status(), d))),
        };
        match self.registry.token(&auth::hash(token))? {
            Some(t) => Ok(Ok(t)),
            None => {
                let d = auth::Denied::Unauthenticated("unknown token");
                Ok(Err(error(d.status(), d)))
            }
        }
    }

    fn route(&mut self, req: &Request) -> Result<Answer, RegistryError> {
        let who = match self.who(req)? {
            Ok(w) => w,
            Err(a) => return Ok(a),
        };
        let deny = |need: Need, owner: Option<&str>| {
            auth::authorize(Some(&who), need, owner)
                .err()
                .map(|d| error(d.status(), d))
        };
        let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        match (req.method, parts.as_slice()) {
            ("GET", ["metrics"]) => Ok(deny(Need::Read, None).unwrap_or_else(|| Answer {
                status: 200,
                body: self.metrics.render(),
                content_type: "text/plain; version=0.0.4; charset=utf-8",
            })),
            ("GET", ["v1", "hosts"]) => Ok(match deny(Need::Read, None) {
                Some(a) => a,
                None => answer(200, json!(self.registry.hosts()?)),
            }),
            ("GET", ["v1", "vms"]) => {
                if let Some(a) = deny(Need::Read, None) {
                    return Ok(a);
                }
                let mut out = Vec::new();
                for v in self.registry.vms()? {
                    if auth::sees(&who, &v.doc.owner) {
                        let rec = self.registry.record(&v.doc.spec.name)?;
                        let st = self.registry.status(&v.doc.spec.name)?;
                        out.push(view(&v.doc, rec.as_ref(), st.as_ref()));
                    }
                }
                Ok(answer(200, json!(out)))
            }
            ("POST", ["v1", "vms"]) => {
                if let Some(a) = deny(Need::Manage, None) {
                    return Ok(a);
                }
                self.create(&who, req.body)
            }
            ("POST", ["v1", "tokens"]) => {
                if let Some(a) = deny(Need::Admin, None) {
                    return Ok(a);
                }
                self.new_token(req.body)
            }
            (method, ["v1", "vms", name, rest @ ..]) => {
                let Some(v) = self.registry.vm(name)? else {
                    // Not found, said only to who may read at all.
                    return Ok(deny(Need::Read, None)
                        .unwrap_or_else(|| error(404, format!("no VM {name:?}"))));
                };
                let need = if method == "GET" {
                    Need::Read
                } else {
                    Need::Manage
                };
                if let Some(a) = deny(need, Some(&v.doc.owner)) {
                    return Ok(a);
                }
                let mut doc = v.doc.clone();
                match (method, rest) {
                    ("GET", []) => {
                        let rec = self.registry.record(name)?;
                        let st = self.registry.status(name)?;
                        return Ok(answer(200, json!(view(&doc, rec.as_ref(), st.as_ref()))));
                    }
                    ("DELETE", []) => {
                        self.registry.delete_vm(name)?;
                        return Ok(answer(200, json!({ "deleted": name })));
                    }
                    ("POST", ["stop"]) => doc.desired = Desired::Stopped,
                    ("POST", ["start"]) => {
                        if doc.desired == Desired::Running {
                            return Ok(error(409, format!("{name} is running already")));
                        }
                        doc.start_again();
                    }
                    ("POST", ["failover"]) => {
                        if doc.assign.spares.is_empty() || doc.phase != Phase::Running {
                            return Ok(error(
                                409,
                                format!(
                                    "{name} has no running primary with a spare to fail over to"
                                ),
                            ));
                        }
                        doc.failover_requested = true;
                    }
                    _ => return Ok(error(404, format!("no such call: {method} {}", req.path))),
                }
                Ok(if self.registry.swap_vm(&doc, Some(v.rev))? {
                    answer(202, json!({ "accepted": name }))
                } else {
                    error(409, format!("{name} changed meanwhile: try again"))
                })
            }
            (m, _) => Ok(error(404, format!("no such call: {m} {}", req.path))),
        }
    }

    fn create(&mut self, who: &TokenRecord, body: &[u8]) -> Result<Answer, RegistryError> {
        let spec: VmSpec = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => return Ok(error(400, format!("the VM spec: {e}"))),
        };
        if let Err(e) = spec.validate() {
            return Ok(error(400, format!("the VM spec: {e}")));
        }
        let args = spec.run_args().unwrap_or_default();
        if let Err(e) = (self.run_check)(&args) {
            return Ok(error(400, format!("the VM spec's run options: {e}")));
        }
        if self.registry.vm(&spec.name)?.is_some() {
            return Ok(error(409, format!("a VM named {:?} exists", spec.name)));
        }
        let hosts = self.registry.hosts()?;
        let vms = self.registry.vms()?;
        let views = host_views_of(&hosts, vms.iter().map(|v| &v.doc), &spec.name);
        let plan = match placement::place(&views, spec.need(), &spec.policy, &Current::default()) {
            Ok(p) => p,
            Err(e) => return Ok(error(503, e)),
        };
        let doc = VmDoc::placed(spec, &who.name, &plan);
        if !self.registry.swap_vm(&doc, None)? {
            return Ok(error(409, format!("a VM named {:?} exists", doc.spec.name)));
        }
        Ok(answer(201, json!(view(&doc, None, None))))
    }

    fn new_token(&mut self, body: &[u8]) -> Result<Answer, RegistryError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewToken {
            name: String,
            role: AccessRole,
        }
        let t: NewToken = match serde_json::from_slice(body) {
            Ok(t) => t,
            Err(e) => return Ok(error(400, format!("the token request: {e}"))),
        };
        if t.name.is_empty() || t.name.len() > 64 {
            return Ok(error(400, "a token's name has 1 to 64 characters"));
        }
        let token = match auth::new_token() {
            Ok(t) => t,
            Err(e) => return Ok(error(500, format!("no randomness: {e}"))),
        };
        let rec = TokenRecord {
            name: t.name,
            role: t.role,
        };
        self.registry.add_token(&auth::hash(&token), &rec)?;
        Ok(answer(
            201,
            json!({ "token": token, "name": rec.name, "role": rec.role }),
        ))
    }
}

/// Serves `api` on `server` until the server is unblocked.
pub fn serve(server: Arc<tiny_http::Server>, mut api: Api) {
    for mut rq in server.incoming_requests() {
        let method = rq.method().as_str().to_string();
        let path = rq.url().split('?').next().unwrap_or("").to_string();
        let authorization = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        let mut body = Vec::new();
        let read = rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body);
        let a = match read {
            Err(e) => error(400, format!("reading the body: {e}")),
            Ok(_) if body.len() as u64 > MAX_BODY => {
                error(413, format!("a body over {MAX_BODY} bytes"))
            }
            Ok(_) => api.handle(&Request {
                method: &method,
                path: &path,
                authorization: authorization.as_deref(),
                body: &body,
            }),
        };
        let mut resp = tiny_http::Response::from_string(a.body).with_status_code(a.status);
        if let Ok(h) =
            tiny_http::Header::from_bytes(&b"Content-Type"[..], a.content_type.as_bytes())
        {
            resp = resp.with_header(h);
        }
        let _ = rq.respond(resp);
    }
}

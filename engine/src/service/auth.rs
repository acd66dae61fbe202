//! Access control, as pure decisions: a bearer token is looked up by its
//! SHA-256 (the store never holds a token itself), then a call is allowed
//! by role and ownership. Roles are ordered viewer < operator < admin; a
//! viewer or operator sees and manages only the VMs it owns.

use sha2::{Digest, Sha256};

use super::model::{AccessRole, TokenRecord};

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read (viewer and up; a VM only if owned, unless admin).
    Read,
    /// Change (operator and up; a VM only if owned, unless admin).
    Manage,
    /// Administer (tokens).
    Admin,
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token, a malformed header or an unknown token: 401.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A known token without the right: 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl Denied {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Unauthenticated(_) => 401,
            Denied::Forbidden(_) => 403,
        }
    }
}

/// The SHA-256 of a token, hex: its key in the store.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new token: 32 random bytes, hex, prefixed `hs_`.
pub fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(std::io::Error::other)?;
    Ok(format!(
        "hs_{}",
        b.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The token of an `Authorization` header's value.
pub fn bearer(header: Option<&str>) -> Result<&str, Denied> {
    let h = header.ok_or(Denied::Unauthenticated("no Authorization header"))?;
    let t = h
        .strip_prefix("Bearer ")
        .ok_or(Denied::Unauthenticated(
            "Authorization is not 'Bearer TOKEN'",
        ))?
        .trim();
    if t.is_empty() || t.len() > 256 {
        return Err(Denied::Unauthenticated("an empty or oversized token"));
    }
    Ok(t)
}

/// Decides a call by `who` (None: the token is unknown) needing `need`,
/// on a VM owned by `owner` (None: not about one VM).
pub fn authorize(who: Option<&TokenRecord>, need: Need, owner: Option<&str>) -> Result<(), Denied> {
    let who = who.ok_or(Denied::Unauthenticated("unknown token"))?;
    let role_needed = match need {
        Need::Read => AccessRole::Viewer,
        Need::Manage => AccessRole::Operator,
        Need::Admin => AccessRole::Admin,
    };
    if who.role < role_needed {
        return Err(Denied::Forbidden(format!(
            "{} is a {:?}; this needs {:?}",
            who.name, who.role, role_needed
        )));
    }
    if let Some(o) = owner {
        if who.role != AccessRole::Admin && o != who.name {
            return Err(Denied::Forbidden(format!(
                "{} does not own this VM",
                who.name
            )));
        }
    }
    Ok(())
}

/// Whether `who` may see a VM owned by `owner` in a list.
pub fn sees(who: &TokenRecord, owner: &str) -> bool {
    who.role == AccessRole::Admin || who.name == owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(name: &str, role: AccessRole) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role,
        }
    }

    #[test]
    fn headers_and_hashes() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        for bad in [None, Some("Basic abc"), Some("Bearer "), Some("abc")] {
            assert_eq!(bearer(bad).unwrap_err().status(), 401, "{bad:?}");
        }
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 67);
    }

    #[test]
    fn roles_and_owners() {
        let (v, o, a) = (
            tok("val", AccessRole::Viewer),
            tok("olga", AccessRole::Operator),
            tok("root", AccessRole::Admin),
        );
        assert_eq!(authorize(None, Need::Read, None).unwrap_err().status(), 401);
        assert!(authorize(Some(&v), Need::Read, None).is_ok());
        assert!(authorize(Some(&v), Need::Read, Some("val")).is_ok());
        assert_eq!(
            authorize(Some(&v), Need::Read, Some("olga"))
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            authorize(Some(&v), Need::Manage, Some("val"))
                .unwrap_err()
                .status(),
            403
        );
        assert!(authorize(Some(&o), Need::Manage, Some("olga")).is_ok());
        assert_eq!(
            authorize(Some(&o), Need::Manage, Some("val"))
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            authorize(Some(&o), Need::Admin, None).unwrap_err().status(),
            403
        );
        assert!(authorize(Some(&a), Need::Manage, Some("olga")).is_ok());
        assert!(authorize(Some(&a), Need::Admin, None).is_ok());
        assert!(sees(&a, "x") && sees(&o, "olga") && !sees(&o, "x"));
    }
}

//! Who may do what: the admin token (everything), console sessions opened with it, and
//! per-agent invoke keys (that agent's calls and runs). All are checked from memory;
//! secrets are compared in constant time.

mod admin;
mod keys;
mod sessions;

pub use admin::{ADMIN_TOKEN_SETTING, AdminToken, new_admin_token};
pub use keys::{Key, KeyRing, Keys};
pub use sessions::{IDLE as SESSION_IDLE, LIFETIME as SESSION_LIFETIME, Sessions};

/// The SHA-256 of a presented credential: what the admin token and invoke keys are known
/// by. A request's credential is hashed once, then checked as the admin token and looked up
/// as a key ([`AdminToken::matches_digest`], [`KeyRing::find_digest`]).
#[must_use]
pub fn digest(presented: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(presented).into()
}

/// Compares in constant time (`subtle`, which keeps the compiler from adding an early
/// exit), so the time taken does not tell how much matched. Lengths are not secret: every
/// token and key hash of one kind has the same length.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

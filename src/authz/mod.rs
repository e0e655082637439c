//! Signed operations: the verifier that stands between the hub and a destructive
//! change. An operator signs the exact bytes of a JSON op blob with
//! `ssh-keygen -Y sign -n felhom-op-v1`; [`Verifier::verify`] accepts it only if every
//! stage of the locked pipeline passes, **in this order** (the order is load-bearing):
//!
//! 0. size caps on the inputs (blob 64 KiB, signature 16 KiB) — `Malformed`
//! 1. parse the armor and the SSHSIG blob (strict; see [`sshsig`]) — `Malformed`
//! 2. namespace is exactly [`NAMESPACE`] — `Namespace`
//! 3. parse the public key: key type and signature algorithm policy — `Malformed`
//! 4. allow-list by **key material**, never by `key_id` — `UnknownSigner`
//! 5. crypto verify with the **trusted** key over the **raw received bytes**, and user
//!    presence for hardware keys — `BadSignature`
//! 6. parse the blob (only now) — `Malformed`
//! 7. target: `host_id` byte-equal to this host's — `Target`
//! 8. time window with bounded skew — `Expired`, `NotYetValid`
//! 9. hardware-key counter (strict mode), and a nonce already recorded — `Replay`
//! 10. record the nonce **last** — `Replay` (a store error also reads as `Replay`)
//!
//! Steps 0–9 are [`Verifier::check`]; step 10 is [`Verifier::consume`], a separate call,
//! because the gate has checks of its own that must also pass before a nonce is burned:
//! the signer's role, the binding to the action, and — right before dispatch — the
//! guest's config digest and its protection flag. [`Verifier::verify`] runs both at once
//! where there is nothing in between. A refusal before step 10 burns nothing. This module never executes an op, never
//! re-serializes a blob, never trusts the key embedded in a signature and never writes
//! durable state itself (the [`FileNonceStore`] does, through [`crate::store`]).

pub(crate) mod blob;
pub(crate) mod config;
pub(crate) mod nonce;
pub(crate) mod selftest;
pub mod sshsig;

use std::fmt;
use std::sync::Arc;

pub use blob::{MAX_BLOB_BYTES, OpBlob};
pub use config::{AuthzConfig, Role, Signer, SignerEntry, SignersConfigError};
pub use nonce::{FileNonceStore, Freshness, MemoryNonceStore, NonceStore, NonceStoreError};
pub use selftest::{Check, offline_selftest};
pub use sshsig::{MAX_ARMOR_BYTES, SkAssertion};

use crate::base::time::{Clock, Timestamp};

/// The SSHSIG namespace of felhom operations. A constant: never caller-supplied.
pub const NAMESPACE: &str = "felhom-op-v1";

/// Why a signed op was refused. Each variant carries a detail for the audit log; match
/// on the variant, print [`AuthzError::code`] for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthzError {
    /// The input is not acceptable as such: the armor or SSHSIG blob (size, block, base64,
    /// magic, version ≠ 1, reserved non-empty, hash algorithm), a refused key type or
    /// signature algorithm (DSA, certificate, webauthn, `ssh-rsa`, RSA < 2048 bits,
    /// mismatch), or — after the signature verified — a blob that is not a valid op
    /// (JSON, unknown or duplicate fields, nonce < 128 bits, bad times, window over
    /// 24 h or not positive: a blob that can never be valid whatever the clock says).
    Malformed(String),
    /// The signature's namespace is not [`NAMESPACE`].
    Namespace(String),
    /// The signing key is not in the allow-list (compared by key material).
    UnknownSigner(String),
    /// The signature does not verify with the allow-listed key over the received bytes,
    /// or a hardware-key signature lacks user presence.
    BadSignature(String),
    /// The op is for another host.
    Target(String),
    /// `expires_at` plus the allowed skew is past.
    Expired(String),
    /// `not_before` minus the allowed skew is still ahead.
    NotYetValid(String),
    /// The nonce was already used; or the nonce store cannot answer (fail safe); or, in
    /// `sk_counter_strict` mode, the hardware key's counter did not increase.
    Replay(String),
}

impl AuthzError {
    /// The snake_case name printed by `felhom-agent verify` and written to the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            AuthzError::Malformed(_) => "malformed",
            AuthzError::Namespace(_) => "namespace",
            AuthzError::UnknownSigner(_) => "unknown_signer",
            AuthzError::BadSignature(_) => "bad_signature",
            AuthzError::Target(_) => "target",
            AuthzError::Expired(_) => "expired",
            AuthzError::NotYetValid(_) => "not_yet_valid",
            AuthzError::Replay(_) => "replay",
        }
    }

    /// The detail for the audit log.
    pub fn detail(&self) -> &str {
        match self {
            AuthzError::Malformed(d)
            | AuthzError::Namespace(d)
            | AuthzError::UnknownSigner(d)
            | AuthzError::BadSignature(d)
            | AuthzError::Target(d)
            | AuthzError::Expired(d)
            | AuthzError::NotYetValid(d)
            | AuthzError::Replay(d) => d,
        }
    }
}

impl fmt::Display for AuthzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail())
    }
}

impl std::error::Error for AuthzError {}

/// The allow-list entry that verified an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedSigner {
    /// The configured key id (not the blob's claim).
    pub key_id: String,
    /// The configured role.
    pub role: Role,
    /// `SHA256:...` fingerprint of the key.
    pub fingerprint: String,
}

/// What a hardware-key signature asserted, and what the counter check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkCheck {
    /// Authenticator flags (user presence is always set on a verified op).
    pub flags: u8,
    /// The signature counter.
    pub counter: u32,
    /// The highest counter seen for this key before this op, if any.
    pub highest_seen: Option<u32>,
    /// The counter was not above `highest_seen`: a possible cloned authenticator, or
    /// ops signed in one order and verified in another. The gate writes
    /// [`VerifiedOp::sk_counter_warning`] into the audit record of the decision.
    pub counter_not_increasing: bool,
}

/// An op whose signature, target, window and nonce all passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedOp {
    /// The blob as signed; every field of it passed its check.
    pub blob: OpBlob,
    /// The allow-listed signer that verified.
    pub signer: MatchedSigner,
    /// Present for hardware-key (`sk-*`) signatures.
    pub sk: Option<SkCheck>,
}

impl VerifiedOp {
    /// A stable, readable `name: value` form, one field per line, control characters
    /// escaped (the blob is operator-controlled but still outside input).
    pub fn to_lines(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            crate::base::log::push_escaped(&mut out, k);
            out.push_str(": ");
            crate::base::log::push_escaped(&mut out, v);
            out.push('\n');
        };
        line("op", &self.blob.op);
        line("host_id", &self.blob.host_id);
        line("guest_id", self.blob.guest_id.as_deref().unwrap_or("-"));
        line(
            "guest_digest",
            self.blob.guest_digest.as_deref().unwrap_or("-"),
        );
        for (k, v) in &self.blob.params {
            line(&format!("param.{k}"), v);
        }
        line("key_id", &self.blob.key_id);
        line("signer", &self.signer.key_id);
        line("signer_role", self.signer.role.as_str());
        line("signer_fingerprint", &self.signer.fingerprint);
        line("nonce", &self.blob.nonce);
        line("not_before", &self.blob.not_before.to_rfc3339());
        line("expires_at", &self.blob.expires_at.to_rfc3339());
        if let Some(sk) = &self.sk {
            line("sk_flags", &format!("0x{:02x}", sk.flags));
            line("sk_counter", &sk.counter.to_string());
        }
        if let Some(w) = self.sk_counter_warning() {
            line("sk_counter_warning", &w);
        }
        out
    }

    /// For a hardware-key op whose counter was not above the highest seen for its key
    /// (non-strict mode): the audit detail naming the signer, the counter and the
    /// highest seen, starting with `sk_counter_not_increasing`. `None` otherwise.
    pub fn sk_counter_warning(&self) -> Option<String> {
        let sk = self.sk.as_ref().filter(|s| s.counter_not_increasing)?;
        Some(sk_counter_detail(
            &self.signer.key_id,
            &self.signer.fingerprint,
            sk.counter,
            sk.highest_seen.unwrap_or_default(),
        ))
    }
}

impl fmt::Display for VerifiedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_lines())
    }
}

/// The one wording of a hardware-key counter that did not increase, for the audit log
/// (allowed with a warning, or refused in strict mode) and the log.
fn sk_counter_detail(key_id: &str, fingerprint: &str, counter: u32, highest: u32) -> String {
    format!(
        "sk_counter_not_increasing: signer {key_id:?} ({fingerprint}) counter {counter}, \
         highest seen {highest}: possible cloned authenticator"
    )
}

/// The verifier's tunables (from [`AuthzConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Accepted clock difference in seconds, both ways.
    pub max_clock_skew_seconds: u64,
    /// Refuse a hardware-key counter that did not increase.
    pub sk_counter_strict: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_clock_skew_seconds: config::DEFAULT_MAX_CLOCK_SKEW_SECONDS,
            sk_counter_strict: false,
        }
    }
}

/// The locked verification pipeline for one host.
pub struct Verifier {
    signers: Vec<Signer>,
    host_id: String,
    policy: Policy,
    clock: Arc<dyn Clock>,
    nonces: Arc<dyn NonceStore>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("host_id", &self.host_id)
            .field("signers", &self.signers.len())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `host_id` with validated signers.
    pub fn new(
        signers: Vec<Signer>,
        host_id: impl Into<String>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Verifier {
        Verifier {
            signers,
            host_id: host_id.into(),
            policy,
            clock,
            nonces,
        }
    }

    /// Validates `cfg` and builds the verifier for `host_id`.
    pub fn from_config(
        cfg: &AuthzConfig,
        host_id: &str,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Result<Verifier, SignersConfigError> {
        if host_id.is_empty() {
            return Err(SignersConfigError {
                field: "host_id".into(),
                reason: "empty: the verifier needs this host's id".into(),
            });
        }
        let signers = cfg.validate()?;
        let policy = Policy {
            max_clock_skew_seconds: cfg.max_clock_skew_seconds,
            sk_counter_strict: cfg.sk_counter_strict,
        };
        Ok(Verifier::new(signers, host_id, policy, clock, nonces))
    }

    /// The allow-list.
    pub fn signers(&self) -> &[Signer] {
        &self.signers
    }

    /// Runs the whole pipeline (see the module doc) over the exact received `blob`
    /// bytes and the armored signature: [`Verifier::check`], then
    /// [`Verifier::consume`].
    pub fn verify(&self, blob: &[u8], armored: &str) -> Result<VerifiedOp, AuthzError> {
        let op = self.check(blob, armored)?;
        self.consume(&op)?;
        Ok(op)
    }

    /// Steps 0–9 of the pipeline: everything but recording the nonce. Burns nothing; a
    /// nonce that is already recorded is refused here as `Replay` (a read, no write).
    pub fn check(&self, blob: &[u8], armored: &str) -> Result<VerifiedOp, AuthzError> {
        if blob.len() > blob::MAX_BLOB_BYTES {
            return Err(AuthzError::Malformed(format!(
                "blob is {} bytes, over the {}-byte cap",
                blob.len(),
                blob::MAX_BLOB_BYTES
            )));
        }
        // 1–3: armor, namespace, key and algorithm policy.
        let sig = sshsig::parse(armored, NAMESPACE)?;
        // 4: allow-list by key material.
        let signer = self
            .signers
            .iter()
            .find(|s| s.public_key.key_data() == sig.public_key())
            .ok_or_else(|| {
                AuthzError::UnknownSigner(format!(
                    "key {} is not an allow-listed signer",
                    sig.public_key().fingerprint(ssh_key::HashAlg::Sha256)
                ))
            })?;
        // 5: crypto with the trusted key over the raw bytes.
        let sk = sshsig::verify_with(&signer.public_key, NAMESPACE, blob, &sig)?;
        // 6: only now parse what was verified.
        let op = OpBlob::parse(blob)?;
        // 7: target.
        if op.host_id != self.host_id {
            return Err(AuthzError::Target(format!(
                "op is for host {:?}, this is {:?}",
                op.host_id, self.host_id
            )));
        }
        // 8: time window.
        let now = self.clock.now();
        let skew = i64::try_from(self.policy.max_clock_skew_seconds).unwrap_or(i64::MAX);
        if now.0 < op.not_before.0.saturating_sub(skew) {
            return Err(AuthzError::NotYetValid(format!(
                "valid from {} (skew {skew} s), now {now}",
                op.not_before
            )));
        }
        if now.0 >= op.expires_at.0.saturating_add(skew) {
            return Err(AuthzError::Expired(format!(
                "expired at {} (skew {skew} s), now {now}",
                op.expires_at
            )));
        }
        // 9: hardware-key counter.
        let sk = match sk {
            None => None,
            Some(a) => {
                let highest = self
                    .nonces
                    .highest_sk_counter(&signer.fingerprint)
                    .map_err(|e| AuthzError::Replay(format!("fail safe: {e}")))?;
                let regressed = highest.is_some_and(|h| a.counter <= h);
                if regressed {
                    let h = highest.unwrap_or_default();
                    if self.policy.sk_counter_strict {
                        return Err(AuthzError::Replay(format!(
                            "{}; refused (sk_counter_strict)",
                            sk_counter_detail(&signer.key_id, &signer.fingerprint, a.counter, h)
                        )));
                    }
                    crate::warn!(
                        signer_counter_not_increased,
                        "hardware key counter did not increase: possible cloned authenticator",
                        key_id = signer.key_id,
                        fingerprint = signer.fingerprint,
                        counter = a.counter,
                        highest_seen = h
                    );
                }
                Some(SkCheck {
                    flags: a.flags,
                    counter: a.counter,
                    highest_seen: highest,
                    counter_not_increasing: regressed,
                })
            }
        };
        // A nonce already burned is refused now, before the caller does any work for it;
        // `consume` checks again atomically with the write.
        match self.nonces.is_recorded(&op.nonce) {
            Ok(false) => {}
            Ok(true) => return Err(replayed(&op.nonce)),
            Err(e) => return Err(AuthzError::Replay(format!("fail safe: {e}"))),
        }
        if op.key_id != signer.key_id {
            crate::warn!(
                signer_key_id_mismatch,
                "signed op claims another key_id than its signer (advisory only)",
                claimed = op.key_id,
                signer = signer.key_id
            );
        }
        Ok(VerifiedOp {
            blob: op,
            signer: MatchedSigner {
                key_id: signer.key_id.clone(),
                role: signer.role,
                fingerprint: signer.fingerprint.clone(),
            },
            sk,
        })
    }

    /// Step 10: records the nonce of an op [`Verifier::check`] passed (with its
    /// hardware-key counter), durably before it returns. `Replay` when the nonce was
    /// recorded meanwhile or the store cannot answer (fail safe). Call it only once every
    /// other check passed, immediately before the op is executed.
    pub fn consume(&self, op: &VerifiedOp) -> Result<(), AuthzError> {
        let counter = op.sk.map(|s| (op.signer.fingerprint.as_str(), s.counter));
        match self
            .nonces
            .seen_or_record(&op.blob.nonce, op.blob.expires_at, counter)
        {
            Ok(Freshness::Fresh) => Ok(()),
            Ok(Freshness::Seen) => Err(replayed(&op.blob.nonce)),
            Err(e) => Err(AuthzError::Replay(format!("fail safe: {e}"))),
        }
    }
}

fn replayed(nonce: &str) -> AuthzError {
    AuthzError::Replay(format!("nonce {nonce:?} was already used"))
}

/// Runs the whole pipeline for `felhom-agent verify` with a memory nonce store, so
/// nothing is burned. The CLI validates `cfg` first (exit 2 on a bad config); if it was
/// not, an invalid config refuses as `UnknownSigner` naming the config error.
pub fn verify_offline(
    cfg: &AuthzConfig,
    host_id: &str,
    blob: &[u8],
    armored: &str,
    clock: &dyn Clock,
) -> Result<VerifiedOp, AuthzError> {
    struct At(Timestamp);
    impl Clock for At {
        fn now(&self) -> Timestamp {
            self.0
        }
    }
    let v = Verifier::from_config(
        cfg,
        host_id,
        Arc::new(At(clock.now())),
        Arc::new(MemoryNonceStore::new()),
    )
    .map_err(|e| AuthzError::UnknownSigner(format!("signer configuration invalid: {e}")))?;
    v.verify(blob, armored)
}

//! Signed operations: the verifier that stands between the hub and a destructive
//! change. An operator signs the exact bytes of a JSON op blob with
//! `ssh-keygen -Y sign -n felhom-op-v1`; [`Verifier::verify`] accepts it only if every
//! stage of the locked pipeline passes, **in this order** (the order is load-bearing):
//!
//! 0. size caps on the inputs (blob 64 KiB, signature 16 KiB) — `Malformed`
//! 1. parse the armor and the SSHSIG blob (strict; see [`sshsig`]) — `Malformed`
//! 2. namespace is exactly [`NAMESPACE`] — `Namespace`
//! 3. parse the public key: key type and signature algorithm policy — `Malformed`
//! 4. a revoked key is refused whatever lists it — `Revoked`; allow-list by **key
//!    material**, never by `key_id` — `UnknownSigner`; the signer's own validity
//!    (`valid_before`, `valid-after`) — `SignerExpired`
//! 5. crypto verify with the **trusted** key over the **raw received bytes**, and user
//!    presence for hardware keys — `BadSignature`
//!
//! Steps 1–5 run for **each** signature when an op carries several (`signatures: [...]`
//! beside `signature`): any one refused refuses the op; a key that signs twice counts
//! once. Which roles and how many recovery keys an op needs is [`check_authority`]; a
//! rotation's new set is checked against the held one by [`plan_rotation`] — both run
//! by the gate before the nonce is burned.
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

pub mod allowed_signers;
pub(crate) mod blob;
pub(crate) mod config;
pub(crate) mod nonce;
pub(crate) mod policy;
pub mod revoked;
pub(crate) mod selftest;
pub mod sshsig;

use std::fmt;
use std::sync::Arc;

pub use allowed_signers::parse_allowed_signers;
pub use blob::{MAX_BLOB_BYTES, OpBlob};
pub use config::{AuthzConfig, MAX_SIGNERS, Role, Signer, SignerEntry, SignersConfigError};
pub use nonce::{FileNonceStore, Freshness, MemoryNonceStore, NonceStore, NonceStoreError};
pub use policy::{
    EXPIRY_WARNING_DAYS, ExpiryWarning, ROTATION_PARAMS, RotationError, SIGNERS_FILE, SignerPolicy,
    SignerSet, SignerSource, expiry_warnings, load_signer_set, load_signer_set_os, plan_rotation,
    read_signers_file, signer_expiry_warnings, warn_expiring,
};
pub use revoked::RevokedKeys;
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
    /// The signing key is listed in `authz.revoked_keys_file`.
    Revoked(String),
    /// The signer is outside its own validity (`valid_before` past, or `valid-after`
    /// ahead).
    SignerExpired(String),
    /// The signers' roles do not cover the op (a recovery key on anything but a rotation,
    /// an operational key on an emergency rotation).
    RoleDenied(String),
    /// An emergency rotation carries fewer distinct recovery signatures than
    /// `authz.recovery_threshold`.
    BelowThreshold(String),
    /// A rotation's `version` is not exactly the held version + 1 (rollback or skip).
    PolicyVersion(String),
    /// A rotation's new signer set is unusable: bad params, a bad entry, a revoked key,
    /// or fewer recovery keys than the threshold.
    PolicyInvalid(String),
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
            AuthzError::Revoked(_) => "revoked",
            AuthzError::SignerExpired(_) => "signer_expired",
            AuthzError::RoleDenied(_) => "role_denied",
            AuthzError::BelowThreshold(_) => "below_threshold",
            AuthzError::PolicyVersion(_) => "policy_version",
            AuthzError::PolicyInvalid(_) => "policy_invalid",
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
            | AuthzError::Replay(d)
            | AuthzError::Revoked(d)
            | AuthzError::SignerExpired(d)
            | AuthzError::RoleDenied(d)
            | AuthzError::BelowThreshold(d)
            | AuthzError::PolicyVersion(d)
            | AuthzError::PolicyInvalid(d) => d,
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
    /// The allow-listed signer of the first signature.
    pub signer: MatchedSigner,
    /// The other distinct signers whose signatures over the same bytes verified.
    pub cosigners: Vec<MatchedSigner>,
    /// The signer policy version the signatures verified under.
    pub policy_version: u64,
    /// Present for hardware-key (`sk-*`) signatures (of the first signature).
    pub sk: Option<SkCheck>,
}

impl VerifiedOp {
    /// Every distinct signer: the first signature's, then the cosigners.
    pub fn all_signers(&self) -> impl Iterator<Item = &MatchedSigner> {
        std::iter::once(&self.signer).chain(self.cosigners.iter())
    }

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
        for c in &self.cosigners {
            line(
                "cosigner",
                &format!("{} {} {}", c.key_id, c.role.as_str(), c.fingerprint),
            );
        }
        line("signer_policy_version", &self.policy_version.to_string());
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
    set: Arc<SignerSet>,
    host_id: String,
    policy: Policy,
    clock: Arc<dyn Clock>,
    nonces: Arc<dyn NonceStore>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("host_id", &self.host_id)
            .field("signers", &self.set)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `host_id` with validated signers (policy version 0, threshold 1,
    /// nothing revoked, no rotation possible).
    pub fn new(
        signers: Vec<Signer>,
        host_id: impl Into<String>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Verifier {
        let set = SignerSet::new(
            SignerPolicy {
                version: 0,
                source: SignerSource::Config,
                signers,
                recovery_threshold: 1,
            },
            RevokedKeys::none(),
            None,
            Arc::new(crate::store::OsIo),
        );
        Verifier::with_set(Arc::new(set), host_id, policy, clock, nonces)
    }

    /// A verifier for `host_id` over the live signer `set` (shared with whoever applies
    /// rotations and reloads revoked keys).
    pub fn with_set(
        set: Arc<SignerSet>,
        host_id: impl Into<String>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Verifier {
        Verifier {
            set,
            host_id: host_id.into(),
            policy,
            clock,
            nonces,
        }
    }

    /// Validates `cfg` and builds the verifier for `host_id` (no state directory: the
    /// config's own set, never rotated).
    pub fn from_config(
        cfg: &AuthzConfig,
        host_id: &str,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Result<Verifier, SignersConfigError> {
        Verifier::from_config_in(cfg, host_id, None, clock, nonces)
    }

    /// Validates `cfg` and builds the verifier for `host_id`, holding the rotated set of
    /// `state_dir/signers.json` when there is one (see [`load_signer_set`]).
    pub fn from_config_in(
        cfg: &AuthzConfig,
        host_id: &str,
        state_dir: Option<&std::path::Path>,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceStore>,
    ) -> Result<Verifier, SignersConfigError> {
        if host_id.is_empty() {
            return Err(SignersConfigError {
                field: "host_id".into(),
                reason: "empty: the verifier needs this host's id".into(),
            });
        }
        let set = load_signer_set_os(cfg, state_dir)?;
        let policy = Policy {
            max_clock_skew_seconds: cfg.max_clock_skew_seconds,
            sk_counter_strict: cfg.sk_counter_strict,
        };
        Ok(Verifier::with_set(
            Arc::new(set),
            host_id,
            policy,
            clock,
            nonces,
        ))
    }

    /// The allow-list held now.
    pub fn signers(&self) -> Vec<Signer> {
        self.set.policy().signers.clone()
    }

    /// The live signer set (shared: a rotation applied through it is seen by the next
    /// check).
    pub fn signer_set(&self) -> &Arc<SignerSet> {
        &self.set
    }

    /// The roles and the recovery threshold `op` needs ([`check_authority`]) under the
    /// held policy.
    pub fn check_authority(&self, op: &VerifiedOp) -> Result<(), AuthzError> {
        check_authority(op, self.set.policy().recovery_threshold)
    }

    /// The policy a verified `rotate_signers` op would install ([`plan_rotation`] against
    /// the held policy and revoked keys).
    pub fn plan_rotation(&self, op: &VerifiedOp) -> Result<SignerPolicy, AuthzError> {
        plan_rotation(&op.blob.params, &self.set.policy(), &self.set.revoked())
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
        self.check_all(blob, &[armored])
    }

    /// [`Verifier::check`] for an op carrying several signatures over the same bytes:
    /// steps 1–5 run for each, in order, and any refusal refuses the op; a key that
    /// signs twice counts once. The first signature's signer is [`VerifiedOp::signer`].
    pub fn check_all(&self, blob: &[u8], signatures: &[&str]) -> Result<VerifiedOp, AuthzError> {
        if blob.len() > blob::MAX_BLOB_BYTES {
            return Err(AuthzError::Malformed(format!(
                "blob is {} bytes, over the {}-byte cap",
                blob.len(),
                blob::MAX_BLOB_BYTES
            )));
        }
        if signatures.is_empty() || signatures.len() > MAX_SIGNATURES {
            return Err(AuthzError::Malformed(format!(
                "{} signatures: want 1 to {MAX_SIGNATURES}",
                signatures.len()
            )));
        }
        let held = self.set.policy();
        let revoked = self.set.revoked();
        let now = self.clock.now();
        let mut matched: Vec<(&Signer, Option<SkAssertion>)> = Vec::new();
        for armored in signatures {
            // 1–3: armor, namespace, key and algorithm policy.
            let sig = sshsig::parse(armored, NAMESPACE)?;
            // 4: revoked, allow-list by key material, the signer's validity.
            if let Some(fp) = revoked.find(sig.public_key()) {
                return Err(AuthzError::Revoked(format!("key {fp} is revoked")));
            }
            let signer = held
                .signers
                .iter()
                .find(|s| s.public_key.key_data() == sig.public_key())
                .ok_or_else(|| {
                    AuthzError::UnknownSigner(format!(
                        "key {} is not an allow-listed signer (policy version {})",
                        sig.public_key().fingerprint(ssh_key::HashAlg::Sha256),
                        held.version
                    ))
                })?;
            if let Some(why) = signer.outside_validity(now) {
                return Err(AuthzError::SignerExpired(why));
            }
            // 5: crypto with the trusted key over the raw bytes.
            let sk = sshsig::verify_with(&signer.public_key, NAMESPACE, blob, &sig)?;
            if !matched
                .iter()
                .any(|(s, _)| s.fingerprint == signer.fingerprint)
            {
                matched.push((signer, sk));
            }
        }
        let (signer, sk) = matched[0];
        let cosigners = matched[1..]
            .iter()
            .map(|(s, _)| MatchedSigner {
                key_id: s.key_id.clone(),
                role: s.role,
                fingerprint: s.fingerprint.clone(),
            })
            .collect();
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
            cosigners,
            policy_version: held.version,
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

/// Most signatures one op may carry.
pub const MAX_SIGNATURES: usize = 8;

/// The roles an op needs: a rotation is allowed to an operational signer when `planned`,
/// and to at least `threshold` distinct recovery signers in either mode; every other op
/// needs an operational signer. A signature by a key of another role does not count.
pub fn check_authority(op: &VerifiedOp, threshold: u32) -> Result<(), AuthzError> {
    let operational = op.all_signers().any(|s| s.role == Role::Operational);
    let recovery = op
        .all_signers()
        .filter(|s| s.role == Role::Recovery)
        .count();
    if op.blob.op != "rotate_signers" {
        return if operational {
            Ok(())
        } else {
            Err(AuthzError::RoleDenied(format!(
                "a recovery signer may not authorize {}",
                op.blob.op.escape_debug()
            )))
        };
    }
    let planned = op.blob.params.get("mode").map(String::as_str) == Some("planned");
    if planned && operational {
        return Ok(());
    }
    let need = threshold.max(1) as usize;
    if recovery >= need {
        return Ok(());
    }
    if recovery == 0 {
        return Err(AuthzError::RoleDenied(
            "an operational signer may authorize only a planned rotation".into(),
        ));
    }
    Err(AuthzError::BelowThreshold(format!(
        "{recovery} distinct recovery signatures, the threshold is {need}"
    )))
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
    let set = load_signer_set_os(cfg, None)
        .map_err(|e| AuthzError::UnknownSigner(format!("signer configuration invalid: {e}")))?;
    verify_offline_set(Arc::new(set), cfg, host_id, blob, &[armored], clock)
}

/// [`verify_offline`] over a loaded signer `set` (the rotated one, when the state
/// directory holds it) and every signature of the op; also checks the roles and, for a
/// rotation, its new set against the held one, as the gate would. Burns nothing.
pub fn verify_offline_set(
    set: Arc<SignerSet>,
    cfg: &AuthzConfig,
    host_id: &str,
    blob: &[u8],
    signatures: &[&str],
    clock: &dyn Clock,
) -> Result<VerifiedOp, AuthzError> {
    struct At(Timestamp);
    impl Clock for At {
        fn now(&self) -> Timestamp {
            self.0
        }
    }
    let policy = Policy {
        max_clock_skew_seconds: cfg.max_clock_skew_seconds,
        sk_counter_strict: cfg.sk_counter_strict,
    };
    let v = Verifier::with_set(
        set,
        host_id,
        policy,
        Arc::new(At(clock.now())),
        Arc::new(MemoryNonceStore::new()),
    );
    let op = v.check_all(blob, signatures)?;
    v.check_authority(&op)?;
    if op.blob.op == "rotate_signers" {
        v.plan_rotation(&op)?;
    }
    v.consume(&op)?;
    Ok(op)
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The locked pipeline against real `ssh-keygen` vectors, OpenSSH's own test data and
//! test-minted hardware-key signatures.

use std::path::Path;
use std::sync::Arc;

use felhom_agent::authz::sshsig::{self, SkAssertion};
use felhom_agent::authz::{
    AuthzConfig, AuthzError, MemoryNonceStore, NAMESPACE, Policy, Role, Signer, SignerEntry,
    Verifier, verify_offline,
};
use felhom_agent::base::base64_decode;
use felhom_agent::base::{ManualClock, Timestamp};
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Journal;
use felhom_agent::reconcile::{AllowReason, Decision, Gate, GuestNow, Refusal, SignedOp};
use felhom_agent::reconcile::{Intent, OpClass};
use sha2::{Digest as _, Sha256};
use ssh_key::private::Ed25519Keypair;
use ssh_key::public::{EcdsaPublicKey, KeyData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, Signature, SshSig};

const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/sshsig");
const OSSH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/openssh-sshsig");
// 2030-01-01T00:30:00Z: inside op-valid's window.
const NOW: Timestamp = Timestamp(1_893_457_800);

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}
fn text(p: impl AsRef<Path>) -> String {
    String::from_utf8(read(p)).unwrap()
}
fn blob(name: &str) -> Vec<u8> {
    read(format!("{V}/blobs/{name}.json"))
}
fn sig(name: &str) -> String {
    text(format!("{V}/sigs/{name}.sig"))
}
fn pubkey(name: &str) -> String {
    text(format!("{V}/keys/{name}.pub"))
}

const KEYS: [&str; 6] = [
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-2048",
    "rsa-3072",
];

fn config() -> AuthzConfig {
    AuthzConfig {
        signers: KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| SignerEntry {
                key_id: if i == 0 {
                    "ops-2026".into()
                } else {
                    format!("key-{k}")
                },
                role: if i == 1 {
                    Role::Recovery
                } else {
                    Role::Operational
                },
                public_key: pubkey(k),
                valid_before: None,
            })
            .collect(),
        ..AuthzConfig::default()
    }
}

fn verifier_with(cfg: &AuthzConfig, clock: &ManualClock) -> Verifier {
    Verifier::from_config(
        cfg,
        "pve-a",
        Arc::new(clock.clone()),
        Arc::new(MemoryNonceStore::new()),
    )
    .unwrap()
}

fn verifier() -> Verifier {
    verifier_with(&config(), &ManualClock::new(NOW))
}

fn code(r: Result<felhom_agent::authz::VerifiedOp, AuthzError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

/// Signs `blob` in-process with the vector key `name` (ed25519 or ecdsa: ssh-key 0.6.7
/// cannot sign with RSA) under namespace `ns`; the same SSHSIG `ssh-keygen -Y sign`
/// makes (ed25519 is deterministic).
fn mint(name: &str, ns: &str, blob: &[u8]) -> String {
    let key = PrivateKey::from_openssh(read(format!("{V}/keys/{name}"))).unwrap();
    key.sign(ns, HashAlg::Sha512, blob)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

#[test]
fn every_key_type_verifies_from_a_real_ssh_keygen_vector() {
    let cases = [
        ("ed25519", "ed25519"),
        ("ecdsa-p256", "ecdsa-p256"),
        ("ecdsa-p256-hashalg-sha256", "ecdsa-p256"),
        ("ecdsa-p384", "ecdsa-p384"),
        ("ecdsa-p521", "ecdsa-p521"),
        ("rsa-2048", "rsa-2048"),
        ("rsa-2048-hashalg-sha256", "rsa-2048"),
        ("rsa-3072", "rsa-3072"),
    ];
    for (s, key) in cases {
        let op = verifier()
            .verify(&blob("op-valid"), &sig(&format!("op-valid.{s}")))
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        let want_id = if key == "ed25519" {
            "ops-2026".to_string()
        } else {
            format!("key-{key}")
        };
        assert_eq!(op.signer.key_id, want_id, "{s}");
        assert_eq!(op.blob.op, "guest_destroy");
        assert_eq!(op.blob.host_id, "pve-a");
        assert_eq!(op.blob.guest_id.as_deref(), Some("105"));
        assert_eq!(op.blob.params.get("purge").map(String::as_str), Some("1"));
        assert_eq!(op.blob.nonce, "6f1c0e5a9b3d47e28c1f0a9d3b5e7c21");
        assert_eq!(op.blob.expires_at, Timestamp(1_893_459_600));
        assert!(op.sk.is_none());
        let pk = PublicKey::from_openssh(&pubkey(key)).unwrap();
        assert_eq!(
            op.signer.fingerprint,
            pk.fingerprint(HashAlg::Sha256).to_string()
        );
    }
    let op = verifier()
        .verify(&blob("op-valid"), &sig("op-valid.ecdsa-p256"))
        .unwrap();
    assert_eq!(op.signer.role, Role::Recovery);
}

#[test]
fn each_stage_rejects_with_its_own_error_when_everything_else_is_valid() {
    let v = verifier();
    let valid = blob("op-valid");
    let mut tampered = valid.clone();
    let at = tampered.windows(3).position(|w| w == b"105").unwrap();
    tampered[at + 2] = b'6';
    // (what, blob, signature, code, a part of the detail that says why): the detail
    // proves each case is refused for what it breaks, not for another reason.
    let cases: Vec<(&str, Vec<u8>, String, &str, &str)> = vec![
        (
            "wrong namespace",
            valid.clone(),
            sig("op-valid.ed25519.wrong-namespace"),
            "namespace",
            "signature namespace \"felhom-op-v2\"",
        ),
        (
            "namespace `file`",
            valid.clone(),
            sig("op-valid.ed25519.namespace-file"),
            "namespace",
            "signature namespace \"file\"",
        ),
        (
            "unknown key",
            valid.clone(),
            sig("op-valid.other-ed25519"),
            "unknown_signer",
            "is not an allow-listed signer",
        ),
        (
            "tampered blob",
            tampered,
            sig("op-valid.ed25519"),
            "bad_signature",
            "signature does not verify",
        ),
        (
            "tampered signature",
            valid.clone(),
            text(format!("{V}/neg/tampered-signature.sig")),
            "bad_signature",
            "signature does not verify",
        ),
        (
            "wrong host",
            blob("op-wrong-host"),
            sig("op-wrong-host.ed25519"),
            "target",
            "op is for host \"pve-b\", this is \"pve-a\"",
        ),
        (
            "expired",
            blob("op-expired"),
            sig("op-expired.ed25519"),
            "expired",
            "expired at 2020-01-01T01:00:00Z",
        ),
        (
            "not yet valid",
            blob("op-not-yet-valid"),
            sig("op-not-yet-valid.ed25519"),
            "not_yet_valid",
            "valid from 2040-01-01T00:00:00Z",
        ),
        (
            "window over 24 h",
            blob("op-long-window"),
            sig("op-long-window.ed25519"),
            "malformed",
            "blob: validity window of 86401 s exceeds the 86400 s maximum",
        ),
        (
            "nonce under 128 bits",
            blob("op-short-nonce"),
            sig("op-short-nonce.ed25519"),
            "malformed",
            "blob: nonce is 64 bits (read as hex), at least 128 required",
        ),
        (
            "unknown blob field",
            blob("op-unknown-field"),
            sig("op-unknown-field.ed25519"),
            "malformed",
            "unknown field `extra`",
        ),
        (
            "blob not JSON",
            blob("op-not-json"),
            sig("op-not-json.ed25519"),
            "malformed",
            "blob: expected",
        ),
    ];
    for (what, b, s, want, why) in cases {
        match v.verify(&b, &s) {
            Err(e) => {
                assert_eq!(e.code(), want, "{what}: {e}");
                assert!(e.detail().contains(why), "{what}: {e}");
            }
            Ok(op) => panic!("{what}: verified {op:?}"),
        }
    }
    // None of those burned the nonce they carried: the valid op still verifies once.
    assert_eq!(code(v.verify(&valid, &sig("op-valid.ed25519"))), "ok");
    assert_eq!(code(v.verify(&valid, &sig("op-valid.ed25519"))), "replay");
    assert_eq!(code(v.verify(&valid, &sig("op-valid.rsa-3072"))), "replay");
}

/// Two stages broken at once: the earlier stage's error wins. Each part is first shown
/// to be refused on its own with its own code, so the pair would report the later
/// stage's code if the pipeline ran in another order.
#[test]
fn when_two_stages_fail_the_earlier_stage_wins() {
    let other_blobs_sig = sig("op-valid.ed25519");
    let expired_by_unknown = mint("other-ed25519", NAMESPACE, &blob("op-expired"));
    let unknown_wrong_ns = mint("other-ed25519", "felhom-op-v2", &blob("op-valid"));
    let wrong_host_expired = String::from_utf8(blob("op-expired"))
        .unwrap()
        .replace("pve-a", "pve-b")
        .into_bytes();
    let wrong_host_expired_sig = mint("ed25519", NAMESPACE, &wrong_host_expired);
    // (what, earlier alone, later alone, both) — each as (blob, signature, code).
    type Case = (Vec<u8>, String, &'static str);
    let cases: Vec<(&str, Case, Case, Case)> = vec![
        (
            "crypto before target",
            (blob("op-valid"), sig("op-expired.ed25519"), "bad_signature"),
            (
                blob("op-wrong-host"),
                sig("op-wrong-host.ed25519"),
                "target",
            ),
            (
                blob("op-wrong-host"),
                other_blobs_sig.clone(),
                "bad_signature",
            ),
        ),
        (
            "crypto before blob parse",
            (blob("op-valid"), sig("op-expired.ed25519"), "bad_signature"),
            (blob("op-not-json"), sig("op-not-json.ed25519"), "malformed"),
            (
                blob("op-not-json"),
                other_blobs_sig.clone(),
                "bad_signature",
            ),
        ),
        (
            "allow-list before time",
            (
                blob("op-valid"),
                sig("op-valid.other-ed25519"),
                "unknown_signer",
            ),
            (blob("op-expired"), sig("op-expired.ed25519"), "expired"),
            (blob("op-expired"), expired_by_unknown, "unknown_signer"),
        ),
        (
            "namespace before allow-list",
            (
                blob("op-valid"),
                sig("op-valid.ed25519.wrong-namespace"),
                "namespace",
            ),
            (
                blob("op-valid"),
                sig("op-valid.other-ed25519"),
                "unknown_signer",
            ),
            (blob("op-valid"), unknown_wrong_ns, "namespace"),
        ),
        (
            "target before time",
            (
                blob("op-wrong-host"),
                sig("op-wrong-host.ed25519"),
                "target",
            ),
            (blob("op-expired"), sig("op-expired.ed25519"), "expired"),
            (wrong_host_expired, wrong_host_expired_sig, "target"),
        ),
    ];
    for (what, earlier, later, both) in cases {
        for (part, (b, s, want)) in [("earlier alone", earlier), ("later alone", later)] {
            assert_eq!(code(verifier().verify(&b, &s)), want, "{what}: {part}");
        }
        let (b, s, want) = both;
        assert_eq!(code(verifier().verify(&b, &s)), want, "{what}: both");
    }

    // Time before nonce: op-expired carries op-valid's nonce. Once that nonce is burned,
    // the expired blob is still refused as expired, not as a replay.
    let v = verifier();
    assert_eq!(
        code(v.verify(&blob("op-valid"), &sig("op-valid.ed25519"))),
        "ok"
    );
    assert_eq!(
        code(v.verify(&blob("op-valid"), &sig("op-valid.ed25519"))),
        "replay"
    );
    let nonce = |name: &str| {
        let j: serde_json::Value = serde_json::from_slice(&blob(name)).unwrap();
        j["nonce"].as_str().unwrap().to_string()
    };
    assert_eq!(nonce("op-expired"), nonce("op-valid"));
    assert_eq!(
        code(v.verify(&blob("op-expired"), &sig("op-expired.ed25519"))),
        "expired"
    );
}

#[test]
fn a_hex_nonce_under_128_bits_is_refused_even_when_it_parses_as_base64() {
    let v = verifier();
    for (nonce, bits) in [
        ("0123456789abcdef01234567", 96),
        ("0123456789abcdef0123456789ab", 112),
    ] {
        let b = op_with_nonce(nonce);
        match v.verify(&b, &mint("ed25519", NAMESPACE, &b)) {
            Err(AuthzError::Malformed(d)) => assert_eq!(
                d,
                format!("blob: nonce is {bits} bits (read as hex), at least 128 required")
            ),
            other => panic!("{nonce}: {other:?}"),
        }
    }
    // 32 hex digits, and 24 base64 characters (16 bytes) with non-hex ones, verify.
    for nonce in [
        "0123456789abcdef0123456789abcdef",
        "q83vASNFZ4mrze8BI0VniQ==",
    ] {
        let b = op_with_nonce(nonce);
        let op = v.verify(&b, &mint("ed25519", NAMESPACE, &b)).unwrap();
        assert_eq!(op.blob.nonce, nonce);
    }
}

#[test]
fn a_key_id_that_matches_but_different_key_material_is_an_unknown_signer() {
    // The blob claims key_id "ops-2026" (a configured signer) but another key signed it.
    let b = blob("op-valid");
    assert!(String::from_utf8_lossy(&b).contains("\"key_id\":\"ops-2026\""));
    match verifier().verify(&b, &sig("op-valid.other-ed25519")) {
        Err(AuthzError::UnknownSigner(d)) => assert!(d.contains("SHA256:"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_signature_does_not_burn_the_nonce() {
    let v = verifier();
    let valid = blob("op-valid");
    let bad = text(format!("{V}/neg/tampered-signature.sig"));
    assert!(matches!(
        v.verify(&valid, &bad),
        Err(AuthzError::BadSignature(_))
    ));
    assert_eq!(code(v.verify(&valid, &sig("op-valid.ed25519"))), "ok");
}

#[test]
fn the_time_window_honours_the_configured_skew_at_its_edges() {
    let clock = ManualClock::new(Timestamp(0));
    let mut cfg = config();
    cfg.max_clock_skew_seconds = 60;
    let nbf = 1_893_456_000; // 2030-01-01T00:00:00Z
    let exp = nbf + 3600;
    for (t, want) in [
        (nbf - 61, "not_yet_valid"),
        (nbf - 60, "ok"),
        (exp + 59, "ok"),
        (exp + 60, "expired"),
    ] {
        clock.set(Timestamp(t));
        let v = verifier_with(&cfg, &clock);
        assert_eq!(
            code(v.verify(&blob("op-valid"), &sig("op-valid.ed25519"))),
            want,
            "t = {t}"
        );
    }
}

#[test]
fn re_serialized_json_fails_crypto() {
    let valid = blob("op-valid");
    let value: serde_json::Value = serde_json::from_slice(&valid).unwrap();
    let sorted = serde_json::to_vec(&value).unwrap(); // keys re-ordered
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    let mut newline = valid.clone();
    newline.push(b'\n');
    for b in [sorted, pretty, newline] {
        assert_ne!(b, valid);
        assert!(matches!(
            verifier().verify(&b, &sig("op-valid.ed25519")),
            Err(AuthzError::BadSignature(_))
        ));
    }
}

#[test]
fn armor_variants_that_ssh_keygen_users_produce_still_verify() {
    for f in [
        "crlf",
        "wrap64",
        "wrap76",
        "one-line",
        "surrounding-whitespace",
        "no-final-newline",
    ] {
        let s = text(format!("{V}/ok/{f}.sig"));
        assert_eq!(code(verifier().verify(&blob("op-valid"), &s)), "ok", "{f}");
    }
}

#[test]
fn negative_framing_vectors_are_refused_for_what_they_break() {
    let mut names: Vec<String> = std::fs::read_dir(format!("{V}/neg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for n in names {
        let s = text(format!("{V}/neg/{n}"));
        let want = match n.as_str() {
            "tampered-signature.sig" => "bad_signature",
            _ => "malformed",
        };
        let got = verifier().verify(&blob("op-valid"), &s);
        assert_eq!(code(got.clone()), want, "{n}: {got:?}");
    }
}

#[test]
fn sha1_rsa_small_rsa_dsa_and_certificates_are_refused() {
    let detail = |r: Result<_, AuthzError>| match r {
        Err(AuthzError::Malformed(d)) => d,
        other => panic!("{other:?}"),
    };
    let v = verifier();
    let d = detail(v.verify(
        &blob("op-valid"),
        &text(format!("{V}/neg/ssh-rsa-sha1.sig")),
    ));
    assert!(d.contains("ssh-rsa") || d.contains("signature blob"), "{d}");
    let d = detail(v.verify(&blob("op-valid"), &sig("op-valid.rsa-1024")));
    assert!(d.contains("1024 bits"), "{d}");
    if Path::new(&format!("{V}/sigs/op-valid.dsa.sig")).exists() {
        detail(v.verify(&blob("op-valid"), &sig("op-valid.dsa")));
    }
    detail(v.verify(
        &blob("op-valid"),
        &text(format!("{V}/neg/certificate-key.sig")),
    ));
    let d = detail(v.verify(
        &blob("op-valid"),
        &text(format!("{V}/neg/algorithm-mismatch.sig")),
    ));
    assert!(d.contains("does not match"), "{d}");
    // And a 1024-bit key cannot even be configured.
    let mut cfg = config();
    cfg.signers[1].public_key = pubkey("rsa-1024");
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.field, "authz.signers[1].public_key");
    assert!(e.reason.contains("1024 bits"), "{e}");
}

#[test]
fn openssh_test_data_verifies_through_the_framing_functions() {
    let msg = read(format!("{OSSH}/signed-data"));
    let ns = text(format!("{OSSH}/namespace"));
    assert_eq!(ns, "unittest");
    for k in ["ed25519", "ecdsa", "rsa", "ed25519_sk", "ecdsa_sk"] {
        let armored = text(format!("{OSSH}/{k}.sig"));
        let trusted = PublicKey::from_openssh(&text(format!("{OSSH}/{k}.pub"))).unwrap();
        let s = sshsig::parse(&armored, &ns).unwrap_or_else(|e| panic!("{k}: {e}"));
        let sk =
            sshsig::verify_with(&trusted, &ns, &msg, &s).unwrap_or_else(|e| panic!("{k}: {e}"));
        if k.ends_with("_sk") {
            assert_eq!(
                sk,
                Some(SkAssertion {
                    flags: 0x01,
                    counter: 0x1234_5678
                }),
                "{k}"
            );
        } else {
            assert_eq!(sk, None);
        }
        // Our constant namespace refuses them; so does a modified message.
        assert!(matches!(
            sshsig::parse(&armored, NAMESPACE),
            Err(AuthzError::Namespace(_))
        ));
        assert!(matches!(
            sshsig::verify_with(&trusted, &ns, b"This is a test, this is only a tesT", &s),
            Err(AuthzError::BadSignature(_))
        ));
    }
    let webauthn = text(format!("{OSSH}/ecdsa_sk_webauthn.sig"));
    assert!(matches!(
        sshsig::parse(&webauthn, &ns),
        Err(AuthzError::Malformed(_))
    ));
}

// ---- hardware keys, minted here --------------------------------------------------

fn raw_ed25519_sign(seed: u8, msg: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .sign(msg)
        .to_bytes()
        .to_vec()
}

/// What a FIDO authenticator signs for an `sk-*` SSHSIG over `msg` (application
/// `ssh:`): SHA256(application) | flags | counter | SHA256(SSHSIG signed data).
fn sk_authenticator_data(msg: &[u8], flags: u8, counter: u32) -> Vec<u8> {
    let signed = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, msg).unwrap();
    let mut authn = Vec::new();
    authn.extend_from_slice(&Sha256::digest(b"ssh:"));
    authn.push(flags);
    authn.extend_from_slice(&counter.to_be_bytes());
    authn.extend_from_slice(&Sha256::digest(&signed));
    authn
}

/// An sk-ssh-ed25519 SSHSIG over `msg`, as a FIDO authenticator would make it.
fn mint_sk(seed: u8, msg: &[u8], flags: u8, counter: u32) -> (String, String) {
    let kp = Ed25519Keypair::from_seed(&[seed; 32]);
    let key = KeyData::SkEd25519(SkEd25519::new(kp.public, "ssh:"));
    let authn = sk_authenticator_data(msg, flags, counter);
    let mut data = raw_ed25519_sign(seed, &authn);
    data.push(flags);
    data.extend_from_slice(&counter.to_be_bytes());
    let s = SshSig::new(
        key.clone(),
        NAMESPACE,
        HashAlg::Sha512,
        Signature::new(Algorithm::SkEd25519, data).unwrap(),
    )
    .unwrap();
    let line = PublicKey::new(key, "fido").to_openssh().unwrap();
    (s.to_pem(LineEnding::LF).unwrap(), line)
}

/// The `guest_digest` of the vector blobs (`vectors/sshsig/gen.sh`).
const VECTOR_DIGEST: &str = "9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1";

fn op_with_nonce(nonce: &str) -> Vec<u8> {
    String::from_utf8(blob("op-valid"))
        .unwrap()
        .replace("6f1c0e5a9b3d47e28c1f0a9d3b5e7c21", nonce)
        .into_bytes()
}

fn sk_verifier(line: &str, strict: bool) -> Verifier {
    Verifier::new(
        vec![Signer::from_authorized_key("fido-1", Role::Operational, line).unwrap()],
        "pve-a",
        Policy {
            max_clock_skew_seconds: 120,
            sk_counter_strict: strict,
        },
        Arc::new(ManualClock::new(NOW)),
        Arc::new(MemoryNonceStore::new()),
    )
}

#[test]
fn hardware_key_needs_user_presence() {
    let msg = op_with_nonce("00000000000000000000000000000001");
    let (no_touch, line) = mint_sk(9, &msg, 0x00, 5);
    let v = sk_verifier(&line, false);
    match v.verify(&msg, &no_touch) {
        Err(AuthzError::BadSignature(d)) => assert!(d.contains("user presence"), "{d}"),
        other => panic!("{other:?}"),
    }
    // Refused before the nonce: the same op with a touch verifies.
    let (touched, _) = mint_sk(9, &msg, 0x05, 6);
    let op = v.verify(&msg, &touched).unwrap();
    let sk = op.sk.unwrap();
    assert_eq!((sk.flags, sk.counter, sk.highest_seen), (0x05, 6, None));
    assert!(!sk.counter_not_increasing);
    // A flag byte changed after signing breaks the signature.
    let (mut forged, _) = mint_sk(
        9,
        &op_with_nonce("00000000000000000000000000000002"),
        0x00,
        7,
    );
    forged = sshsig::armor(&{
        let mut b = sshsig::dearmor(&forged).unwrap();
        let n = b.len();
        b[n - 5] = 0x01;
        b
    });
    assert!(matches!(
        v.verify(&op_with_nonce("00000000000000000000000000000002"), &forged),
        Err(AuthzError::BadSignature(_))
    ));
}

/// An sk-ecdsa-sha2-nistp256 SSHSIG over `msg`, as a FIDO authenticator would make it:
/// ECDSA P-256/SHA-256 over SHA256(app) | flags | counter | SHA256(signed data), by the
/// vector key `ecdsa-p256` standing in for the authenticator's.
fn mint_sk_ecdsa(msg: &[u8], flags: u8, counter: u32) -> (String, String) {
    use ed25519_dalek::ed25519::signature::Signer as _;
    let private = PrivateKey::from_openssh(read(format!("{V}/keys/ecdsa-p256"))).unwrap();
    let KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) = private.public_key().key_data() else {
        panic!("ecdsa-p256 is not a P-256 key");
    };
    let key = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(*point, "ssh:"));
    let authn = sk_authenticator_data(msg, flags, counter);
    // ssh-key signs with SHA-256 for P-256 and encodes mpint r | mpint s, the inner
    // form of an sk-ecdsa signature; the authenticator appends flags and counter.
    let inner: Signature = private
        .key_data()
        .ecdsa()
        .unwrap()
        .try_sign(&authn)
        .unwrap();
    // ssh-key 0.6.7 encodes an sk-ecdsa signature with its flags and counter inside the
    // signature string (it splits the trailer off only for sk-ed25519), which no decoder
    // reads back; so the SSHSIG blob is framed here, as OpenSSH's sshsig.c writes it.
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
        out.extend_from_slice(b);
    }
    let line = PublicKey::new(key, "fido-ecdsa").to_openssh().unwrap();
    let key_blob = base64_decode(line.split(' ').nth(1).unwrap()).unwrap();
    let mut sig = Vec::new();
    string(&mut sig, b"sk-ecdsa-sha2-nistp256@openssh.com");
    string(&mut sig, inner.as_bytes());
    sig.push(flags);
    sig.extend_from_slice(&counter.to_be_bytes());
    let mut b = b"SSHSIG".to_vec();
    b.extend_from_slice(&1u32.to_be_bytes());
    string(&mut b, &key_blob);
    string(&mut b, NAMESPACE.as_bytes());
    string(&mut b, b"");
    string(&mut b, b"sha512");
    string(&mut b, &sig);
    (sshsig::armor(&b), line)
}

#[test]
fn hardware_ecdsa_key_needs_user_presence() {
    let msg = op_with_nonce("00000000000000000000000000000021");
    let (no_touch, line) = mint_sk_ecdsa(&msg, 0x04, 5); // user verified, not present
    assert!(
        line.starts_with("sk-ecdsa-sha2-nistp256@openssh.com "),
        "{line}"
    );
    let v = sk_verifier(&line, false);
    match v.verify(&msg, &no_touch) {
        Err(AuthzError::BadSignature(d)) => {
            assert_eq!(
                d,
                "hardware key signature without user presence (flags 0x04)"
            );
        }
        other => panic!("{other:?}"),
    }
    // The signature itself was good: the refusal was the flag, and it burned nothing.
    let s = sshsig::parse(&no_touch, NAMESPACE).unwrap();
    assert!(
        PublicKey::from_openssh(&line)
            .unwrap()
            .verify(NAMESPACE, &msg, &s)
            .is_ok()
    );
    let (touched, _) = mint_sk_ecdsa(&msg, 0x01, 6);
    let op = v.verify(&msg, &touched).unwrap();
    let sk = op.sk.unwrap();
    assert_eq!((sk.flags, sk.counter, sk.highest_seen), (0x01, 6, None));
    assert_eq!(op.signer.key_id, "fido-1");
    // The presence flag is signed: setting it after the fact breaks the signature.
    let msg2 = op_with_nonce("00000000000000000000000000000022");
    let (no_touch2, _) = mint_sk_ecdsa(&msg2, 0x00, 7);
    let forged = sshsig::armor(&{
        let mut b = sshsig::dearmor(&no_touch2).unwrap();
        let n = b.len();
        b[n - 5] = 0x01;
        b
    });
    match v.verify(&msg2, &forged) {
        Err(AuthzError::BadSignature(d)) => assert!(d.contains("does not verify"), "{d}"),
        other => panic!("{other:?}"),
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("felhom-authz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The gate writes a possible cloned authenticator into the audit record of the allowed
/// decision (non-strict), and the strict refusal with its reason; a counter that
/// increases leaves the record plain. Read back from the file after a reopen.
#[test]
fn a_hardware_key_counter_that_does_not_increase_is_in_the_audit_log() {
    for strict in [false, true] {
        let dir = tempdir(if strict {
            "sk-audit-strict"
        } else {
            "sk-audit"
        });
        let m1 = op_with_nonce("00000000000000000000000000000031");
        let m2 = op_with_nonce("00000000000000000000000000000032");
        let m3 = op_with_nonce("00000000000000000000000000000033");
        let (s1, line) = mint_sk(4, &m1, 0x01, 100);
        let (s2, _) = mint_sk(4, &m2, 0x01, 90);
        let (s3, _) = mint_sk(4, &m3, 0x01, 101);
        let fp = PublicKey::from_openssh(&line)
            .unwrap()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
        let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
        let gate = Gate::new(
            "pve-a".into(),
            Some(sk_verifier(&line, strict)),
            journal,
            audit.clone(),
        )
        .with_clock(Arc::new(ManualClock::new(NOW)));
        let mut intent = Intent::new(OpClass::GuestDestroy, "pve-a", Some("105".into()));
        intent.params.insert("purge".into(), "1".into());
        let run = |blob: &[u8], signature: &str| {
            gate.authorize(
                &intent,
                Some(&SignedOp::new(blob.to_vec(), signature.to_string())),
                &GuestNow::Present {
                    digest: Some(VECTOR_DIGEST.into()),
                    protected: false,
                    running: false,
                },
            )
        };
        let allowed = |d: &Decision| {
            matches!(
                d,
                Decision::Allowed {
                    reason: AllowReason::Signed,
                    ..
                }
            )
        };
        assert!(allowed(&run(&m1, &s1)));
        let d2 = run(&m2, &s2);
        assert!(allowed(&run(&m3, &s3)));
        drop(gate);
        drop(audit);

        let tail = AuditLog::open(&dir.join("audit.log")).unwrap().tail(10);
        assert_eq!(tail.len(), 3, "{tail:?}");
        let warning = format!(
            "sk_counter_not_increasing: signer \"fido-1\" ({fp}) counter 90, highest seen \
             100: possible cloned authenticator"
        );
        for e in [&tail[0], &tail[2]] {
            assert_eq!(
                (e.decision.as_str(), e.reason.as_str()),
                ("allowed", "signed")
            );
        }
        if strict {
            match d2.refusal() {
                Some(Refusal::Rejected(AuthzError::Replay(_))) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(tail[1].decision, "replay");
            assert_eq!(
                tail[1].reason,
                format!("{warning}; refused (sk_counter_strict)")
            );
            assert_eq!(tail[1].key_id, None);
        } else {
            assert!(allowed(&d2), "{d2:?}");
            assert_eq!(tail[1].decision, "allowed");
            assert_eq!(tail[1].reason, format!("signed; {warning}"));
            // The configured signer found by key material, not the blob's claim.
            assert_eq!(tail[1].key_id.as_deref(), Some("fido-1"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn hardware_key_counter_regression_is_flagged_or_refused_when_strict() {
    for strict in [false, true] {
        let m1 = op_with_nonce("00000000000000000000000000000011");
        let m2 = op_with_nonce("00000000000000000000000000000012");
        let m3 = op_with_nonce("00000000000000000000000000000013");
        let (s1, line) = mint_sk(3, &m1, 0x01, 100);
        let (s2, _) = mint_sk(3, &m2, 0x01, 100);
        let (s3, _) = mint_sk(3, &m3, 0x01, 101);
        let v = sk_verifier(&line, strict);
        assert!(
            !v.verify(&m1, &s1)
                .unwrap()
                .sk
                .unwrap()
                .counter_not_increasing
        );
        match (strict, v.verify(&m2, &s2)) {
            (false, Ok(op)) => {
                let sk = op.sk.unwrap();
                assert!(sk.counter_not_increasing);
                assert_eq!(sk.highest_seen, Some(100));
                assert!(op.to_lines().contains("sk_counter_warning"));
            }
            (true, Err(AuthzError::Replay(d))) => assert!(d.contains("counter"), "{d}"),
            (s, other) => panic!("strict={s}: {other:?}"),
        }
        let op = v.verify(&m3, &s3).unwrap();
        assert!(!op.sk.unwrap().counter_not_increasing);
    }
}

#[test]
fn verify_offline_burns_nothing_and_reports_bad_config_as_refusal() {
    let clock = ManualClock::new(NOW);
    for _ in 0..2 {
        let op = verify_offline(
            &config(),
            "pve-a",
            &blob("op-valid"),
            &sig("op-valid.ed25519"),
            &clock,
        )
        .unwrap();
        assert_eq!(op.signer.key_id, "ops-2026");
    }
    let mut bad = config();
    bad.signers[2].public_key = "ssh-ed25519 not-base64".into();
    let e = verify_offline(
        &bad,
        "pve-a",
        &blob("op-valid"),
        &sig("op-valid.ed25519"),
        &clock,
    )
    .unwrap_err();
    assert_eq!(e.code(), "unknown_signer");
    assert!(e.detail().contains("authz.signers[2].public_key"), "{e}");
}

#[test]
fn printable_form_is_stable_lines() {
    let op = verifier()
        .verify(&blob("op-valid"), &sig("op-valid.ed25519"))
        .unwrap();
    let fp = op.signer.fingerprint.clone();
    assert_eq!(
        op.to_lines(),
        format!(
            "op: guest_destroy\nhost_id: pve-a\nguest_id: 105\nguest_digest: {VECTOR_DIGEST}\n\
             param.purge: 1\nkey_id: ops-2026\n\
             signer: ops-2026\nsigner_role: operational\nsigner_fingerprint: {fp}\n\
             signer_policy_version: 0\n\
             nonce: 6f1c0e5a9b3d47e28c1f0a9d3b5e7c21\nnot_before: 2030-01-01T00:00:00Z\n\
             expires_at: 2030-01-01T01:00:00Z\n"
        )
    );
}

#[test]
fn error_codes_are_the_documented_snake_case_names() {
    let all = [
        (AuthzError::Malformed("d".into()), "malformed"),
        (AuthzError::Namespace("d".into()), "namespace"),
        (AuthzError::UnknownSigner("d".into()), "unknown_signer"),
        (AuthzError::BadSignature("d".into()), "bad_signature"),
        (AuthzError::Target("d".into()), "target"),
        (AuthzError::Expired("d".into()), "expired"),
        (AuthzError::NotYetValid("d".into()), "not_yet_valid"),
        (AuthzError::Replay("d".into()), "replay"),
    ];
    for (e, c) in all {
        assert_eq!(e.code(), c);
        assert_eq!(e.to_string(), format!("{c}: d"));
    }
}

#[test]
fn blobs_of_every_length_survive_dearmor_and_decode_at_any_wrap_width() {
    let kp = Ed25519Keypair::from_seed(&[1; 32]);
    let key = KeyData::Ed25519(kp.public);
    let sig = Signature::new(Algorithm::Ed25519, vec![7u8; 64]).unwrap();
    for n in 1..=160 {
        let ns = "n".repeat(n);
        let s = SshSig::new(key.clone(), ns.as_str(), HashAlg::Sha512, sig.clone()).unwrap();
        let raw = sshsig::dearmor(&s.to_pem(LineEnding::LF).unwrap()).unwrap();
        let b64 = felhom_agent::base::base64_encode(&raw);
        for width in [1, 63, 64, 70, 76, 1000] {
            let mut armored = String::from("-----BEGIN SSH SIGNATURE-----\r\n");
            for chunk in b64.as_bytes().chunks(width) {
                armored.push_str(std::str::from_utf8(chunk).unwrap());
                armored.push_str("\r\n");
            }
            armored.push_str("-----END SSH SIGNATURE-----");
            let back = sshsig::decode_blob(&sshsig::dearmor(&armored).unwrap())
                .unwrap_or_else(|e| panic!("namespace length {n}, width {width}: {e}"));
            assert_eq!(back, s);
        }
    }
}

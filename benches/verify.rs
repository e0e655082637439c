//! Verifications per second through the whole pipeline (one verifier per key type,
//! memory nonce store, a fresh nonce every time) against the raw `PublicKey::verify` on
//! the same inputs, per key type; printed with their ratio. Goal: pipeline ≤ 1.2× the
//! raw check for ed25519, printed on the last line.
//!
//! Inputs: ed25519 and ECDSA are signed in-process with the vector keys; RSA by the real
//! `ssh-keygen -Y sign` in one run over all blobs (ssh-key 0.6.7 cannot sign with RSA);
//! sk-ed25519 and sk-ecdsa are minted as an authenticator would (as the authz tests do),
//! with a counter that increases per op.
//!
//! `cargo bench --bench verify` (release profile). Not a test: it asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/sign.rs"]
mod sign;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::ed25519::signature::Signer as _;
use felhom_agent::authz::{MemoryNonceStore, NAMESPACE, Policy, Role, Signer, Verifier, sshsig};
use felhom_agent::base::base64_decode;
use felhom_agent::base::{ManualClock, Timestamp};
use sha2::{Digest as _, Sha256};
use ssh_key::private::Ed25519Keypair;
use ssh_key::public::{EcdsaPublicKey, KeyData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, Signature, SshSig};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/sshsig/keys");
const NOW: Timestamp = Timestamp(1_893_457_800);
const GOAL: f64 = 1.2;

/// The `i`-th destroy blob: the tests' blob text, by the bench signer, valid around
/// [`NOW`] (2030-01-01 00:00 to 01:00), nonce `i`.
fn blob(i: usize) -> Vec<u8> {
    sign::Destroy {
        key_id: "bench",
        host: "pve-a",
        guest: "105",
        digest: "9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1",
        nonce: format!("{i:032x}"),
        not_before: Timestamp(1_893_456_000),
        expires_at: Timestamp(1_893_459_600),
    }
    .blob()
}

fn time_per_op(mut f: impl FnMut(), n: usize) -> Duration {
    // Take the best of three runs: the machine is shared.
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed() / n as u32
        })
        .min()
        .unwrap()
}

/// The signer's authorized_keys line and `n` (blob, armored signature) pairs.
type Inputs = (String, Vec<(Vec<u8>, String)>);
/// Makes the inputs for a key (by vector name) and a count.
type Make = fn(&str, usize) -> Inputs;

fn in_process(name: &str, n: usize) -> Inputs {
    let key = PrivateKey::read_openssh_file(format!("{KEYS}/{name}").as_ref()).unwrap();
    let inputs = (0..n)
        .map(|i| {
            let b = blob(i);
            let s = key.sign(NAMESPACE, HashAlg::Sha512, &b).unwrap();
            (b, s.to_pem(LineEnding::LF).unwrap())
        })
        .collect();
    (key.public_key().to_openssh().unwrap(), inputs)
}

/// All `n` blobs signed by one `ssh-keygen -Y sign` run, from a 0600 copy of the key.
fn by_ssh_keygen(name: &str, n: usize) -> Inputs {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("felhom-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::copy(format!("{KEYS}/{name}"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("{i}.json"))).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, blob(i)).unwrap();
    }
    let st = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(&key)
        .args(&files)
        .stderr(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen -Y sign failed");
    let inputs = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let s = std::fs::read_to_string(format!("{}.sig", f.display())).unwrap();
            (blob(i), s)
        })
        .collect();
    let line = std::fs::read_to_string(format!("{KEYS}/{name}.pub")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (line, inputs)
}

/// SHA256(app) | flags | counter | SHA256(signed data): what a FIDO authenticator signs.
fn authenticator_data(msg: &[u8], counter: u32) -> Vec<u8> {
    let signed = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, msg).unwrap();
    let mut a = Sha256::digest(b"ssh:").to_vec();
    a.push(0x01);
    a.extend_from_slice(&counter.to_be_bytes());
    a.extend_from_slice(&Sha256::digest(&signed));
    a
}

fn sk_ed25519(n: usize) -> Inputs {
    let seed = [7u8; 32];
    let key = KeyData::SkEd25519(SkEd25519::new(
        Ed25519Keypair::from_seed(&seed).public,
        "ssh:",
    ));
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let inputs = (0..n)
        .map(|i| {
            let b = blob(i);
            let counter = u32::try_from(i).unwrap() + 1;
            let mut data = signing
                .sign(&authenticator_data(&b, counter))
                .to_bytes()
                .to_vec();
            data.push(0x01);
            data.extend_from_slice(&counter.to_be_bytes());
            let sig = Signature::new(Algorithm::SkEd25519, data).unwrap();
            let s = SshSig::new(key.clone(), NAMESPACE, HashAlg::Sha512, sig).unwrap();
            (b, s.to_pem(LineEnding::LF).unwrap())
        })
        .collect();
    (PublicKey::new(key, "bench").to_openssh().unwrap(), inputs)
}

fn sk_ecdsa(n: usize) -> Inputs {
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
        out.extend_from_slice(b);
    }
    let private = PrivateKey::read_openssh_file(format!("{KEYS}/ecdsa-p256").as_ref()).unwrap();
    let KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) = private.public_key().key_data() else {
        panic!("ecdsa-p256 is not a P-256 key");
    };
    let key = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(*point, "ssh:"));
    let line = PublicKey::new(key, "bench").to_openssh().unwrap();
    let key_blob = base64_decode(line.split(' ').nth(1).unwrap()).unwrap();
    let ecdsa = private.key_data().ecdsa().unwrap();
    let inputs = (0..n)
        .map(|i| {
            let b = blob(i);
            let counter = u32::try_from(i).unwrap() + 1;
            let inner: Signature = ecdsa.try_sign(&authenticator_data(&b, counter)).unwrap();
            // Framed by hand: ssh-key 0.6.7 mis-encodes an sk-ecdsa signature's trailer.
            let mut sig = Vec::new();
            string(&mut sig, b"sk-ecdsa-sha2-nistp256@openssh.com");
            string(&mut sig, inner.as_bytes());
            sig.push(0x01);
            sig.extend_from_slice(&counter.to_be_bytes());
            let mut raw = b"SSHSIG".to_vec();
            raw.extend_from_slice(&1u32.to_be_bytes());
            string(&mut raw, &key_blob);
            string(&mut raw, NAMESPACE.as_bytes());
            string(&mut raw, b"");
            string(&mut raw, b"sha512");
            string(&mut raw, &sig);
            (b, sshsig::armor(&raw))
        })
        .collect();
    (line, inputs)
}

fn main() {
    // The vectors claim another key_id than the bench signer: keep the output clean.
    felhom_agent::base::log::set_level(felhom_agent::base::log::Level::Error);
    println!(
        "{:<12} {:>14} {:>14} {:>7}",
        "key", "pipeline/s", "raw verify/s", "ratio"
    );
    let mut ed25519_ratio = None;
    let cases: [(&str, usize, Make); 8] = [
        ("ed25519", 2000, in_process),
        ("ecdsa-p256", 500, in_process),
        ("ecdsa-p384", 200, in_process),
        ("ecdsa-p521", 100, in_process),
        ("rsa-2048", 300, by_ssh_keygen),
        ("rsa-3072", 150, by_ssh_keygen),
        ("sk-ed25519", 2000, |_, n| sk_ed25519(n)),
        ("sk-ecdsa", 500, |_, n| sk_ecdsa(n)),
    ];
    for (name, n, make) in cases {
        let (line, inputs) = make(name, n);
        let public = PublicKey::from_openssh(&line).unwrap();
        let parsed: Vec<_> = inputs
            .iter()
            .map(|(_, s)| sshsig::parse(s, NAMESPACE).unwrap())
            .collect();
        let signer = Signer::from_authorized_key("bench", Role::Operational, &line).unwrap();
        // One verifier per key type; each of the three timed runs needs fresh nonces
        // (and, for sk keys, counters), so each run gets its own verifier, built
        // outside the timed loop.
        let verifiers: Vec<Verifier> = (0..3)
            .map(|_| {
                Verifier::new(
                    vec![signer.clone()],
                    "pve-a",
                    Policy::default(),
                    Arc::new(ManualClock::new(NOW)),
                    Arc::new(MemoryNonceStore::new()),
                )
            })
            .collect();
        let mut runs = verifiers.iter();
        let pipeline = time_per_op(
            || {
                let v = runs.next().unwrap();
                for (b, s) in &inputs {
                    std::hint::black_box(v.verify(b, s).unwrap());
                }
            },
            n,
        );
        let raw = time_per_op(
            || {
                for ((b, _), s) in inputs.iter().zip(&parsed) {
                    public.verify(NAMESPACE, b, s).unwrap();
                    std::hint::black_box(());
                }
            },
            n,
        );
        let ratio = pipeline.as_secs_f64() / raw.as_secs_f64();
        if name == "ed25519" {
            ed25519_ratio = Some(ratio);
        }
        println!(
            "{name:<12} {:>14.0} {:>14.0} {:>6.2}x",
            1.0 / pipeline.as_secs_f64(),
            1.0 / raw.as_secs_f64(),
            ratio
        );
    }
    if let Some(r) = ed25519_ratio {
        let verdict = if r <= GOAL { "met" } else { "NOT met" };
        println!("ed25519 pipeline/raw = {r:.2}x (goal <= {GOAL:.1}x: {verdict})");
    }
}

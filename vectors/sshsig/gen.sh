#!/usr/bin/env bash
# Mints the SSHSIG test vectors with the real `ssh-keygen -Y sign` (OpenSSH 9.x) and
# derives the negative vectors from them. Test-only keys: never trust them.
#
#   keys/    private + public keys, one per supported key type (+ rejected ones)
#   blobs/   op blobs, exact bytes as signed (no trailing newline)
#   sigs/    BLOB.KEY.sig — ssh-keygen output, namespace felhom-op-v1 unless named
#   neg/     armor/framing vectors named for what they break (derived below)
#   ok/      armor variants that must still verify (CRLF, other widths, whitespace)
#
# Times are fixed and far from now: tests use a ManualClock at 2030-01-01T00:30:00Z.
# Re-running replaces every blob and signature; keys are made once and kept (configs and
# tests pin them), so delete keys/ to mint new ones. The tests read whatever is committed.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf blobs sigs neg ok
mkdir -p keys blobs sigs neg ok

NS=felhom-op-v1
VALID_NONCE=6f1c0e5a9b3d47e28c1f0a9d3b5e7c21
# The config digest of guest 105 as the operator saw it (any 40 hex digits will do here).
DIGEST=9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1

blob() { # name host nonce not_before expires_at [extra]
  printf '{"op":"guest_destroy","host_id":"%s","guest_id":"105","guest_digest":"%s","params":{"purge":"1"},"key_id":"ops-2026","nonce":"%s","not_before":"%s","expires_at":"%s"%s}' \
    "$2" "$DIGEST" "$3" "$4" "$5" "${6:-}" > "blobs/$1.json"
}
blob op-valid          pve-a "$VALID_NONCE" 2030-01-01T00:00:00Z 2030-01-01T01:00:00Z
blob op-base64-nonce   pve-a "q83vASNFZ4mrze8BI0VniQ==" 2030-01-01T00:00:00Z 2030-01-01T01:00:00Z
blob op-wrong-host     pve-b "$VALID_NONCE" 2030-01-01T00:00:00Z 2030-01-01T01:00:00Z
blob op-expired        pve-a "$VALID_NONCE" 2020-01-01T00:00:00Z 2020-01-01T01:00:00Z
blob op-not-yet-valid  pve-a "$VALID_NONCE" 2040-01-01T00:00:00Z 2040-01-01T01:00:00Z
blob op-long-window    pve-a "$VALID_NONCE" 2030-01-01T00:00:00Z 2030-01-02T00:00:01Z
blob op-short-nonce    pve-a "0123456789abcdef" 2030-01-01T00:00:00Z 2030-01-01T01:00:00Z
blob op-unknown-field  pve-a "$VALID_NONCE" 2030-01-01T00:00:00Z 2030-01-01T01:00:00Z ',"extra":"x"'
printf 'this is not JSON' > blobs/op-not-json.json

key() { [ -f "keys/$1" ] || ssh-keygen -q -t "$2" ${3:+-b "$3"} -N '' -C "felhom test $1" -f "keys/$1"; }
key ed25519 ed25519
key ecdsa-p256 ecdsa 256
key ecdsa-p384 ecdsa 384
key ecdsa-p521 ecdsa 521
key rsa-2048 rsa 2048
key rsa-3072 rsa 3072
key rsa-1024 rsa 1024
key other-ed25519 ed25519
key ca-ed25519 ed25519
if ! key dsa dsa 2>/dev/null; then echo "ssh-keygen has no DSA: skipping dsa vectors" >&2; fi
# A checkout does not keep 0600, and ssh-keygen refuses a private key others can read.
for k in keys/*; do case $k in *.pub) ;; *) chmod 600 "$k" ;; esac; done

sign() { # blob key out [extra ssh-keygen args...]
  local b=$1 k=$2 out=$3; shift 3
  ssh-keygen -q -Y sign -n "${NS_OVERRIDE:-$NS}" -f "keys/$k" "$@" < "blobs/$b.json" > "sigs/$out"
}
for k in ed25519 ecdsa-p256 ecdsa-p384 ecdsa-p521 rsa-2048 rsa-3072 rsa-1024 other-ed25519; do
  sign op-valid "$k" "op-valid.$k.sig"
done
[ -f keys/dsa ] && sign op-valid dsa op-valid.dsa.sig
sign op-valid rsa-2048 op-valid.rsa-2048-hashalg-sha256.sig -O hashalg=sha256
sign op-valid ecdsa-p256 op-valid.ecdsa-p256-hashalg-sha256.sig -O hashalg=sha256
NS_OVERRIDE=felhom-op-v2 sign op-valid ed25519 op-valid.ed25519.wrong-namespace.sig
NS_OVERRIDE=file sign op-valid ed25519 op-valid.ed25519.namespace-file.sig
for b in op-base64-nonce op-wrong-host op-expired op-not-yet-valid op-long-window \
         op-short-nonce op-unknown-field op-not-json; do
  sign "$b" ed25519 "$b.ed25519.sig"
done

# A certificate for the ed25519 key, to splice into a signature (ssh-key cannot verify
# certificate signatures; the verifier must refuse them before crypto).
cp keys/ed25519.pub keys/cert-subject.pub
ssh-keygen -q -s keys/ca-ed25519 -I felhom-test -n ops keys/cert-subject.pub

# RSA private key in PEM for openssl (used to mint an ssh-rsa SHA-1 signature).
cp keys/rsa-2048 keys/rsa-2048.pem
ssh-keygen -q -p -m PEM -N '' -P '' -f keys/rsa-2048.pem >/dev/null

python3 - "$NS" <<'EOF'
import base64, hashlib, struct, subprocess, sys
ns = sys.argv[1].encode()

def s(b): return struct.pack(">I", len(b)) + b
def armor(blob, width=70, eol="\n"):
    b = base64.b64encode(blob).decode()
    lines = [b[i:i + width] for i in range(0, len(b), width)] if width else [b]
    return eol.join(["-----BEGIN SSH SIGNATURE-----"] + lines + ["-----END SSH SIGNATURE-----"]) + eol
def dearmor(text):
    body = text.strip().splitlines()[1:-1]
    return base64.b64decode("".join(body))
def fields(blob):
    # magic | u32 version | string key | string ns | string reserved | string hash | string sig
    assert blob[:6] == b"SSHSIG"
    pos, out = 10, []
    for _ in range(5):
        n = struct.unpack(">I", blob[pos:pos + 4])[0]
        out.append(blob[pos + 4:pos + 4 + n]); pos += 4 + n
    assert pos == len(blob)
    return struct.unpack(">I", blob[6:10])[0], out
def build(version, key, nsv, reserved, hashalg, sig, magic=b"SSHSIG"):
    return magic + struct.pack(">I", version) + s(key) + s(nsv) + s(reserved) + s(hashalg) + s(sig)
def write(path, text, mode="w"):
    with open(path, mode, newline="") as f: f.write(text)

good_text = open("sigs/op-valid.ed25519.sig").read()
good = dearmor(good_text)
ver, (key, nsv, res, h, sig) = fields(good)
assert ver == 1 and nsv == ns and res == b"" and h == b"sha512"

# Armor variants that must verify.
write("ok/crlf.sig", armor(good, 70, "\r\n"))
write("ok/wrap64.sig", armor(good, 64))
write("ok/wrap76.sig", armor(good, 76))
write("ok/one-line.sig", armor(good, 0))
write("ok/surrounding-whitespace.sig", "\n\n  \t" + armor(good) + "\n \n")
write("ok/no-final-newline.sig", armor(good).rstrip("\n"))

# Armor that must be refused.
write("neg/garbage-armor.sig", "-----BEGIN SSH SIGNATURE-----\n!!!! not base64 !!!!\n-----END SSH SIGNATURE-----\n")
write("neg/empty.sig", "")
write("neg/text-after-end.sig", good_text + "this line is after END\n")
write("neg/text-before-begin.sig", "hello\n" + good_text)
write("neg/two-blocks.sig", good_text + good_text)
write("neg/missing-end.sig", good_text.replace("-----END SSH SIGNATURE-----\n", ""))
write("neg/wrong-label.sig", good_text.replace("SSH SIGNATURE", "PGP SIGNATURE"))
write("neg/bad-padding.sig", armor(good).replace("-----END", "=\n-----END"))
a = armor(good).split("\n"); a[1] += " "
write("neg/space-inside-base64.sig", "\n".join(a))
write("neg/oversize.sig", armor(good) + " " * 17000)
write("neg/webauthn.sig", open("../openssh-sshsig/ecdsa_sk_webauthn.sig").read())

# Blob fields that must be refused.
write("neg/version-0.sig", armor(build(0, key, nsv, res, h, sig)))
write("neg/version-2.sig", armor(build(2, key, nsv, res, h, sig)))
write("neg/reserved-nonempty.sig", armor(build(1, key, nsv, b"x", h, sig)))
write("neg/bad-magic.sig", armor(build(1, key, nsv, res, h, sig, magic=b"SSHSIX")))
write("neg/hash-sha384.sig", armor(build(1, key, nsv, res, b"sha384", sig)))
write("neg/empty-namespace.sig", armor(build(1, key, b"", res, h, sig)))
write("neg/truncated.sig", armor(good[:-10]))
write("neg/trailing-data.sig", armor(good + b"\0\0\0\0"))
flipped = bytearray(sig); flipped[-1] ^= 1
write("neg/tampered-signature.sig", armor(build(1, key, nsv, res, h, bytes(flipped))))
# Signature algorithm that does not match the key: the RSA key with the ed25519 signature.
rsa_ver, (rkey, _, _, _, _) = fields(dearmor(open("sigs/op-valid.rsa-2048.sig").read()))
write("neg/algorithm-mismatch.sig", armor(build(1, rkey, nsv, res, h, sig)))
cert = base64.b64decode(open("keys/cert-subject-cert.pub").read().split()[1])
write("neg/certificate-key.sig", armor(build(1, cert, nsv, res, h, sig)))

# ssh-rsa (SHA-1) over the valid blob: OpenSSH never emits it for SSHSIG; craft it.
msg = open("blobs/op-valid.json", "rb").read()
signed = b"SSHSIG" + s(ns) + s(b"") + s(b"sha512") + s(hashlib.sha512(msg).digest())
raw = subprocess.run(["openssl", "dgst", "-sha1", "-sign", "keys/rsa-2048.pem"],
                     input=signed, capture_output=True, check=True).stdout
write("neg/ssh-rsa-sha1.sig", armor(build(1, rkey, ns, b"", b"sha512", s(b"ssh-rsa") + s(raw))))
EOF
rm -f keys/rsa-2048.pem keys/cert-subject keys/cert-subject.pub
echo "vectors written"

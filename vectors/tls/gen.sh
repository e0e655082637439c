#!/usr/bin/env bash
# Mints the TLS material the simulators serve and the tests trust. Run from this
# directory; it overwrites every file it makes. Test-only keys: never trust them.
#   ca.crt/ca.key               a test CA (EC P-256)
#   ca-leaf.crt/ca-leaf.key     a server cert signed by that CA (localhost, 127.0.0.1)
#   pve-self.crt/pve-self.key   a self-signed RSA-2048 leaf, the shape a Proxmox host serves
#   other-self.crt/other-self.key  a second self-signed leaf: "the certificate changed under a pin"
#   fingerprints.txt            `openssl x509 -fingerprint -sha256` of each certificate
set -euo pipefail
days=36500
san="subjectAltName=DNS:localhost,IP:127.0.0.1"

openssl ecparam -name prime256v1 -genkey -noout -out ca.key.sec1
openssl pkcs8 -topk8 -nocrypt -in ca.key.sec1 -out ca.key && rm ca.key.sec1
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=felhom test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

openssl ecparam -name prime256v1 -genkey -noout -out ca-leaf.key.sec1
openssl pkcs8 -topk8 -nocrypt -in ca-leaf.key.sec1 -out ca-leaf.key && rm ca-leaf.key.sec1
openssl req -new -key ca-leaf.key -subj "/CN=localhost" -out ca-leaf.csr
openssl x509 -req -in ca-leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
  -extfile <(printf '%s\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san") \
  -out ca-leaf.crt
rm -f ca-leaf.csr ca.srl

for name in pve-self other-self; do
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$name.key" -sha256 -days "$days" \
    -subj "/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN=$name" \
    -addext "$san" -addext "basicConstraints=critical,CA:FALSE" \
    -addext "extendedKeyUsage=serverAuth" -out "$name.crt"
done

: > fingerprints.txt
for c in ca ca-leaf pve-self other-self; do
  printf '%s.crt %s\n' "$c" "$(openssl x509 -in "$c.crt" -noout -fingerprint -sha256 | cut -d= -f2)" >> fingerprints.txt
done
cat fingerprints.txt

#!/usr/bin/env python3
"""The shipped dependency tree of felhom-agent, from `cargo metadata` and Cargo.lock.

    scripts/sbom.py [--out FILE]      a CycloneDX 1.5 SBOM (JSON) of the shipped tree
    scripts/sbom.py --copyright       the Debian copyright file (DEP-5), naming each crate
    scripts/sbom.py --list            one "name version" line per crate, sorted

"The shipped tree" is what `cargo tree -e normal -p felhom-agent --target
x86_64-unknown-linux-musl` shows (scripts/budgets.sh checks the same tree against
supply-chain/allowed-crates.txt): normal dependencies only, for the musl target. Proc
macros are in it because they run in our build; the SBOM marks them scope "excluded"
(no code of theirs is in the binary). Build scripts' dependencies are not.

Reproducible: no wall clock (the timestamp is SOURCE_DATE_EPOCH), components and
dependencies sorted, the serial number derived from the document's own content. Needs
only python3 (3.11+, for tomllib) and cargo; no network beyond what `cargo metadata
--locked` needs on a machine that has fetched the dependencies.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "x86_64-unknown-linux-musl"
PACKAGE = "felhom-agent"


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1",
         "--filter-platform", TARGET, "--manifest-path", str(ROOT / "Cargo.toml")],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def lock_checksums():
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    return {(p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])}


def shipped_tree(meta):
    """(root package, {id: package}, {id: [dependency ids]}) over normal edges only."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p for p in meta["packages"]
                if p["name"] == PACKAGE and p["source"] is None)
    seen, edges, stack = set(), {}, [root["id"]]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        deps = []
        for d in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in d["dep_kinds"]):
                deps.append(d["pkg"])
                stack.append(d["pkg"])
        edges[pid] = sorted(set(deps))
    return root, {i: packages[i] for i in seen}, edges


def purl(p):
    return f"pkg:cargo/{p['name']}@{p['version']}"


def is_proc_macro(p):
    return any("proc-macro" in t["kind"] for t in p["targets"])


def component(p, checksums, kind):
    c = {"type": kind, "bom-ref": purl(p), "name": p["name"], "version": p["version"],
         "purl": purl(p)}
    if p.get("description"):
        c["description"] = " ".join(p["description"].split())
    if p.get("license"):
        c["licenses"] = [{"expression": p["license"]}]
    elif p.get("license_file"):
        c["licenses"] = [{"license": {"name": "see the crate's " + p["license_file"]}}]
    sha = checksums.get((p["name"], p["version"]))
    if sha:
        c["hashes"] = [{"alg": "SHA-256", "content": sha}]
    if p.get("repository"):
        c["externalReferences"] = [{"type": "vcs", "url": p["repository"]}]
    return c


def sbom(meta):
    root, pkgs, edges = shipped_tree(meta)
    checksums = lock_checksums()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    components = []
    for pid, p in sorted(pkgs.items(), key=lambda kv: (kv[1]["name"], kv[1]["version"])):
        if pid == root["id"]:
            continue
        c = component(p, checksums, "library")
        if is_proc_macro(p):
            c["scope"] = "excluded"
            c["properties"] = [{"name": "felhom:cargo:proc-macro",
                                "value": "runs in the build; no code of it in the binary"}]
        components.append(c)
    deps = [{"ref": purl(pkgs[pid]), "dependsOn": [purl(pkgs[d]) for d in ds]}
            for pid, ds in edges.items()]
    deps.sort(key=lambda d: d["ref"])
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": stamp,
            "tools": {"components": [{"type": "application", "name": "scripts/sbom.py",
                                      "description": "felhom-agent's SBOM from cargo metadata"}]},
            "component": {**component(root, checksums, "application"),
                          "properties": [{"name": "felhom:target", "value": TARGET}]},
        },
        "components": components,
        "dependencies": deps,
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    serial = uuid.UUID(bytes=hashlib.sha256(body).digest()[:16], version=4)
    doc = {"bomFormat": doc.pop("bomFormat"), "specVersion": doc.pop("specVersion"),
           "serialNumber": f"urn:uuid:{serial}", **doc}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def copyright_file(meta):
    root, pkgs, _ = shipped_tree(meta)
    year = datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                                  timezone.utc).year
    crates = sorted((p for pid, p in pkgs.items() if pid != root["id"]),
                    key=lambda p: (p["name"], p["version"]))
    lines = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        "Upstream-Name: felhom-agent",
        "Comment: /usr/sbin/felhom-agent is one static binary. Besides felhom-agent's",
        " own code it holds the Rust crates below (from Cargo.lock; proc macros run",
        " only in the build), each under the license its crate declares, and the Rust",
        " standard library and musl libc (MIT). The binary carries the exact list",
        " itself (cargo auditable, section .dep-v0); the release's CycloneDX SBOM",
        " lists it too.",
        " .",
    ]
    for p in crates:
        lic = p.get("license") or "see the crate"
        macro = " (proc macro)" if is_proc_macro(p) else ""
        lines.append(f" {p['name']} {p['version']}: {lic}{macro}")
    lines += [
        "",
        "Files: *",
        f"Copyright: {year} The felhom-agent authors",
        "License: Apache-2.0",
        "",
        "License: Apache-2.0",
        " Licensed under the Apache License, Version 2.0 (the \"License\"); you may not",
        " use this file except in compliance with the License.",
        " .",
        " On Debian systems, the full text of the Apache License, Version 2.0 is in",
        " /usr/share/common-licenses/Apache-2.0.",
    ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--copyright", action="store_true")
    mode.add_argument("--list", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    meta = metadata()
    if args.copyright:
        text = copyright_file(meta)
    elif args.list:
        root, pkgs, _ = shipped_tree(meta)
        text = "".join(sorted(f"{p['name']} {p['version']}\n"
                              for pid, p in pkgs.items() if pid != root["id"]))
    else:
        text = sbom(meta)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()

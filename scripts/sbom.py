#!/usr/bin/env python3
"""The shipped dependency tree of felhom-agent, from `cargo metadata` and Cargo.lock.

    scripts/sbom.py [--binary BIN] [--out FILE]
                                      a CycloneDX 1.5 SBOM (JSON) of the shipped tree;
                                      with BIN, its SHA-256 as the application's hash
    scripts/sbom.py --copyright       the Debian copyright file (DEP-5), naming each crate
    scripts/sbom.py --list            one "name version" line per crate, sorted
    scripts/sbom.py --embedded BIN    the dependency list cargo auditable embedded in BIN
                                      (section .dep-v0), one "name version [build]" line each;
                                      needs neither cargo nor the sources
    scripts/sbom.py --check-binary BIN  exit 1 unless BIN's embedded list is this tree:
                                      each crate whose code ships listed as runtime,
                                      each crate of the tree listed, nothing else

"The shipped tree" is what `cargo tree -e normal -p felhom-agent --target
x86_64-unknown-linux-musl` shows (scripts/budgets.sh checks the same tree against
supply-chain/allowed-crates.txt): normal dependencies only, for the musl target. Proc
macros and what only they use are in it because they run in our build; the SBOM marks
them scope "excluded" (no code of theirs is in the binary). Build scripts' dependencies
are not in it.

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
import struct
import tomllib
import uuid
import zlib
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


def ships_code(root, pkgs, edges):
    """The ids whose code is in the binary: reached from the root without passing
    through a proc macro (a proc macro and what only it uses run in the build)."""
    seen, stack = set(), [root["id"]]
    while stack:
        pid = stack.pop()
        if pid in seen or is_proc_macro(pkgs[pid]):
            continue
        seen.add(pid)
        stack.extend(edges[pid])
    return seen


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


def sbom(meta, binary=None):
    root, pkgs, edges = shipped_tree(meta)
    ships = ships_code(root, pkgs, edges)
    checksums = lock_checksums()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    components = []
    for pid, p in sorted(pkgs.items(), key=lambda kv: (kv[1]["name"], kv[1]["version"])):
        if pid == root["id"]:
            continue
        c = component(p, checksums, "library")
        if pid not in ships:
            c["scope"] = "excluded"
            why = "a proc macro" if is_proc_macro(p) else "used only by proc macros"
            c["properties"] = [{"name": "felhom:cargo:build-only",
                                "value": f"{why}: runs in the build, no code of it in the binary"}]
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
    if binary:
        # The release binary this SBOM describes, by its SHA-256.
        digest = hashlib.sha256(Path(binary).read_bytes()).hexdigest()
        doc["metadata"]["component"]["hashes"] = [{"alg": "SHA-256", "content": digest}]
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


def elf_section(path, name):
    """The bytes of one section of a 64-bit little-endian ELF file, or None."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)

    strtab = header(shstrndx)
    names = data[strtab[4]:strtab[4] + strtab[5]]
    for i in range(shnum):
        h = header(i)
        end = names.index(b"\0", h[0])
        if names[h[0]:end].decode() == name:
            return data[h[4]:h[4] + h[5]]
    return None


def embedded(path):
    """cargo auditable's list: [(name, version, kind)], kind "runtime" or "build"."""
    raw = elf_section(path, ".dep-v0")
    if raw is None:
        raise SystemExit(f"{path}: no .dep-v0 section: not built with cargo auditable")
    doc = json.loads(zlib.decompress(raw, bufsize=1 << 20))
    return [(p["name"], p["version"], p.get("kind", "runtime")) for p in doc["packages"]]


def check_binary(meta, path):
    """Every crate whose code ships is listed in the binary as runtime, every crate of
    the tree is listed in some kind, and nothing is listed that is not in the tree.
    (cargo auditable files some proc macros and their helpers as runtime, some as
    build: those are not compared by kind.)"""
    root, pkgs, edges = shipped_tree(meta)
    ships = {(pkgs[i]["name"], pkgs[i]["version"]) for i in ships_code(root, pkgs, edges)}
    tree = {(p["name"], p["version"]) for p in pkgs.values()}
    listed = embedded(path)
    runtime = {(n, v) for n, v, k in listed if k == "runtime"}
    problems = [f"ships code but is not listed as runtime: {n} {v}"
                for n, v in sorted(ships - runtime)]
    problems += [f"in the tree, missing from the binary's list: {n} {v}"
                 for n, v in sorted(tree - {(n, v) for n, v, _ in listed})]
    problems += [f"listed as runtime, not in the shipped tree: {n} {v}"
                 for n, v in sorted(runtime - tree)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {path} lists the shipped tree: {len(ships)} crates with code in the "
          f"binary, {len(listed)} entries in all")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--copyright", action="store_true")
    mode.add_argument("--list", action="store_true")
    mode.add_argument("--embedded", metavar="BIN")
    mode.add_argument("--check-binary", metavar="BIN")
    ap.add_argument("--out")
    ap.add_argument("--binary", metavar="BIN",
                    help="the release binary the SBOM describes: its SHA-256 goes in")
    args = ap.parse_args()
    if args.embedded:
        for n, v, k in sorted(embedded(args.embedded)):
            print(f"{n} {v}" + (" build" if k == "build" else ""))
        return 0
    meta = metadata()
    if args.check_binary:
        return check_binary(meta, args.check_binary)
    if args.copyright:
        text = copyright_file(meta)
    elif args.list:
        root, pkgs, _ = shipped_tree(meta)
        text = "".join(sorted(f"{p['name']} {p['version']}\n"
                              for pid, p in pkgs.items() if pid != root["id"]))
    else:
        text = sbom(meta, args.binary)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

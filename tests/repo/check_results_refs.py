#!/usr/bin/env python3
"""bench/results/ keeps only the raw outputs that the docs quote.

Fails when
  - a file under bench/results/ is quoted by nothing, or
  - a reference to bench/results/ (a relative link, a directory link, a path in prose or in a code
    block) names something that does not exist.

What quotes what, starting from every kept file outside bench/results/ (*.md, *.sh, *.py and the
scripts in scripts/ and dev/):
  - any text `bench/results/PATH` (so `../bench/results/PATH` links too) quotes PATH, an output
    prefix PATH quotes PATH.* (`-o bench/results/run/report` writes report.csv, report.json);
  - a directory quotes its README.md when it has one (the README is the directory's manifest and
    is read in turn), otherwise every file below it;
  - a README.md under bench/results/ quotes the names it gives relative to its own folder
    (`name.log`, `sub/`, globs `g7_*` and braces `calib_{first,answers}.log`); its markdown links
    must exist.
So a run's folder lists what it keeps in its README, and older runs live in git history.

Usage: check_results_refs.py REPO_ROOT      (--self-test: check the checker on a scratch tree)
"""
import fnmatch
import os
import re
import sys
import tempfile

RESULTS = os.path.join("bench", "results")
SKIP_DIRS = {".git", "node_modules", "__pycache__"}
SOURCE_EXT = (".md", ".sh", ".py", ".cmake", ".txt")
PATH_RE = re.compile(r"bench/results(?:/[A-Za-z0-9_.{},*?+@=-]+)*/?")
TOKEN_RE = re.compile(r"[A-Za-z0-9_.{},*?+@=/-]+")
LINK_RE = re.compile(r"\]\(([^)\s#]+)")
TRAILING = ".,;:"


def expand_braces(s):
    m = re.search(r"\{([^{}]*)\}", s)
    if not m or "," not in m.group(1):
        return [s]
    out = []
    for alt in m.group(1).split(","):
        out += expand_braces(s[:m.start()] + alt + s[m.end():])
    return out


class Tree:
    def __init__(self, root):
        self.root = root
        self.files = set()  # paths relative to root, '/'-separated, under bench/results
        for d, dirs, names in os.walk(os.path.join(root, RESULTS)):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
            for n in names:
                self.files.add(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/"))
        self.dirs = {RESULTS.replace(os.sep, "/")}
        for f in self.files:
            parts = f.split("/")
            for i in range(3, len(parts)):
                self.dirs.add("/".join(parts[:i]))

    def resolve(self, path):
        """Files a path quotes directly (a directory: its README.md or all its files), or None."""
        path = os.path.normpath(path).replace(os.sep, "/")
        if any(c in path for c in "*?"):
            hits = {f for f in self.files if fnmatch.fnmatchcase(f, path)}
            hits |= {x for d in self.dirs if fnmatch.fnmatchcase(d, path) for x in self.resolve(d)}
            return hits or None
        if path in self.files:
            return {path}
        if path in self.dirs:
            readme = path + "/README.md"
            return {readme} if readme in self.files else {f for f in self.files if f.startswith(path + "/")}
        # An output prefix (`-o DIR/report` writes report.csv, report.json, ...).
        return {f for f in self.files if f.startswith(path + ".") and "/" not in f[len(path):]} or None


def sources(root):
    for d, dirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith(".")
                         and not x.startswith("build") and "venv" not in x
                         and os.path.join(rel, x) != RESULTS and not (rel == "." and x == RESULTS))
        if rel == "bench":
            dirs[:] = [x for x in dirs if x != "results"]
        script_dir = rel.split(os.sep)[0] in ("scripts", "dev")
        for n in sorted(names):
            if os.path.abspath(os.path.join(d, n)) == os.path.abspath(__file__):
                continue  # its own docstring and self-test name made-up paths
            if n.endswith(SOURCE_EXT) or script_dir:
                yield os.path.join(d, n)


def check(root):
    tree = Tree(root)
    quoted, errors, queue = set(), [], []

    def quote(found):
        for f in found - quoted:
            quoted.add(f)
            if f.endswith("README.md"):
                queue.append(f)

    for src in sources(root):
        try:
            text = open(src, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        rel = os.path.relpath(src, root)
        for m in PATH_RE.finditer(text):
            ref, hit = m.group(0).rstrip(TRAILING), set()
            for p in expand_braces(ref):
                found = tree.resolve(p)
                if found is None:
                    errors.append(f"{rel}: {p} does not exist")
                else:
                    hit |= found
            quote(hit)

    while queue:  # READMEs under bench/results: names relative to their folder
        readme = queue.pop()
        base = os.path.dirname(readme)
        text = open(os.path.join(root, readme), encoding="utf-8").read()
        for link in LINK_RE.findall(text):
            if "://" in link:
                continue
            target = os.path.normpath(os.path.join(base, link)).replace(os.sep, "/")
            if target.startswith(RESULTS + "/") or target == RESULTS:
                found = tree.resolve(target)
            else:
                found = set() if os.path.exists(os.path.join(root, target)) else None
            if found is None:
                errors.append(f"{readme}: link {link} does not exist")
            else:
                quote(found)
        for tok in TOKEN_RE.findall(text):
            for t in {tok, tok.rstrip(TRAILING)}:
                for p in expand_braces(t):
                    if p and not p.startswith(("/", "..")):
                        quote(tree.resolve(base + "/" + p) or set())

    unquoted = sorted(tree.files - quoted)
    for f in unquoted:
        errors.append(f"{f}: quoted by no doc (git rm it, or name it in its folder's README.md)")
    return errors


def self_test():
    with tempfile.TemporaryDirectory() as root:
        def write(path, text=""):
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            open(os.path.join(root, path), "w").write(text)
        write("README.md", "see [run](bench/results/run1/) and bench/results/run2/a.{txt,json}\n"
                           "and [gone](bench/results/run2/missing.txt), [old run](bench/results/run0/)\n"
                           "```\nduo eval ruler -o bench/results/run2/rep\n```\n")
        write("bench/results/run1/README.md", "- `kept.log`, `g_*`, `sub/`; [x](nothere.txt)\n")
        for f in ["kept.log", "g_1.csv", "g_2.csv", "sub/a.json", "sub/b.json", "stale.log"]:
            write("bench/results/run1/" + f)
        for f in ["a.txt", "a.json", "old.txt", "rep.csv", "rep.json"]:
            write("bench/results/run2/" + f)
        errors = check(root)
    want = ["README.md: bench/results/run0/ does not exist",
            "README.md: bench/results/run2/missing.txt does not exist",
            "bench/results/run1/README.md: link nothere.txt does not exist",
            "bench/results/run1/stale.log: quoted by no doc (git rm it, or name it in its folder's README.md)",
            "bench/results/run2/old.txt: quoted by no doc (git rm it, or name it in its folder's README.md)"]
    if sorted(errors) != want:
        print("self-test failed:\n  got  " + "\n       ".join(sorted(errors)) + "\n  want " + "\n       ".join(want))
        return 1
    print("self-test passed")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    errors = check(sys.argv[1])
    for e in errors:
        print(e)
    print(f"{len(errors)} problem(s) in bench/results references" if errors else "bench/results: every file quoted, every reference exists")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

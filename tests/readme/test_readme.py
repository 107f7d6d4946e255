#!/usr/bin/env python3
"""test_readme - runs the command lines of README.md as written, on a fresh copy (issue 16).

What "a fresh clone" gets: the tracked and untracked-but-not-ignored files of the source
tree are copied into a temporary folder (ignored build trees, out/ and .cache/ stay behind),
with build/ a link to the build under test (so the ASan run runs its own binaries), ../shared
a link to the golden data's folder when there is one, and SD3_HOME a fresh folder (the
embedded default model is written on first use, as on a new machine). Each command runs
through /bin/sh in the copy's root, in README order: the cluster lines bring a cluster up,
use it and bring it down in the order written.

A command line is a line of a code block (indented by 4 spaces, or fenced) whose first word
is `sh`, `curl` or starts with `build/`; a line ending in a backslash continues on the next.
Not run, each saying why: lines naming /models/ (real weights); `sh deploy/check.sh` (it
runs this test); `sh deploy/quickstart.sh` under a sanitizer build (it builds its own plain
build, in a copy of its own: the plain run of this test covers it); lines reading ../shared
when ../shared/testdata is absent.

Checked: every command exits 0 (within its time limit); `generate` writes its -o file, a PNG
that decodes (every chunk's CRC, the inflated scanlines' length and filter bytes) at the
size asked for, or, without --size, at the embedded tiny model's default 208x208 (the
largest square its position table covers), with the `parameters` text naming that size;
`mkmodel` and `convert` write a non-empty -o path; `status` names the pipelines; `plan` and
`bench` print a result; `eval` ends with "0 failed"; the quickstart writes out/quickstart.png
(128x128). A cluster that a line brought up is brought down at the end even when a later
line failed.

Environment: SD3_SOURCE_DIR, SD3_BINARY_DIR (set by ctest), SD3_SANITIZE (ON/OFF),
SD3_TESTDATA (optional). Exit 0 pass, 1 fail."""
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

TINY_DEFAULT = (208, 208)  # the embedded model's position table: 13 entries of 16 px
RUNNABLE = re.compile(r"^(sh|curl)\s|^build/")


def commands(readme):
    """The README's command lines, in order, as written (continuations joined by "\\\n")."""
    out, fenced, in_code, prev_blank, pending = [], False, False, True, None
    for raw in open(readme, encoding="utf-8").read().split("\n"):
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            code = raw
        elif raw.startswith("    ") and (in_code or prev_blank):
            code = raw[4:]  # an indented code block starts after a blank line
        else:
            code = None
        in_code, prev_blank = code is not None, not raw.strip()
        if pending is not None:
            if code is not None:
                pending += "\n" + code
                if not code.rstrip().endswith("\\"):
                    out.append(pending)
                    pending = None
                continue
            out.append(pending)  # a continuation that ran off its block
            pending = None
        if code is None or not code.strip():
            continue
        if not RUNNABLE.match(code.strip()):
            print("readme: not a command line, not run: %s" % code.strip())
        elif code.rstrip().endswith("\\"):
            pending = code
        else:
            out.append(code)
    if pending is not None:
        out.append(pending)
    return out


def png_info(path):
    """(width, height, {text keyword: value}) of a PNG that decodes, or raises ValueError."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, idat, text, ihdr = 8, b"", {}, None
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated chunk at %d" % pos)
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if len(body) != n or zlib.crc32(kind + body) != crc:
            raise ValueError("chunk %r: bad length or CRC" % kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            text[key.decode("latin-1")] = rest.split(b"\0", 3)[-1].decode("utf-8")
        pos += 12 + n
        if kind == b"IEND":
            break
    if ihdr is None:
        raise ValueError("no IHDR")
    w, h, depth, color, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None or interlace != 0:
        raise ValueError("color type %d / interlace %d not expected" % (color, interlace))
    raw = zlib.decompress(idat)
    stride = 1 + (w * channels * depth + 7) // 8
    if len(raw) != stride * h:
        raise ValueError("%d bytes of scanlines, want %d" % (len(raw), stride * h))
    if any(raw[y * stride] > 4 for y in range(h)):
        raise ValueError("a scanline has a filter type > 4")
    return w, h, text


def option(argv, *names):
    for i, a in enumerate(argv[:-1]):
        if a in names:
            return argv[i + 1]
    return None


def check_output(cmd, cwd, stdout):
    """'' when what the command made is right, else what is wrong."""
    try:
        argv = shlex.split(cmd.replace("\\\n", " "), comments=True)
    except ValueError as e:
        return "cannot split the line: %s" % e
    if argv[:2] == ["sh", "deploy/quickstart.sh"]:  # what deploy/quickstart.sh asks for
        argv = ["quickstart", "-o", "out/quickstart.png", "--size", "128x128"]
    verb = argv[1] if len(argv) > 1 and argv[0].startswith("build/") else argv[0]
    out = option(argv, "-o", "--output")
    if verb in ("generate", "quickstart"):
        if not out:
            return "no -o on the line"
        try:
            w, h, text = png_info(os.path.join(cwd, out))
        except (OSError, ValueError, zlib.error) as e:
            return "%s does not decode as a PNG: %s" % (out, e)
        size = option(argv, "--size")
        want = tuple(int(v) for v in size.split("x")) if size else TINY_DEFAULT
        if option(argv, "--init-image") and not size:
            want = (w, h)
        if (w, h) != want:
            return "%s is %dx%d, want %dx%d" % (out, w, h, want[0], want[1])
        if verb == "generate" and "Size: %dx%d" % want not in text.get("parameters", ""):
            return "%s: parameters text %r lacks the size" % (out, text.get("parameters"))
        print("readme:   %s decodes: %dx%d, parameters %r" % (out, w, h,
                                                          text.get("parameters", "")[:60]))
    elif verb in ("mkmodel", "convert"):
        path = os.path.join(cwd, out or "")
        if not out or not os.path.exists(path):
            return "-o %s was not written" % out
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs) if os.path.isdir(path) else os.path.getsize(path)
        if size == 0:
            return "-o %s is empty" % out
    elif verb == "eval" and not re.search(r"\b0 failed", stdout):
        return "the comparison does not end with '0 failed'"
    elif verb == "status" and "pipelines" not in stdout:
        return "the status names no pipelines"
    elif verb in ("plan", "bench") and not stdout.strip():
        return "printed nothing"
    return ""


def tree_files(src):
    """The files a clone would have: tracked + untracked-not-ignored in a git checkout; in a
    tree without git (an unpacked archive), every file but the top-level build folders and
    what .gitignore names at the top."""
    r = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True)
    if r.returncode == 0 and os.path.isdir(os.path.join(src, ".git")):
        return r.stdout.decode().split("\0")
    skip = re.compile(r"^(build[^/]*|out|\.cache|Testing|gpu-carry|\.git)(/|$)|node_modules/")
    files = []
    for d, _, fs in os.walk(src):
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), src)
            if not skip.search(rel) and not re.search(r"\.(png|log)$", rel):
                files.append(rel)
    return files


def fresh_copy(src, dst):
    """The files a clone would have, copied into dst."""
    for rel in tree_files(src):
        if not rel or not os.path.lexists(os.path.join(src, rel)):
            continue  # deleted in the working tree
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel), follow_symlinks=False)
    # The npm client install-deps would fetch (ignored, installed by check.sh beforehand).
    modules = os.path.join(src, "tests/http/node_modules")
    if os.path.isdir(modules):
        os.symlink(modules, os.path.join(dst, "tests/http/node_modules"))


def main():
    src = os.environ.get("SD3_SOURCE_DIR") or os.getcwd()
    bindir = os.environ.get("SD3_BINARY_DIR") or os.path.join(src, "build")
    sanitize = os.environ.get("SD3_SANITIZE", "OFF").upper() in ("ON", "1", "TRUE", "YES")
    lines = commands(os.path.join(src, "README.md"))
    tmp = tempfile.mkdtemp(prefix="sd3-readme-")
    work = os.path.join(tmp, "work")
    clone = os.path.join(work, "sd3d")
    fresh_copy(src, clone)
    os.symlink(os.path.abspath(bindir), os.path.join(clone, "build"))
    shared = None
    if os.environ.get("SD3_TESTDATA") and os.path.isdir(os.environ["SD3_TESTDATA"]):
        shared = os.path.join(work, "shared")
        os.makedirs(shared)
        os.symlink(os.path.abspath(os.environ["SD3_TESTDATA"]), os.path.join(shared, "testdata"))
    elif os.path.isdir(os.path.join(src, "..", "shared", "testdata")):
        shared = os.path.join(work, "shared")
        os.symlink(os.path.abspath(os.path.join(src, "..", "shared")), shared)
    env = dict(os.environ, SD3_HOME=os.path.join(tmp, "home"))
    failures, ran, up = [], 0, []
    print("readme: %d command lines in %s/README.md; running in %s" % (len(lines), src, clone))
    try:
        for cmd in lines:
            one = " ".join(cmd.split())
            why = None
            if "/models/" in cmd:
                why = "needs real weights (/models/)"
            elif re.match(r"sh\s+deploy/check\.sh\b", cmd):
                why = "this test runs inside it"
            elif re.match(r"sh\s+deploy/quickstart\.sh\b", cmd) and sanitize:
                why = "sanitizer build: the plain build's run of this test runs the quickstart"
            elif "../shared" in cmd and not shared:
                why = "golden data not found at %s/../shared/testdata (or $SD3_TESTDATA)" % src
            if why:
                print("readme: skip: %s\n          %s" % (why, one))
                continue
            cwd = clone
            if re.match(r"sh\s+deploy/quickstart\.sh\b", cmd):
                # A copy of its own with no build/: the quickstart configures and builds one.
                cwd = os.path.join(tmp, "quickstart", "sd3d")
                fresh_copy(src, cwd)
            limit = 900 if cwd != clone else 600
            print("readme: run: %s" % one, flush=True)
            t0 = time.monotonic()
            try:
                r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, timeout=limit,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   errors="replace")
                rc, stdout, stderr = r.returncode, r.stdout, r.stderr
            except subprocess.TimeoutExpired as e:
                rc, stdout, stderr = "timeout after %d s" % limit, str(e.stdout), str(e.stderr)
            ran += 1
            m = re.match(r"build/sd3ctl\s+(up|down)\s+(\S+)", cmd)
            if m and m.group(1) == "up" and m.group(2) not in up:
                up.append(m.group(2))  # even a failed up may have started some processes
            elif m and m.group(1) == "down" and rc == 0 and m.group(2) in up:
                up.remove(m.group(2))
            problem = ("exit %s" % rc) if rc != 0 else check_output(cmd, cwd, stdout)
            print("readme:   %s in %.1f s" % ("ok" if not problem else "FAIL: " + problem,
                                              time.monotonic() - t0))
            if problem:
                tail = (stdout[-1500:] + "\n" + stderr[-2500:]).strip()
                print("readme:   its output (tail):\n" + tail)
                failures.append("%s: %s" % (one, problem))
    finally:
        for cluster in up:
            print("readme: cleanup: build/sd3ctl down %s" % cluster)
            subprocess.run(["build/sd3ctl", "down", cluster], cwd=clone, env=env, timeout=120)
    if ran < 5:
        failures.append("only %d command lines ran: did the README's code blocks change form?"
                        % ran)
    for f in failures:
        print("readme: FAILED: %s" % f)
    if failures:
        print("readme: files left in %s" % tmp)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("readme: %d command lines ran and passed" % ran)
    return 0


if __name__ == "__main__":
    sys.exit(main())

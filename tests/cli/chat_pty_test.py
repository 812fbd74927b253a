#!/usr/bin/env python3
"""ctest cli_chat_pty: `duo chat` (and generate's progress) in a pseudo-terminal, as a person uses them.

- Ctrl-C during a reply stops the reply and the chat goes on with the conversation kept;
  Ctrl-C while typing discards the line;
- line editing and history: Left arrow edits the line, Up recalls an earlier one;
- slash commands are handled locally (/help, /stats, /reset), unknown ones are rejected and
  none reaches the model (the context does not grow);
- a trailing backslash and a \"\"\" block make one multi-line message;
- when the context would overflow, the oldest turns are dropped with a notice and the chat
  goes on (also with streaming attention);
- `duo generate` shows pre-fill progress on a terminal and none in a pipe.
Needs SmolLM2 (exit 77, skipped, when it is missing unless DUO_REQUIRE_MODELS is set).
"""
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time

DUO = sys.argv[1]
model = os.path.join(os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.exists(model):
    if os.environ.get("DUO_REQUIRE_MODELS"):
        sys.exit(f"FAIL: model missing: {model}")
    print(f"model not fetched: {model}")
    sys.exit(77)

# Waits for the model's output are multiplied by this: a sanitized build (DUO_SANITIZE, where
# CMake sets it) runs the model about ten times slower: it is 4 there, 1 otherwise.
TIME_SCALE = float(os.environ.get("DUO_TEST_TIME_SCALE", "1"))

UP, LEFT, CTRL_C, CTRL_D = b"\x1b[A", b"\x1b[D", b"\x03", b"\x04"


class Pty:
    """A duo process on a pseudo-terminal; expect() waits for text after what was already matched."""

    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(DUO, [DUO, *args])
        self.buf, self.mark = b"", 0

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child exited
            return None
        self.buf += data
        return bool(data)

    def expect(self, pattern, timeout=60, what=""):
        end = time.time() + timeout * TIME_SCALE
        while True:
            i = self.buf.find(pattern, self.mark)
            if i >= 0:
                start, self.mark = self.mark, i + len(pattern)
                return self.buf[start:i].decode(errors="replace")
            if time.time() > end or self._read(0.1) is None:
                self.fail(f"waited for {pattern!r} {what}")

    def send(self, data):
        os.write(self.fd, data)

    def prompt(self):
        self.expect(b"> ", what="(the prompt)")

    def stats(self):
        """/stats: (tokens in the context, messages in the conversation)."""
        self.send(b"/stats\r")
        self.expect(b"\ncontext ")
        line = self.expect(b"\n")
        m = re.match(r"(\d+) / \d+ tokens, (\d+) messages", line)
        if not m:
            self.fail(f"bad /stats line {line!r}")
        self.prompt()
        return int(m.group(1)), int(m.group(2))

    def finish(self):
        """Ctrl-D ends the chat: exit status 0, the process did not die of a signal.

        A Ctrl-D typed ahead, while the terminal is still in line mode between two prompts, is
        consumed by the line discipline as it would be for a person: Ctrl-D is sent after a
        pause and again every 2 s (at most 5 times)."""
        end = time.time() + 20 * TIME_SCALE
        next_send, sends = time.time() + 0.5, 0
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                    self.fail(f"exit status {status}")
                return
            if time.time() >= next_send and sends < 5:
                self.send(CTRL_D)
                next_send, sends = time.time() + 2, sends + 1
            self._read(0.1)
        self.fail("did not exit after Ctrl-D")

    def fail(self, msg):
        tail = self.buf.decode(errors="replace")[-3000:]
        try:
            os.kill(self.pid, 9)
        except OSError:
            pass
        sys.exit(f"FAIL: {msg}\n--- terminal ---\n{tail}")


common = ["-m", model, "-t", "2", "--temp", "0"]

# 1. Ctrl-C, editing, history, commands, multi-line.
c = Pty("chat", *common, "-n", "300")
c.prompt()
ctx0, msgs0 = c.stats()
c.send(b"/help\r")
c.expect(b"/reset")
c.prompt()
c.send(b"/frobnicate\r")
c.expect(b"unknown command /frobnicate")
c.prompt()
c.send(b"/stast\r")
c.expect(b"unknown command /stast (did you mean /stats?)")
c.prompt()
if c.stats() != (ctx0, msgs0):
    c.fail("a slash command reached the model")

# (At temperature 0 SmolLM2 answers this with a long list: "1. 1", "2. 2", ...)
c.send(b"Count from 1 to 200, separated by commas.\r")
c.expect(b"commas.\r\n", what="(the echo of the line)")
# "2. 2" is the reply's own: a bare "2" can be libedit's echo of the line, drawn a second time
# when the line was typed before the terminal left line mode (the prompt is drawn first).
c.expect(b"2. 2", what="(the reply is under way)")
c.send(CTRL_C)
c.expect(b"[reply stopped; the conversation is kept]", timeout=10)
c.prompt()
ctx1, msgs1 = c.stats()
if msgs1 != msgs0 + 2 or ctx1 <= ctx0:
    c.fail(f"after Ctrl-C: context {ctx1}, messages {msgs1} (before {ctx0}, {msgs0})")

# Ctrl-C while typing discards the line; the chat is still there.
c.send(b"this line is dropped")
time.sleep(0.3)
c.send(CTRL_C)
c.expect(b"(Ctrl-D or /exit quits)", timeout=10)
c.prompt()
if c.stats() != (ctx1, msgs1):
    c.fail("a discarded line changed the conversation")

# Left arrow edits: "/hlp" with "e" typed two places back is "/help".
c.send(b"/hlp" + LEFT + LEFT + b"e\r")
c.expect(b"/system TEXT", what="(the edited line ran /help)")
c.prompt()
# Up twice recalls the line before the last: the history ends with /stats, then the edited /help.
c.send(UP + UP + b"\r")
c.expect(b"\ncontext ", what="(Up Up recalled /stats)")
c.prompt()

# A trailing backslash and a """ block each make one message (two messages: it and the reply).
c.send(b"Say yes \\\r")
c.expect(b"... ")
c.send(b"in one word.\r")
c.expect(b"tok/s, context")
c.prompt()
c.send(b'"""\r')
c.expect(b"... ")
c.send(b"Say no\r")
c.expect(b"... ")
c.send(b"in one word.\r")
c.expect(b"... ")
c.send(b'"""\r')
c.expect(b"tok/s, context")
c.prompt()
if c.stats()[1] != msgs1 + 4:
    c.fail("multi-line input was not one message each")
c.send(b"/reset\r")
c.expect(b"(conversation cleared)")
c.prompt()
if c.stats() != (0, 0):
    c.fail("/reset left a conversation")
c.finish()

# 2. Ctrl-C at any moment leaves the chat alive and answering; nothing is lost or left waiting
# for a key. (The handler only flags and writes to a self-pipe; the key reader polls both.)
c = Pty("chat", *common, "-n", "300", "--chunk", "16")
c.prompt()
ctx0, msgs0 = c.stats()
# While libedit redraws a long pasted line: the interrupt usually lands outside a blocking
# read(), and the kernel drops the rest of the paste; a reader that only reacts to EINTR then
# waits for a key that never comes. Three times: each caught that hang 4 times in 5.
for attempt in range(3):
    start = len(c.buf)
    c.send(b"word " * 600)
    while c.buf.count(b"word", start) < 60:  # the echo is under way
        if c._read(10 * TIME_SCALE) is not True:
            c.fail("no echo of the pasted line")
    c.send(CTRL_C)
    c.expect(b"(Ctrl-D or /exit quits)", timeout=10, what=f"(Ctrl-C while a paste is drawn, try {attempt + 1})")
    c.prompt()
# At the empty prompt.
c.send(CTRL_C)
c.expect(b"(Ctrl-D or /exit quits)", timeout=10, what="(Ctrl-C at the empty prompt)")
c.prompt()
if c.stats() != (ctx0, msgs0):
    c.fail("an interrupted line reached the conversation")
# During a pre-fill of 16-token chunks: the message is not sent, the cache is not kept.
c.send(b"Summarize this: " + b"the cat sat on the mat and looked at the wall. " * 40 + b"\r")
c.expect(b"pre-fill ", what="(the pre-fill progress line)")
c.send(CTRL_C)
c.expect(b"[stopped before the reply began; message not sent]", timeout=10)
c.prompt()
if c.stats() != (ctx0, msgs0):
    c.fail("a message stopped during its pre-fill stayed in the conversation")
# Twice quickly during a reply: one stop, the second Ctrl-C is harmless wherever it lands.
c.send(b"Count from 1 to 200, separated by commas.\r")
c.expect(b"2. 2", what="(the reply is under way)")
c.send(CTRL_C + CTRL_C)
c.expect(b"[reply stopped; the conversation is kept]", timeout=10)
c.prompt()
time.sleep(0.5)
ctx1, msgs1 = c.stats()
if msgs1 != msgs0 + 2 or ctx1 <= ctx0:
    c.fail(f"after Ctrl-C Ctrl-C: context {ctx1}, messages {msgs1} (before {ctx0}, {msgs0})")
# Right after Enter, before the first token: whichever step it lands in (the line, the
# pre-fill, the reply), it is obeyed, never lost with the reply running on to its end.
c.send(b"Count from 1 to 300, separated by commas.\r")
c.expect(b"300, separated by commas.\r\n", what="(the echo of the line)")
c.send(CTRL_C)
end = time.time() + 30 * TIME_SCALE
ends = (b"(Ctrl-D or /exit quits)", b"message not sent]", b"tok/s, context")
while not any(e in c.buf[c.mark:] for e in ends):
    if time.time() > end or c._read(0.1) is None:
        c.fail("no answer to a Ctrl-C right after Enter")
end = min(i + len(e) for e in ends if (i := c.buf.find(e, c.mark)) >= 0)
out, c.mark = c.buf[c.mark:end].decode(errors="replace"), end
if "tok/s, context" in out and "[reply stopped" not in out:
    c.fail(f"Ctrl-C right after Enter was lost: {out[-300:]!r}")
c.prompt()
c.finish()

# 3. Overflow: a small context fills within a few turns; the oldest are dropped with a notice
# and replies keep coming, with full and with streaming attention.
for mode in (["--attention", "full"], ["--attention", "streaming", "--sink", "4", "--recent", "32"]):
    c = Pty("chat", *common, "-n", "40", "-c", "192", *mode)
    c.prompt()
    dropped = False
    for topic in ["cats", "dogs", "birds", "fish", "horses"]:
        c.send(f"Tell me about {topic}.\r".encode())
        out = c.expect(b"tok/s, context", what=f"(reply about {topic}, {mode[1]} attention)")
        dropped |= "oldest turn" in out
        c.prompt()
        ctx, _ = c.stats()
        if ctx > 192:
            c.fail(f"context {ctx} past the limit")
    if not dropped:
        c.fail(f"no notice of dropped turns ({mode[1]} attention)")
    c.finish()

# 4. generate: progress of a long pre-fill on a terminal, none in a pipe.
text = " ".join(f"Sentence number {i} is about nothing in particular." for i in range(120))
path = os.path.join(tempfile.mkdtemp(prefix="duo_pty_"), "long.txt")
open(path, "w").write(text)
gen = ["generate", "-m", model, "-t", "2", "-f", path, "-n", "1", "--chunk", "32", "--no-display-prompt"]
g = Pty(*gen)
g.expect(b"pre-fill ", what="(progress line)")
line = g.expect(b"left")
if not re.match(r"\d+/\d+ tokens \(\d+%\) \| [\d.]+ tok/s \| ~", line):
    g.fail(f"bad progress line {line!r}")
g.expect(b"prompt tokens:", what="(statistics)")
piped = subprocess.run([DUO, *gen], capture_output=True, text=True, timeout=120 * TIME_SCALE)
if piped.returncode != 0 or "pre-fill" in piped.stderr or "\r" in piped.stderr:
    sys.exit(f"FAIL: progress shown in a pipe:\n{piped.stderr[-2000:]}")
print("chat pty tests passed")

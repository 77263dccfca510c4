"""The python grader sandbox (strop.graders.sandbox): a grader that works, and escapes that must fail.

Every escape test checks that the failure comes back as an Outcome (never an exception in
the parent), and the autouse fixture checks the parent afterwards: same cwd and environment,
the hidden workdir untouched, no sandbox process left, and a good grader still scoring.
The hidden workdir and an "open" directory next to it get world-readable and world-writable
modes, and live outside the directories the sandbox hides anyway (in /srv, /opt or /mnt, when
the tests may write there), so that only the sandbox, not file permissions nor the default
hiding of /tmp, can be what stops the grader.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from strop.graders import sandbox
from strop.graders.sandbox import Limits

ROOT = Path(__file__).resolve().parents[2]
OK, REASON = sandbox.available()
pytestmark = pytest.mark.skipif(not OK, reason=REASON)
SECRET = "the-service-secret"
GOOD = "def grade(sample, item):\n    return item['weight'] * len(sample['output_text'])\n"


def strays() -> list[int]:
    """Processes whose command line carries the sandbox's marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if sandbox.MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:  # exited while we looked
            pass
    return found


def no_strays(within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while strays():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def exposed_base() -> Path | None:
    """A directory we may write in that the sandbox does not hide by default."""
    for d in ("/srv", "/opt", "/mnt"):
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return Path(d)
    return None


EXPOSED = exposed_base()
needs_exposed = pytest.mark.skipif(EXPOSED is None, reason="needs a writable directory outside /tmp, /home, ...")


@pytest.fixture
def dirs(tmp_path):
    base = Path(tempfile.mkdtemp(dir=EXPOSED or tmp_path, prefix="strop-sandbox-test-"))
    workdir, open_dir = base / "workdir", base / "open"
    for d in (workdir, open_dir):
        d.mkdir()
        d.chmod(0o777)  # anyone may read and write: only the sandbox stands in the way
    (workdir / "secret.txt").write_text(SECRET)
    (open_dir / "visible.txt").write_text("visible")
    for f in (workdir / "secret.txt", open_dir / "visible.txt"):
        f.chmod(0o666)
    base.chmod(0o755)
    yield workdir, open_dir
    shutil.rmtree(base)


def environment() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own, per phase


@pytest.fixture(autouse=True)
def parent_unaffected(dirs):
    workdir, _ = dirs
    cwd, env = os.getcwd(), environment()
    yield
    assert os.getcwd() == cwd and environment() == env
    assert sorted(p.name for p in workdir.iterdir()) == ["secret.txt"]
    assert (workdir / "secret.txt").read_text() == SECRET
    assert no_strays(), f"sandbox processes left behind: {strays()}"
    assert sandbox.run(GOOD, {"output_text": "abcd"}, {"weight": 0.5}).score == 2.0


def grader(body: str) -> str:
    return "import os, socket, time\n\ndef grade(sample, item):\n" + textwrap.indent(textwrap.dedent(body), "    ")


def run(body: str, workdir: Path | None = None, **limits) -> sandbox.Outcome:
    return sandbox.run(grader(body), {"output_text": "x"}, {}, limits=Limits(**limits),
                       hide=[workdir] if workdir else ())


def test_a_grader_scores_several_items():
    for text, weight, expected in [("abcd", 0.5, 2.0), ("", 3.0, 0.0), ("héllo", -1, -5.0)]:
        outcome = sandbox.run(GOOD, {"output_text": text}, {"weight": weight})
        assert outcome.kind is None and outcome.score == expected
    word = sandbox.run("def grade(s, i):\n    return 'high'\n", {}, {})
    assert word.kind == "runtime" and word.error == "grade() returned a str, not a number"


def test_exceptions_come_back_as_one_truncated_line():
    outcome = run("raise ValueError('bad\\n' + 'x' * 5000)")
    assert outcome.kind == "runtime" and outcome.score is None
    assert outcome.error.startswith("ValueError: bad x") and outcome.error.endswith("(grader.py line 4)")
    assert "\n" not in outcome.error and len(outcome.error) <= sandbox.ERROR_CHARS


@pytest.mark.parametrize("where", ["cwd", "/tmp", "workdir", pytest.param("open", marks=needs_exposed), "repo"])
def test_writing_a_file_fails(dirs, where):
    workdir, open_dir = dirs
    target = {"cwd": Path("escape.txt"), "/tmp": Path("/tmp/strop-escape.txt"), "workdir": workdir / "escape.txt",
              "open": open_dir / "escape.txt", "repo": ROOT / "strop-escape.txt"}[where]
    outcome = run(f"open({str(target)!r}, 'w').write('pwned')\nreturn 1.0", workdir)
    assert outcome.kind == "runtime" and outcome.score is None
    # the kernel checks the mount before any permission; a checkout under /tmp (CI's bare clone) is not
    # even there, since the sandbox lays an empty /tmp over the real one
    hidden = where == "repo" and ROOT.resolve().is_relative_to("/tmp")
    assert ("No such file or directory" if hidden else "Read-only file system") in outcome.error, outcome.error
    assert not (ROOT / "strop-escape.txt").exists() and not (open_dir / "escape.txt").exists()
    assert not Path("/tmp/strop-escape.txt").exists()


def test_the_hidden_workdir_is_empty(dirs):
    workdir, _ = dirs
    secret = run(f"return float(len(open({str(workdir / 'secret.txt')!r}).read()))", workdir)
    assert secret.kind == "runtime" and "FileNotFoundError" in secret.error
    listing = run(f"return float(len(os.listdir({str(workdir)!r})))", workdir)
    assert listing.score == 0.0  # an empty directory where the workdir was


@needs_exposed
def test_hide_is_what_hides_the_workdir(dirs):
    workdir, open_dir = dirs
    control = run(f"return float(len(open({str(open_dir / 'visible.txt')!r}).read()))", workdir)
    assert control.score == len("visible")  # the same read works next to the hidden tree
    unhidden = run(f"return float(len(open({str(workdir / 'secret.txt')!r}).read()))")
    assert unhidden.score == len(SECRET)  # and in the workdir itself when it is not passed in hide=


def test_default_hidden_directories_are_empty():
    hidden = run("raise ValueError([os.listdir(p) if os.path.isdir(p) else [] "
                 "for p in ('/tmp', '/proc', '/home', '/run', '/dev/shm', '/var/tmp', '/root')])")
    listings = hidden.error.removeprefix("ValueError: ").rsplit(" (grader.py", 1)[0]
    assert listings.startswith("[[], [], [], [], [], [], ")
    # /root shows at most the path down to the interpreter's own libraries, bound back so imports work.
    inside_root = Path(sys.base_prefix).relative_to("/root").parts[:1] if sys.base_prefix.startswith("/root/") else ()
    assert listings.endswith(f"{list(inside_root)}]")


def test_network_is_unreachable():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        outcome = run(f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\nreturn 1.0")
        assert outcome.kind == "runtime" and "Network is unreachable" in outcome.error
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-secret")
    outcome = run("return float(sum('sk-parent-secret' in v for v in os.environ.values()) * 100 + len(os.environ))")
    # Python itself may set LC_CTYPE in an empty C locale (PEP 538); nothing else gets in.
    assert outcome.score in (0.0, 1.0)
    names = run("raise ValueError(sorted(os.environ))")
    assert "OPENAI_API_KEY" not in names.error


FORK_BOMB = """
    n = 0
    while n < 200:
        try:
            pid = os.fork()
        except OSError:
            return float(n)
        if pid == 0:
            time.sleep(60)  # children that would outlive the grader if nothing killed them
            os._exit(0)
        n += 1
    return float(n)
"""


def test_a_fork_bomb_is_capped_then_killed():
    counted = run(FORK_BOMB, processes=6)
    assert 0 < counted.score <= 6 - 2  # RLIMIT_NPROC bites: the launcher and PID 1 count too
    assert no_strays()


@pytest.mark.slow  # runs to the 2 s limit
def test_a_spinning_fork_bomb_is_stopped_at_the_deadline():
    start = time.monotonic()
    outcome = run("""
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, wall_seconds=2, processes=4)
    assert outcome.kind == "timeout" and time.monotonic() - start < 4
    assert no_strays()


@pytest.mark.slow  # runs to the 2 s limit
def test_an_infinite_loop_is_stopped_quickly():
    start = time.monotonic()
    outcome = run("while True:\n    pass", wall_seconds=2)
    assert outcome.kind == "timeout" and "2 s" in outcome.error
    assert time.monotonic() - start < 3.5


def test_cpu_limit():
    outcome = run("while True:\n    pass", wall_seconds=10, cpu_seconds=1)
    assert outcome.kind == "cpu_limit" and outcome.seconds < 4


def test_memory_exhaustion_is_a_memory_error():
    outcome = run("blob = bytearray(2 * 1024 ** 3)\nreturn 1.0", memory_bytes=256 * 2**20)
    assert outcome.kind == "runtime" and outcome.error.startswith("MemoryError")


def test_flooding_stdout_is_cut_off():
    assert run("print('x' * 100_000)\nreturn 0.5").score == 0.5  # prints go nowhere
    flood = run("os.write(3, b'x' * 1_000_000)\nreturn 0.5", output_bytes=4096)  # fd 3: the report's copy
    assert flood.kind == "output_limit"


def test_privileges_are_gone():
    """No capability in the namespace: no umount to reveal a hidden tree, no remount, no nested namespace."""
    outcome = run("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        codes = []
        for call in (lambda: libc.umount2(b"/tmp", 2), lambda: libc.mount(None, b"/", None, 32 | 4096, None),
                     lambda: libc.unshare(0x10000000 | 0x00020000), lambda: libc.setuid(1)):
            codes.append(call() == 0)
        raise ValueError(codes)
    """)
    assert outcome.error.startswith("ValueError: [False, False, False, False]")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to become nobody), setpriv and a system /usr/bin/python3")
def test_from_an_unprivileged_service(dirs):
    """The same sandbox started by a service that is not root (here: nobody, with the system Python)."""
    workdir, _ = dirs
    # a copy of the module where nobody can read it (a checkout may sit in a root-only directory, as CI's does)
    readable = Path(tempfile.mkdtemp(prefix="strop-sandbox-"))
    readable.chmod(0o755)
    shutil.copy(Path(sandbox.__file__), readable / "sandbox.py")
    (readable / "sandbox.py").chmod(0o644)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(readable)!r})
        import sandbox
        out = {{"available": sandbox.available()}}
        for name, (source, limits) in json.load(sys.stdin).items():
            o = sandbox.run(source, {{}}, {{}}, limits=sandbox.Limits(**limits), hide=[{str(workdir)!r}])
            out[name] = [o.score, o.kind, o.error]
        print(json.dumps(out))
    """)
    forks = grader(FORK_BOMB)
    jobs = {"forks": [forks, {"processes": 6}],
            "secret": [grader(f"return float(len(open({str(workdir / 'secret.txt')!r}).read()))"), {}],
            "write": [grader(f"open({str(workdir.parent / 'open' / 'escape.txt')!r}, 'w')"), {}]}
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                             "-c", script], input=json.dumps(jobs), capture_output=True, text=True, timeout=60,
                            cwd="/", env={})
    shutil.rmtree(readable, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["available"][0], out["available"]
    assert 0 < out["forks"][0] <= 4, out["forks"]  # NPROC bites for an unprivileged service too
    assert out["secret"][1] == "runtime" and "FileNotFoundError" in out["secret"][2]
    assert out["write"][1] == "runtime" and "Read-only file system" in out["write"][2]
    assert not (workdir.parent / "open" / "escape.txt").exists()


def test_sandbox_source_imports_only_the_standard_library():
    """The sandboxed interpreter runs this module's text with -I -S: no site-packages, no strop."""
    stdlib = set(sys.stdlib_module_names)
    import ast

    tree = ast.parse(Path(sandbox.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= stdlib | {"__future__"}, imported - stdlib

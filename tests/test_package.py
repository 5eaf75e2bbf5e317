"""The Debian package, built from the tree with Debian's own tools
(`make deb`: dpkg-buildpackage, debhelper, dh-python), checked by lintian,
installed on this machine, run, removed and purged without a trace. Also
what it ships: man pages that document every option, completions that
complete, a changelog at the package's version."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from sbulb import __version__
from sbulb.cli import build_parser
from sbulb.config import CHECK_KEYS, SERVICE_KEYS
from tests.conftest import require_root
from tests.proc import REPO, namespace

DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3, not another one first
MAN = REPO / "packaging" / "man"
COMPLETION = REPO / "packaging" / "bash-completion"


def long_options(parser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--")}


def test_man_pages_document_every_option_and_key() -> None:
    sbulb8 = (MAN / "sbulb.8").read_text().replace("\\-", "-")
    missing = {o for o in long_options(build_parser()) if o not in sbulb8}
    assert missing == set()
    ctl8 = (MAN / "sbulbctl.8").read_text().replace("\\-", "-")
    for word in ("status", "top", "associations list", "associations flush", "server disable",
                 "server drain", "server set-weight", "server reset", "restart", "--sort", "--watch",
                 "--json", "--timeout", "--interface", "--service"):
        assert word in ctl8, word
    conf5 = (MAN / "sbulb.conf.5").read_text().replace("\\-", "-")
    for key in (*SERVICE_KEYS, "mode", *CHECK_KEYS, "[Real Servers]", "[Virtual Server]"):
        assert f".B {key}" in conf5, key
    for page in MAN.iterdir():  # man's own checker: no warnings
        result = subprocess.run(["man", "--warnings", "-l", "-Tutf8", "-Z", str(page)],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "MANWIDTH": "80"})
        assert result.returncode == 0 and result.stderr == "", (page, result.stderr)


def complete(script: str, *words: str) -> list[str]:
    """What bash completion offers for the last of `words`."""
    quoted = " ".join(f"'{w}'" for w in words)
    code = (f"source {COMPLETION / script}; COMP_WORDS=({quoted}); "
            f"COMP_CWORD={len(words) - 1}; _{script}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(filter(None, result.stdout.splitlines()))


def test_bash_completion_completes() -> None:
    assert complete("sbulbctl", "sbulbctl", "") [:3] == ["--help", "--interface", "--json"]
    assert complete("sbulbctl", "sbulbctl", "st") == ["status"]
    assert complete("sbulbctl", "sbulbctl", "-i", "eth0", "server", "d") == ["disable", "drain"]
    assert complete("sbulbctl", "sbulbctl", "associations", "") == [
        "count", "delete", "flush", "get", "list"]
    assert complete("sbulbctl", "sbulbctl", "status", "--sort", "") == ["assoc", "bytes", "pkts"]
    assert complete("sbulb", "sbulb", "lo", "--forward", "") == ["fib", "mac-swap"]
    assert complete("sbulb", "sbulb", "--no") == ["--no-pin"]
    assert "lo" in complete("sbulb", "sbulb", "l")  # interfaces
    # every long option of sbulb is offered
    offered = set(complete("sbulb", "sbulb", "--"))
    assert long_options(build_parser()) - offered == set()


def test_changelog_is_at_the_packages_version() -> None:
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"sbulb \({re.escape(__version__)}\) ", first), first


def dpkg_files(package: str) -> list[str]:
    result = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def test_deb_builds_installs_runs_and_purges(tmp_path: Path) -> None:
    """make deb; lintian finds no error; dpkg -i; the installed sbulb (not
    the tree's) passes --check in a namespace and sbulbctl --help runs;
    conffiles and units where Debian wants them; purge leaves nothing."""
    require_root()
    assert not dpkg_files("sbulb"), "sbulb is already installed here: not touching it"
    checked_paths = [p for p in ("/usr/bin/sbulb", "/usr/bin/sbulbctl", "/etc/default/sbulb",
                                 "/etc/sbulb", "/lib/systemd/system/sbulb.service",
                                 "/usr/lib/python3/dist-packages/sbulb", "/usr/share/doc/sbulb",
                                 "/usr/share/bash-completion/completions/sbulb")
                     if not os.path.lexists(p)]  # what was there before is not ours to judge
    out = tmp_path / "deb"
    env = {**os.environ, "PATH": DEBIAN_PATH}
    built = subprocess.run(["make", "-s", "-C", str(REPO), "deb", f"DEB_DIR={out}"],
                           capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    debs = list(out.glob("sbulb_*_all.deb"))
    assert [d.name for d in debs] == [f"sbulb_{__version__}_all.deb"]
    lint = subprocess.run(["lintian", "--fail-on", "error", str(debs[0])], capture_output=True,
                          text=True, timeout=600, env=env)
    assert lint.returncode == 0 and " E: " not in lint.stdout and not lint.stdout.startswith(
        "E:"), lint.stdout + lint.stderr
    fields = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Depends"], capture_output=True,
                            text=True, check=True).stdout
    for dependency in ("python3-bpfcc", "python3-watchdog", "python3-prometheus-client",
                       "python3-pyroute2"):
        assert dependency in fields
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(debs[0])], capture_output=True,
                               check=True).stdout
    assert b"conffiles" in conffiles
    try:
        installed = subprocess.run(["dpkg", "-i", str(debs[0])], capture_output=True, text=True,
                                   timeout=300, env=env)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        files = dpkg_files("sbulb")
        for path in ("/usr/bin/sbulb", "/usr/bin/sbulbctl", "/lib/systemd/system/sbulb.service",
                     "/lib/systemd/system/sbulb@.service", "/usr/share/man/man8/sbulb.8.gz",
                     "/usr/share/man/man8/sbulbctl.8.gz", "/usr/share/man/man5/sbulb.conf.5.gz",
                     "/usr/share/bash-completion/completions/sbulbctl", "/etc/default/sbulb",
                     "/etc/sbulb/sbulb.conf"):
            assert path in files, path
        status = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "sbulb"],
                                capture_output=True, text=True, check=True).stdout
        assert "/etc/default/sbulb" in status and "/etc/sbulb/sbulb.conf" in status
        # the package's python, from a directory without the tree
        where = subprocess.run(["/usr/bin/python3", "-c", "import sbulb; print(sbulb.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
        assert where.stdout.strip() == "/usr/lib/python3/dist-packages/sbulb/__init__.py"
        for args, word in ((["--help"], "associations"), (["server", "--help"], "set-weight")):
            helped = subprocess.run(["/usr/bin/sbulbctl", *args], capture_output=True, text=True,
                                    cwd=tmp_path, env=env)
            assert helped.returncode == 0 and word in helped.stdout, helped.stderr
        with namespace() as ns:
            checked = subprocess.run(
                ["nsenter", f"--net=/run/netns/{ns}", "/usr/bin/sbulb", "veth0", "-vs",
                 "10.0.0.1", "-rs", "10.0.0.2", "-p", "5683", "--check"],
                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert checked.returncode == 0, checked.stderr
    finally:
        purged = subprocess.run(["dpkg", "--purge", "sbulb"], capture_output=True, text=True,
                                timeout=300, env=env)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert dpkg_files("sbulb") == []
    assert len(checked_paths) >= 6
    assert [p for p in checked_paths if os.path.lexists(p)] == []

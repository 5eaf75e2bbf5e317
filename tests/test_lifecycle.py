"""The real `python3 -m sbulb` process, started in a network namespace of
the test's own and stopped as an operator or systemd would: READY/STOPPING,
signals, start failures, leftovers, a second instance, --check, the console
script."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sbulb.config import Limits
from sbulb.dataplane import PIN_ROOT, Dataplane, DataplaneError
from tests.conftest import require_root
from tests.proc import REPO, namespace, run, sbulb, xdp_programs

V4_ARGS = ["veth0", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "10.0.0.3", "-p", "5683"]
V6_ARGS = ["veth0", "-vs", "2001:db8::1", "-rs", "2001:db8::2", "-p", "5683", "5684"]


@pytest.fixture
def ns():
    require_root()
    with namespace() as name:
        yield name


@pytest.mark.parametrize(
    "args,signum",
    [(V4_ARGS, signal.SIGTERM), (V6_ARGS, signal.SIGINT)],
    ids=["ipv4-sigterm", "ipv6-sigint"],
)
def test_ready_then_clean_stop(ns: str, tmp_path: Path, args: list[str], signum: int) -> None:
    with sbulb(ns, args, tmp_path) as lb:
        ready = lb.wait_ready()
        assert "STATUS=balancing UDP" in ready
        assert [name for _, name in xdp_programs(ns)] == ["sbulb_xdp"]
        assert lb.stop(signum) == 0
        lb.notify.wait_for("STOPPING=1", 5)
        assert xdp_programs(ns) == []
        assert lb.stderr == ""  # default log level: errors only


def test_config_file_reload_through_sighup(ns: str, tmp_path: Path) -> None:
    conf = tmp_path / "sbulb.conf"
    conf.write_text("[Real Servers]\n10.0.0.2\n")
    with sbulb(ns, [*V4_ARGS[:3], "-cfg", str(conf), "-p", "5683", "-l", "INFO"], tmp_path) as lb:
        lb.wait_ready()
        conf.write_text("[Real Servers]\n10.0.0.2\n10.0.0.3\n")
        lb.notify.wait_for("RELOADING=1", 10)
        assert "over 2 real server(s)" in lb.notify.wait_for("READY=1", 10)
        lb.proc.send_signal(signal.SIGHUP)
        lb.notify.wait_for("RELOADING=1", 10)
        lb.notify.wait_for("READY=1", 10)
        assert lb.stop() == 0
    assert "config.applied" in lb.stderr and "trigger=signal" in lb.stderr


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sbulb: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
          "--inh-caps=-all", "--bounding-set=-all"]


@pytest.mark.parametrize(
    "args,env,prefix,rc,fragments",
    [
        (["nosuch0", *V4_ARGS[1:]], {}, [], 1, ["no such network interface 'nosuch0'"]),
        (["veth0", "-vs", "10.0.0.300", "-rs", "10.0.0.2", "-p", "1"], {}, [], 2,
         ["invalid IP address '10.0.0.300'"]),
        (["veth0", "-vs", "10.0.0.1", "-rs", "2001:db8::2", "-p", "1"], {}, [], 2,
         ["real server 2001:db8::2 is IPv6"]),
        (["veth0", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "-p", "70000"], {}, [], 2,
         ["UDP port 70000"]),
        (V4_ARGS, {"BCC_KERNEL_SOURCE": "/nonexistent/headers"}, [], 1,
         ["kernel headers", "/nonexistent/headers", "make setup"]),
        (V4_ARGS, {}, NOBODY, 1, ["run sbulb as root"]),
    ],
    ids=["missing-interface", "bad-vip", "wrong-family", "bad-port", "no-headers", "not-root"],
)
def test_start_failures(ns: str, tmp_path: Path, args, env, prefix, rc, fragments) -> None:
    if prefix:
        tmp_path.chmod(0o777)  # the notify socket's directory, for nobody
    with sbulb(ns, args, tmp_path, env=env, prefix=prefix) as lb:
        assert lb.wait() == rc
        assert_one_line_error(lb.stderr, *fragments)
    assert xdp_programs(ns) == []


def test_compile_error_is_one_line(tmp_path: Path) -> None:
    require_root()
    sources = tmp_path / "bpf"
    shutil.copytree(REPO / "sbulb" / "bpf", sources)
    balancer = sources / "balancer.c"
    balancer.write_text(balancer.read_text().replace("return action;", "return action"))
    dp = Dataplane(Limits(), sources=sources)
    with pytest.raises(DataplaneError) as exc:
        dp.load()
    message = str(exc.value)
    assert message.startswith("cannot compile the XDP program: ") and "error:" in message
    assert "\n" not in message


FOREIGN = """
from bcc import BPF
b = BPF(text="int firewall(struct xdp_md *ctx) { return XDP_PASS; }")
BPF.attach_xdp("veth0", b.load_func("firewall", BPF.XDP), 0)
"""


def test_foreign_program_is_left_alone(ns: str, tmp_path: Path) -> None:
    run("ip", "netns", "exec", ns, sys.executable, "-c", FOREIGN)
    before = xdp_programs(ns)
    assert [name for _, name in before] == ["firewall"]
    with sbulb(ns, V4_ARGS, tmp_path) as lb:
        assert lb.wait() == 1
        assert_one_line_error(lb.stderr, "already runs XDP program 'firewall'", "xdp off")
    assert xdp_programs(ns) == before


def test_leftover_of_a_killed_sbulb_is_replaced(ns: str, tmp_path: Path) -> None:
    """A SIGKILLed sbulb leaves its program attached; the next start takes
    the interface over and serves (a restart)."""
    with sbulb(ns, V4_ARGS, tmp_path) as first:
        first.wait_ready()
        first.stop(signal.SIGKILL)
    leftover = xdp_programs(ns)
    assert [name for _, name in leftover] == ["sbulb_xdp"]
    with sbulb(ns, [*V4_ARGS, "-l", "WARNING"], tmp_path) as second:
        second.wait_ready()
        now = xdp_programs(ns)
        assert [name for _, name in now] == ["sbulb_xdp"] and now != leftover
        assert second.stop() == 0
    assert "start.replacing_leftover" in second.stderr
    assert xdp_programs(ns) == []


def test_second_instance_on_the_same_interface_is_refused(ns: str, tmp_path: Path) -> None:
    with sbulb(ns, V4_ARGS, tmp_path) as first:
        first.wait_ready()
        program = xdp_programs(ns)
        with sbulb(ns, V6_ARGS, tmp_path) as second:
            assert second.wait() == 1
            assert_one_line_error(second.stderr, "another sbulb", f"pid {first.proc.pid}")
        assert xdp_programs(ns) == program
        assert first.stop() == 0


def test_check_verifies_without_attaching(ns: str, tmp_path: Path) -> None:
    result = run("nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "sbulb", *V4_ARGS,
                 "--check", check=False)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "warning" not in result.stderr, result.stderr
    assert xdp_programs(ns) == []


def test_a_vip_that_is_a_local_address_is_pointed_out(ns: str, tmp_path: Path) -> None:
    """While sbulb is not attached, datagrams to a local VIP reach the
    host's own stack: --check warns, the start logs it (once)."""
    run("ip", "-n", ns, "addr", "add", "10.0.0.1/32", "dev", "lo")
    result = run("nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "sbulb", *V4_ARGS,
                 "--check", check=False)
    assert result.returncode == 0 and "configuration OK" in result.stdout, result.stderr
    assert result.stderr.startswith("sbulb: warning: VIP 10.0.0.1 is an address of this host")
    with sbulb(ns, [*V4_ARGS, "-l", "INFO"], tmp_path) as lb:
        lb.wait_ready()
        assert lb.stop() == 0
    assert lb.stderr.count("event=start.vip_local vip=10.0.0.1 service=default") == 1, lb.stderr


def test_console_script(tmp_path: Path) -> None:
    """pyproject.toml declares `sbulb`; installed, it is the same program."""
    require_root()
    source = tmp_path / "src"  # pip builds in the source tree: not in ours
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info",
                                                                "__pycache__"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    script = venv / "bin" / "sbulb"
    help_text = subprocess.run([str(script), "-h"], capture_output=True, text=True, cwd=tmp_path)
    assert help_text.returncode == 0 and "--max_associations" in help_text.stdout
    ctl = subprocess.run([str(venv / "bin" / "sbulbctl"), "-h"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert ctl.returncode == 0 and "associations" in ctl.stdout
    bad = subprocess.run([str(script), "lo", "-vs", "300.1.1.1", "-rs", "10.0.0.1", "-p", "5683"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    # the C sources travel with the package
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from sbulb.dataplane import source_dir; print(source_dir())"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert located.stdout.strip().startswith(str(venv)), located


def test_xdp_modes(ns: str, tmp_path: Path) -> None:
    """generic and native where asked; auto falls back to generic, with a
    warning, where native is refused (a namespace's lo); native refused is a
    one-line error."""
    lo_args = ["lo", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "-p", "5683"]
    with sbulb(ns, [*V4_ARGS, "--xdp-mode", "generic"], tmp_path) as lb:
        lb.wait_ready()
        assert "xdpgeneric" in run("ip", "-n", ns, "-d", "link", "show", "veth0").stdout
        assert lb.stop() == 0
    with sbulb(ns, [*V4_ARGS, "--xdp-mode", "native"], tmp_path) as lb:
        lb.wait_ready()
        assert "xdpgeneric" not in run("ip", "-n", ns, "-d", "link", "show", "veth0").stdout
        assert [name for _, name in xdp_programs(ns)] == ["sbulb_xdp"]
        assert lb.stop() == 0
    with sbulb(ns, [*lo_args, "-l", "WARNING"], tmp_path) as lb:
        lb.wait_ready()
        assert [name for _, name in xdp_programs(ns, "lo")] == ["sbulb_xdp"]
        assert lb.stop() == 0
    assert "dataplane.generic_xdp interface=lo" in lb.stderr
    with sbulb(ns, [*lo_args, "--xdp-mode", "native"], tmp_path) as lb:
        assert lb.wait() == 1
        assert_one_line_error(lb.stderr, "cannot attach XDP (native) to lo", "--xdp-mode generic")
    assert xdp_programs(ns, "lo") == []


def test_several_interfaces(ns: str, tmp_path: Path) -> None:
    with sbulb(ns, ["veth0", "veth1", *V4_ARGS[1:]], tmp_path) as lb:
        assert "on veth0, veth1" in lb.wait_ready()
        assert [name for _, name in xdp_programs(ns, "veth0")] == ["sbulb_xdp"]
        assert [name for _, name in xdp_programs(ns, "veth1")] == ["sbulb_xdp"]
        assert lb.stop() == 0
    assert xdp_programs(ns, "veth0") == [] and xdp_programs(ns, "veth1") == []


def test_auto_mode_never_mixes_native_and_generic(ns: str, tmp_path: Path) -> None:
    """lo refuses native XDP: with auto, veth0 goes generic too, since a
    redirect from native to generic XDP would be dropped."""
    with sbulb(ns, ["veth0", "lo", *V4_ARGS[1:], "-l", "WARNING"], tmp_path) as lb:
        lb.wait_ready()
        assert "xdpgeneric" in run("ip", "-n", ns, "-d", "link", "show", "veth0").stdout
        assert lb.stop() == 0
    assert "start.generic_xdp" in lb.stderr


def test_pinned_associations_are_checked_before_reuse(ns: str, tmp_path: Path) -> None:
    from sbulb.dataplane import ASSOC_PIN, PIN_ROOT

    pin = PIN_ROOT / f"veth0@{ns}" / ASSOC_PIN
    for ma, expected in (("1024", "pin.new"), ("1024", "pin.reused"),
                         ("2048", "pin.replaced"), ("2048", "pin.reused")):
        with sbulb(ns, [*V4_ARGS, "-ma", ma, "-l", "INFO"], tmp_path) as lb:
            lb.wait_ready()
            assert lb.stop() == 0
        assert expected in lb.stderr, (ma, lb.stderr)
        assert pin.exists()
    with sbulb(ns, [*V4_ARGS, "-ma", "4096", "-l", "INFO"], tmp_path) as lb:
        lb.wait_ready()
        assert lb.stop() == 0
    assert "pin.replaced" in lb.stderr and "max_entries 2048 != 4096" in lb.stderr
    with sbulb(ns, [*V4_ARGS, "-ma", "8192", "--no-pin", "-l", "INFO"], tmp_path) as lb:
        lb.wait_ready()
        assert lb.stop() == 0
    assert "pin." not in lb.stderr  # left alone: still the 4096 one
    result = run("nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "sbulb",
                 *V4_ARGS, "-ma", "16", "--check", check=False)
    assert result.returncode == 0
    from sbulb.dataplane import pinned_map_info

    info = pinned_map_info(pin)
    assert info is not None and info.max_entries == 4096  # a dry run touches no pin


# sbulb in a mount namespace of its own in which bpffs is not mounted
WITHOUT_BPFFS = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done; exec \"$@\"",
                 "sh"]


def test_running_unpinned_is_an_error_and_shows(ns: str, tmp_path: Path) -> None:
    """Without bpffs the associations cannot be pinned: an ERROR at the
    default level, in STATUS=, in sbulbctl status; with --no-pin, none."""
    ctl = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "sbulb.ctl", "status"]
    with sbulb(ns, V4_ARGS, tmp_path, prefix=WITHOUT_BPFFS) as lb:
        assert "associations NOT pinned" in lb.wait_ready()
        status = subprocess.run([*ctl, "--json"], capture_output=True, text=True, timeout=60,
                                cwd=REPO)
        text = subprocess.run(ctl, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert lb.stop() == 0
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pinned"] is None
    assert json.loads(status.stdout)["pin_requested"] is True
    assert "NOT pinned: bpffs is missing" in text.stdout, text.stderr
    lines = lb.stderr.strip().splitlines()
    assert len(lines) == 1 and "level=error event=pin.unavailable" in lines[0], lb.stderr
    with sbulb(ns, [*V4_ARGS, "--no-pin"], tmp_path, prefix=WITHOUT_BPFFS) as lb:
        assert "pinned" not in lb.wait_ready()
        text = subprocess.run(ctl, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert lb.stop() == 0
    assert "not pinned (--no-pin)" in text.stdout, text.stderr
    assert lb.stderr == ""
    with sbulb(ns, V4_ARGS, tmp_path) as lb:  # bpffs there: pinned
        lb.wait_ready()
        status = subprocess.run([*ctl, "--json"], capture_output=True, text=True, timeout=60,
                                cwd=REPO)
        assert lb.stop() == 0
    assert json.loads(status.stdout)["pinned"] == str(PIN_ROOT / f"veth0@{ns}")


def test_pin_directory_names(ns: str) -> None:
    """/sys/fs/bpf/sbulb/<interface>, or <interface>@<netns name> inside a
    named network namespace."""
    from sbulb.dataplane import PIN_ROOT, pin_dir

    assert pin_dir("eth9") == PIN_ROOT / "eth9"
    code = "from sbulb.dataplane import pin_dir; print(pin_dir('eth9'))"
    inside = run("nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", code)
    assert inside.stdout.strip() == str(PIN_ROOT / f"eth9@{ns}")


def test_watchdog_pings_when_systemd_asks(ns: str, tmp_path: Path) -> None:
    """WatchdogSec= sets WATCHDOG_USEC: WATCHDOG=1 every half of it."""
    with sbulb(ns, V4_ARGS, tmp_path, env={"WATCHDOG_USEC": "400000"}) as lb:
        lb.wait_ready()
        for _ in range(3):
            lb.notify.wait_for("WATCHDOG=1", 5)
        assert lb.stop() == 0
    with sbulb(ns, V4_ARGS, tmp_path) as lb:  # not asked: no pings
        lb.wait_ready()
        assert lb.stop() == 0
        lb.notify.wait_for("STOPPING=1", 5)
        assert not any("WATCHDOG=1" in m for m in lb.notify.received)


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify passes on both units (the template as an
    instance)."""
    systemd = REPO / "packaging" / "systemd"
    shutil.copy(systemd / "sbulb.service", tmp_path / "sbulb.service")
    shutil.copy(systemd / "sbulb@.service", tmp_path / "sbulb@eth0.service")
    result = subprocess.run(["systemd-analyze", "verify", "sbulb.service", "sbulb@eth0.service"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    template = (systemd / "sbulb@.service").read_text()
    assert "ExecStart=/usr/bin/python3 -m sbulb %i -cfg /etc/sbulb/%i.conf -l INFO $SBULB_OPTS" in template
    for unit in (template, (systemd / "sbulb.service").read_text()):
        for line in ("Type=notify", "WatchdogSec=30s", "ExecReload=/bin/kill -HUP $MAINPID",
                     "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
            assert line in unit.splitlines(), line


def test_make_install_and_uninstall(tmp_path: Path) -> None:
    """Staged with DESTDIR: the package where Debian's python3 looks (under
    PREFIX), both commands, the units, example configs; uninstall removes
    all of it but a config the operator changed."""
    root = tmp_path / "root"
    make = ["make", "-s", "-C", str(REPO), f"DESTDIR={root}", f"PYTHON={sys.executable}"]
    result = subprocess.run([*make, "install"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    site = root / f"usr/local/lib/python{pyver}/dist-packages"
    assert f"/usr/local/lib/python{pyver}/dist-packages" in sys.path
    for path in [site / "sbulb" / "cli.py", site / "sbulb" / "bpf" / "balancer.c",
                 root / "usr/local/bin/sbulb", root / "usr/local/bin/sbulbctl",
                 root / "etc/systemd/system/sbulb.service", root / "etc/systemd/system/sbulb@.service",
                 root / "etc/default/sbulb", root / "etc/sbulb/sbulb.conf",
                 root / "etc/sbulb/eth0.conf.example",
                 root / "usr/local/share/doc/sbulb/prometheus/sbulb-alerts.yml",
                 root / "usr/local/share/doc/sbulb/grafana/sbulb-dashboard.json",
                 root / "usr/local/share/man/man8/sbulbctl.8",
                 root / "usr/local/share/man/man5/sbulb.conf.5",
                 root / "usr/local/share/bash-completion/completions/sbulbctl"]:
        assert path.exists(), path
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    ran = subprocess.run([str(root / "usr/local/bin/sbulb"), "-h"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert ran.returncode == 0 and "--max_associations" in ran.stdout
    located = subprocess.run([sys.executable, "-c", "import sbulb.dataplane as d; print(d.source_dir())"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert located.stdout.strip() == str(site / "sbulb" / "bpf")
    changed = root / "etc/sbulb/sbulb.conf"
    changed.write_text(changed.read_text() + "10.188.100.231\n")
    result = subprocess.run([*make, "uninstall"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["etc/sbulb/sbulb.conf"], left

"""Config and command line: every flag, every class of invalid input.
Pure Python: no root, no kernel."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from sbulb import cli
from sbulb.config import (
    DEFAULT_SERVICE,
    MAX_FILE_SIZE,
    RING_SIZE,
    Config,
    ConfigError,
    FileConfig,
    Limits,
    RealServer,
    ServiceConfig,
    check_services,
    parse_real_server,
    check_real_servers,
    parse_file,
    read_file,
    smooth_weighted_order,
)

REPO = Path(__file__).resolve().parents[1]
ip = ipaddress.ip_address
V4 = ["eth0", "-vs", "10.0.0.1", "-p", "5683"]


def parse(*argv: str) -> Config:
    config, _ = cli.parse(list(argv))
    return config


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.parse(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ---- the INI file


def parse_real_servers(text: str) -> tuple[RealServer, ...]:
    return parse_file(text).real_servers


def read_real_servers(path: Path, vip, limits: Limits) -> tuple[RealServer, ...]:
    """What a reload does with the servers of a file: read, then validate."""
    servers = read_file(path).real_servers
    check_real_servers(servers, vip, limits)
    return servers


def rs(*specs: str) -> tuple[RealServer, ...]:
    return tuple(parse_real_server(spec) for spec in specs)


def test_sbulbs_ini_file_works_unchanged() -> None:
    text = "[Real Servers]\n10.0.0.4\n10.0.0.2\n10.0.0.6\n"
    assert parse_real_servers(text) == rs("10.0.0.4", "10.0.0.2", "10.0.0.6")
    assert all(server.weight == 1 for server in parse_real_servers(text))


def test_ini_file_ipv6_comments_and_blank_lines() -> None:
    text = "# servers\n[Real Servers]\n2001:db8::2  # web1\n\n; spare\n2001:DB8::3 ;web2\n"
    assert parse_real_servers(text) == rs("2001:db8::2", "2001:db8::3")


@pytest.mark.parametrize(
    "text,reason",
    [
        ("10.0.0.4\n", "no section headers"),
        ("[Servers]\n10.0.0.4\n", "unknown section [Servers]"),
        ("[Virtual Server]\naddress = 10.0.0.1\n", "no [Real Servers] section"),
        ("[Real Servers]\n10.0.0.300\n", "invalid real server address '10.0.0.300'"),
        ("[Real Servers]\nserver-a\n", "invalid real server address 'server-a'"),
        ("[Real Servers]\n10.0.0.4\n10.0.0.4\n", "listed twice"),
        ("[Real Servers]\n10.0.0.4 = heavy\n", "invalid weight 'heavy' for real server 10.0.0.4"),
        ("[Real Servers]\n10.0.0.4 = 1001\n", "weight of real server 10.0.0.4 must be between 0 and 1000"),
        ("[Real Servers]\n10.0.0.4 = -1\n", "must be between 0 and 1000"),
        ("[Virtual Server]\nvip = 10.0.0.1\n[Real Servers]\n10.0.0.4\n", "unknown key 'vip'"),
        ("[Virtual Server]\nports = 5683 coap\n[Real Servers]\n10.0.0.4\n", "invalid UDP port 'coap'"),
        ("[Virtual Server]\naddress\n[Real Servers]\n10.0.0.4\n", "no value for 'address'"),
        ("[Real Servers\n10.0.0.4\n", "no section headers"),
    ],
)
def test_ini_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_real_servers(text)
    assert reason in str(exc.value)
    assert "\n" not in str(exc.value)


def test_ini_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    vip = ip("10.0.0.1")
    cases = {
        "[Real Servers]\n": "no real server",
        "[Real Servers]\n2001:db8::2\n": "is IPv6 but the virtual server 10.0.0.1 is IPv4",
        "[Real Servers]\n" + "".join(f"10.0.1.{i}\n" for i in range(1, 5)): "at most 3",
        "[Real Servers]\n10.0.0.1\n": "is the virtual server itself",
    }
    for text, reason in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=reason):
            read_real_servers(path, vip, Limits(max_real_servers=3))
    path.write_text("[Real Servers]\n2001:db8::2\n2001:DB8:0::2\n")  # same address
    with pytest.raises(ConfigError, match="listed twice"):
        read_real_servers(path, ip("2001:db8::1"), Limits())
    with pytest.raises(ConfigError, match="file not found"):
        read_real_servers(tmp_path / "missing.conf", vip, Limits())
    path.write_bytes(b"[Real Servers]\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_real_servers(path, vip, Limits())


# ---- the command line


def test_every_flag_short_and_long() -> None:
    short = parse("eth1", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "10.0.0.3", "-p", "5683", "5684",
                  "-d", "2", "-l", "TRACE", "-mp", "4", "-mrs", "8", "-ma", "1000")
    long = parse("eth1", "--virtual_server", "10.0.0.1", "--real_server", "10.0.0.2", "10.0.0.3",
                 "--port", "5683", "5684", "--debug", "2", "--loglevel", "TRACE",
                 "--max_ports", "4", "--max_realservers", "8", "--max_associations", "1000")
    assert short == long
    assert short.interfaces == ("eth1",)
    assert short.virtual_server == ip("10.0.0.1")
    assert short.real_servers == rs("10.0.0.2", "10.0.0.3")
    assert short.ports == (5683, 5684)
    assert (short.debug, short.log_level) == (2, "TRACE")
    assert short.limits == Limits(max_ports=4, max_real_servers=8, max_associations=1000,
                                  new_associations_per_second=100)
    assert short.config_file is None


def test_sbulbs_defaults() -> None:
    config = parse(*V4, "-rs", "10.0.0.2")
    assert config.limits == Limits(max_ports=16, max_real_servers=32, max_associations=1048576,
                                   new_associations_per_second=1048576 // 60)
    assert (config.debug, config.log_level) == (0, "ERROR")
    assert (config.forward, config.xdp_mode) == ("fib", "auto")


def test_several_interfaces_forwarding_and_xdp_mode() -> None:
    config = parse("eth0", "eth1", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "-p", "1",
                   "--forward", "mac-swap", "--xdp-mode", "generic")
    assert config.interfaces == ("eth0", "eth1")
    assert (config.forward, config.xdp_mode) == ("mac-swap", "generic")
    assert parse(*V4, "-rs", "10.0.0.2", "--xdp-mode", "native").xdp_mode == "native"


def test_config_file_flag(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.4\n10.0.0.2\n")
    config = parse(*V4, "-cfg", str(path))
    assert config.real_servers == rs("10.0.0.4", "10.0.0.2")
    assert config.config_file == path
    assert parse(*V4, "--config_file", str(path)) == config


def test_ipv6_follows_the_vip() -> None:
    config = parse("eth0", "-vs", "2001:db8::1", "-rs", "2001:db8::2", "-p", "5683")
    assert config.family == 6


def test_metrics_address() -> None:
    assert parse(*V4, "-rs", "10.0.0.2").metrics is None
    assert parse(*V4, "-rs", "10.0.0.2", "--metrics", "9642").metrics == ("127.0.0.1", 9642)
    assert parse(*V4, "-rs", "10.0.0.2", "--metrics", "0.0.0.0:9642").metrics == ("0.0.0.0", 9642)
    assert parse(*V4, "-rs", "10.0.0.2", "--metrics", "[::1]:9642").metrics == ("::1", 9642)


def test_ports_1_and_65535_are_valid() -> None:
    assert parse(*V4[:3], "-p", "1", "65535", "-rs", "10.0.0.2").ports == (1, 65535)


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["lo", "-vs", "300.1.1.1", "-rs", "10.0.0.1", "-p", "5683"], "invalid IP address '300.1.1.1'"),
        ([*V4, "-rs", "10.0.0.x"], "invalid real server address '10.0.0.x'"),
        ([*V4, "-rs", "10.0.0.2=x"], "invalid weight 'x' for real server 10.0.0.2"),
        ([*V4, "-rs", "2001:db8::2"], "is IPv6 but the virtual server 10.0.0.1 is IPv4"),
        (["eth0", "-vs", "2001:db8::1", "-rs", "10.0.0.2", "-p", "1"], "is IPv4 but the virtual"),
        ([*V4[:3], "-rs", "10.0.0.2", "-p", "0"], "UDP port 0 is not between 1 and 65535"),
        ([*V4[:3], "-rs", "10.0.0.2", "-p", "65536"], "not between 1 and 65535"),
        ([*V4[:3], "-rs", "10.0.0.2", "-p", "coap"], "invalid UDP port 'coap'"),
        ([*V4[:3], "-rs", "10.0.0.2", "-p", "1", "1"], "listed twice"),
        ([*V4, "-rs", "10.0.0.2", "10.0.0.2"], "listed twice"),
        ([*V4, "-rs", "10.0.0.1"], "is the virtual server itself"),
        (["eth0", "-vs", "0.0.0.0", "-rs", "10.0.0.2", "-p", "1"], "not a unicast address"),
        (["eth0", "-vs", "224.0.0.1", "-rs", "10.0.0.2", "-p", "1"], "not a unicast address"),
        (["eth0", "-vs", "::ffff:10.0.0.1", "-rs", "::ffff:10.0.0.2", "-p", "1"], "IPv4-mapped"),
        ([*V4, "-rs", "10.0.0.2", "-mp", "0"], "0 is not a positive number"),
        ([*V4, "-rs", "10.0.0.2", "-ma", "many"], "invalid number 'many'"),
        ([*V4, "-rs", "10.0.0.2", "-mrs", "1", "-cfg", "x"], "not allowed with argument"),
        ([*V4, "-rs", "10.0.0.2", "10.0.0.3", "-mrs", "1"], "at most 1 (raise --max_realservers)"),
        ([*V4[:3], "-p", "1", "2", "3", "-mp", "2", "-rs", "10.0.0.2"], "at most 2 (raise --max_ports)"),
        ([*V4, "-rs", "10.0.0.2", "-ma", "4294967296"], "--max_associations must be between"),
        ([*V4, "-rs", "10.0.0.2", "-d", "5"], "invalid choice: 5"),
        ([*V4, "-rs", "10.0.0.2", "-l", "VERBOSE"], "invalid choice: 'VERBOSE'"),
        ([*V4], "one of the arguments -rs/--real_server -cfg/--config_file is required"),
        (["-vs", "10.0.0.1", "-rs", "10.0.0.2", "-p", "1"], "required: ifnet"),
        (["eth0", "-rs", "10.0.0.2", "-p", "1"], "required: -vs/--virtual_server"),
        (["eth0", "-vs", "10.0.0.1", "-rs", "10.0.0.2"], "required: -p/--port"),
        (["eth0", "eth0", "-vs", "10.0.0.1", "-rs", "10.0.0.2", "-p", "1"], "listed twice"),
        ([*V4, "-rs", "10.0.0.2", "--forward", "ecmp"], "invalid choice: 'ecmp'"),
        ([*V4, "-rs", "10.0.0.2", "--xdp-mode", "offload"], "invalid choice: 'offload'"),
        ([*V4, "-rs", "10.0.0.2", "--metrics", "127.0.0.1:http"], "invalid metrics port"),
    ],
)
def test_invalid_command_lines(capsys: pytest.CaptureFixture[str], argv: list[str], reason: str) -> None:
    err = usage_error(capsys, *argv)
    assert err.startswith("sbulb: error: ")
    assert reason in err


def test_invalid_config_file_at_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[Real Servers]\nnot-an-address\n")
    err = usage_error(capsys, *V4, "-cfg", str(path))
    assert f"config file {path}: invalid real server address 'not-an-address'" in err
    err = usage_error(capsys, *V4, "-cfg", str(tmp_path / "missing.conf"))
    assert "file not found" in err


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sbulb", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_sbulb_flag() -> None:
    result = run_module("-h")
    assert result.returncode == 0
    for flag in ["ifnet", "-vs VIRTUAL_SERVER, --virtual_server", "-rs REAL_SERVER",
                 "--real_server", "-cfg CONFIG_FILE, --config_file", "-p PORT", "--port",
                 "-d {0,1,2,3,4}, --debug", "-l {CRITICAL,ERROR,WARNING,INFO,DEBUG,TRACE}",
                 "--loglevel", "-mp MAX_PORTS, --max_ports", "-mrs MAX_REALSERVERS, --max_realservers",
                 "-ma MAX_ASSOCIATIONS, --max_associations", "[Real Servers]",
                 "--forward {fib,mac-swap}", "--xdp-mode {native,generic,auto}"]:
        assert flag in result.stdout, flag


def test_bad_vip_exits_non_zero_with_one_line() -> None:
    """The issue's own example, through the real entry point."""
    result = run_module("lo", "-vs", "300.1.1.1", "-rs", "10.0.0.1", "-p", "5683")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "300.1.1.1" in result.stderr


def test_cli_module_has_no_import_time_effects() -> None:
    code = "import sys, sbulb.cli; print('bcc' in sys.modules, 'sbulb.dataplane' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


def test_packaged_example_config_and_unit_agree_with_sbulb() -> None:
    systemd = REPO / "packaging" / "systemd"
    servers = parse_real_servers((systemd / "sbulb.conf").read_text())
    assert servers and all(s.address.version == 4 for s in servers)
    unit = (systemd / "sbulb.service").read_text()
    for line in ["Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ExecStart=/usr/bin/python3 -m sbulb $SBULB_OPTS"]:
        assert line in unit.splitlines(), line
    # the default command line is one sbulb accepts (with its config file in place)
    opts = (systemd / "sbulb.default").read_text().split('SBULB_OPTS="')[1].split('"')[0].split()
    opts[opts.index("-cfg") + 1] = str(systemd / "sbulb.conf")
    config = parse(*opts)
    assert config.real_servers == servers


def test_debug_logging_does_not_log_watchdogs_inotify_events() -> None:
    """At DEBUG, watchdog's own per-inotify-event lines would feed back
    through a log file kept beside the config file."""
    import logging

    from sbulb import log

    log.setup("DEBUG")
    try:
        assert not logging.getLogger("watchdog.observers.inotify_buffer").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("sbulb.service").isEnabledFor(logging.DEBUG)
    finally:
        log.setup("ERROR")



def test_weights_and_drain_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.4 = 3\n10.0.0.2\n10.0.0.6 = 0  # draining\n")
    config = parse(*V4, "-cfg", str(path))
    assert [(str(s.address), s.weight) for s in config.real_servers] == [
        ("10.0.0.4", 3), ("10.0.0.2", 1), ("10.0.0.6", 0)]
    config = parse(*V4, "-rs", "10.0.0.4=3", "10.0.0.2", "10.0.0.6=0")
    assert [s.weight for s in config.real_servers] == [3, 1, 0]


def test_smooth_weighted_round_robin_interleaves() -> None:
    a, b, c = ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")
    assert smooth_weighted_order([RealServer(a, 3), RealServer(b, 1)]) == [a, b, a, a]
    assert smooth_weighted_order([RealServer(a, 6), RealServer(b, 2)]) == [a, b, a, a]
    assert smooth_weighted_order([RealServer(a), RealServer(b), RealServer(c)]) == [a, b, c]
    assert smooth_weighted_order([RealServer(a, 2), RealServer(b, 0)]) == [a]
    assert smooth_weighted_order([RealServer(a, 0)]) == []
    five = smooth_weighted_order([RealServer(a, 5), RealServer(b, 1), RealServer(c, 1)])
    assert five == [a, a, b, a, c, a, a]


def test_ring_length_is_bounded() -> None:
    servers = tuple(RealServer(ip(f"10.0.1.{i}"), 997 if i % 2 else 1000) for i in range(1, 100))
    with pytest.raises(ConfigError, match="weights add up to .* at most 65536"):
        Config(("eth0",), ip("10.0.0.1"), (1,), servers, limits=Limits(max_real_servers=100))


def test_virtual_server_section_describes_the_instance(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 5683, 5684\n\n"
                    "[Real Servers]\n10.0.0.4\n")
    config = parse("eth0", "-cfg", str(path))
    assert (config.virtual_server, config.ports) == (ip("10.0.0.1"), (5683, 5684))
    assert (config.cli_virtual_server, config.cli_ports) == (None, None)
    # the command line wins
    config = parse("eth0", "-vs", "10.0.0.9", "-p", "7000", "-cfg", str(path))
    assert (config.virtual_server, config.ports) == (ip("10.0.0.9"), (7000,))


def test_without_vip_or_ports_anywhere(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.4\n")
    assert "-vs/--virtual_server" in usage_error(capsys, "eth0", "-p", "1", "-cfg", str(path))
    assert "-p/--port" in usage_error(capsys, "eth0", "-vs", "10.0.0.1", "-cfg", str(path))
    path.write_text("[Virtual Server]\naddress = 2001:db8::1\nports = 1\n[Real Servers]\n10.0.0.4\n")
    assert f"config file {path}: real server 10.0.0.4 is IPv4" in usage_error(
        capsys, "eth0", "-cfg", str(path))


def test_template_unit_command_line_with_its_example_config() -> None:
    """sbulb@eth0 runs `sbulb eth0 -cfg /etc/sbulb/eth0.conf`: the example
    file alone describes the instance."""
    example = REPO / "packaging" / "systemd" / "eth0.conf"
    config = parse("eth0", "-cfg", str(example))
    assert config.virtual_server == ip("10.188.7.99") and config.ports == (5683, 5684)
    assert [str(s.address) for s in config.real_servers] == ["10.188.100.163", "10.188.100.230"]
    assert [(s.name, str(s.virtual_server), s.ports) for s in config.all_services] == [
        ("default", "10.188.7.99", (5683, 5684)), ("syslog", "10.188.7.99", (514,)),
        ("dns6", "2001:db8:7::99", (53,))]


# ---- several virtual services


TWO_SERVICES = """\
[Service coap]
address = 10.0.0.1          # the VIP, IPv4 or IPv6
ports = 5683 5684
servers = 10.0.1.1 10.0.1.2=3 10.0.1.3=0    # weights as today; 0 = drained

[Service syslog]
address = 10.0.0.1          # a VIP may carry several services (other ports)
ports = 514
servers = 10.0.2.1 10.0.2.2
"""


def service(name: str, vip: str, ports: tuple[int, ...], *servers: str) -> ServiceConfig:
    return ServiceConfig(name, ip(vip), ports, rs(*servers))


def named(*services: ServiceConfig, limits: Limits = Limits()) -> Config:
    """An instance with only named services."""
    return Config(("eth0",), None, (), (), limits=limits, services=services)


def test_two_services_in_a_file(tmp_path: Path) -> None:
    file = parse_file(TWO_SERVICES)
    assert file.services == (
        service("coap", "10.0.0.1", (5683, 5684), "10.0.1.1", "10.0.1.2=3", "10.0.1.3=0"),
        service("syslog", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2"),
    )
    assert [s.weight for s in file.services[0].real_servers] == [1, 3, 0]
    assert (file.real_servers, file.virtual_server, file.ports) == ((), None, None)
    assert not file.has_default
    path = tmp_path / "sbulb.conf"
    path.write_text(TWO_SERVICES)
    config = parse("eth0", "-cfg", str(path))  # no -vs, no -p
    assert config.virtual_server is None and config.ports == () and config.real_servers == ()
    assert config.services == file.services == config.all_services
    assert config.service("syslog") == file.services[1]
    assert config.service(DEFAULT_SERVICE) is None
    assert config.family == 4
    assert all(s.family == 4 for s in config.all_services)


def test_service_keys_are_case_insensitive_and_lists_may_use_commas() -> None:
    text = "[Service a]\nADDRESS = 10.0.0.1\nPorts = 1,2 , 3\nServers = 10.0.1.1\n  10.0.1.2=2\n"
    (svc,) = parse_file(text).services
    assert svc == service("a", "10.0.0.1", (1, 2, 3), "10.0.1.1", "10.0.1.2=2")


def test_ipv4_and_ipv6_services_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Service v4]\naddress = 10.0.0.1\nports = 5683\nservers = 10.0.1.1\n"
                    "[Service v6]\naddress = 2001:db8::1\nports = 5683\n"
                    "servers = 2001:db8::2 2001:db8::3=2\n")
    config = parse("eth0", "-cfg", str(path))
    assert [(s.name, s.family) for s in config.all_services] == [("v4", 4), ("v6", 6)]
    assert config.service("v6").real_servers == rs("2001:db8::2", "2001:db8::3=2")


def test_legacy_sections_mixed_with_named_services(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text(TWO_SERVICES.replace("10.0.0.1", "10.0.0.2") +
                    "[Virtual Server]\naddress = 10.0.0.1\nports = 7000\n"
                    "[Real Servers]\n10.0.3.1\n10.0.3.2 = 2\n")
    config = parse("eth0", "-cfg", str(path))
    assert [s.name for s in config.all_services] == ["default", "coap", "syslog"]
    default = config.all_services[0]
    assert default == service("default", "10.0.0.1", (7000,), "10.0.3.1", "10.0.3.2=2")
    assert config.service("default") == default
    assert (config.virtual_server, config.ports) == (ip("10.0.0.1"), (7000,))
    # [Real Servers] with named services: -vs/-p still needed if the file lacks them
    path.write_text(TWO_SERVICES.replace("10.0.0.1", "10.0.0.2") + "[Real Servers]\n10.0.3.1\n")
    assert [s.name for s in parse("eth0", "-vs", "10.0.0.1", "-p", "7000", "-cfg",
                                  str(path)).all_services] == ["default", "coap", "syslog"]
    with pytest.raises(SystemExit):
        parse("eth0", "-cfg", str(path))


def test_service_default_is_the_legacy_sections(tmp_path: Path) -> None:
    legacy = "[Virtual Server]\naddress = 10.0.0.1\nports = 5683\n[Real Servers]\n10.0.0.4\n"
    section = "[Service default]\naddress = 10.0.0.1\nports = 5683\nservers = 10.0.0.4\n"
    assert parse_file(section) == parse_file(legacy)
    assert parse_file(section).has_default
    path = tmp_path / "sbulb.conf"
    path.write_text(section + TWO_SERVICES.replace("10.0.0.1", "10.0.0.2"))
    config = parse("eth0", "-cfg", str(path))
    assert [s.name for s in config.all_services] == ["default", "coap", "syslog"]
    assert (config.virtual_server, config.ports) == (ip("10.0.0.1"), (5683,))
    # the command line wins over [Service default] too, at start and at reload
    config = parse("eth0", "-vs", "10.0.0.9", "-p", "7000", "-cfg", str(path))
    assert (config.virtual_server, config.ports) == (ip("10.0.0.9"), (7000,))
    reloaded = config.with_file(parse_file(section.replace("10.0.0.4", "10.0.0.5")))
    assert (reloaded.virtual_server, reloaded.ports) == (ip("10.0.0.9"), (7000,))
    assert reloaded.real_servers == rs("10.0.0.5") and reloaded.services == ()


def test_reload_adds_and_drops_services(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Virtual Server]\naddress = 10.0.0.2\nports = 7000\n"
                    "[Real Servers]\n10.0.3.1\n")
    config = parse("eth0", "-cfg", str(path))
    both = config.with_file(parse_file(TWO_SERVICES + "[Real Servers]\n10.0.3.1\n"))
    assert [s.name for s in both.all_services] == ["default", "coap", "syslog"]
    assert both.virtual_server == ip("10.0.0.2")  # what the file no longer says stays
    only_named = both.with_file(parse_file(TWO_SERVICES))
    assert [s.name for s in only_named.all_services] == ["coap", "syslog"]
    assert only_named.family == 4
    # with -vs/-p on the command line, the default service cannot go away
    config = parse("eth0", "-vs", "10.0.0.2", "-p", "7000", "-cfg", str(path))
    with pytest.raises(ConfigError, match="^no real server$"):
        config.with_file(parse_file(TWO_SERVICES))


def test_a_real_server_in_two_services_on_different_ports() -> None:
    config = named(service("a", "10.0.0.1", (1, 2), "10.0.1.1", "10.0.1.2"),
                   service("b", "10.0.0.2", (3,), "10.0.1.1"),
                   service("c", "10.0.0.1", (4,), "10.0.1.1"))
    assert len(config.all_services) == 3
    # and it counts once for -mrs
    named(service("a", "10.0.0.1", (1,), "10.0.1.1", "10.0.1.2"),
          service("b", "10.0.0.2", (2,), "10.0.1.1", "10.0.1.2"), limits=Limits(max_real_servers=2))


def test_positional_construction_still_works() -> None:
    config = Config(("eth0",), ip("10.0.0.1"), (1,), rs("10.0.0.2"), limits=Limits())
    assert config.services == () and config.family == 4
    assert config.all_services == (service("default", "10.0.0.1", (1,), "10.0.0.2"),)


def file_error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_file(text)
    message = str(exc.value)
    assert "\n" not in message
    return message


def svc(name: str = "coap", address: str | None = "10.0.0.1", ports: str | None = "5683",
        servers: str | None = "10.0.1.1", extra: str = "") -> str:
    lines = [f"[Service {name}]"]
    for key, value in (("address", address), ("ports", ports), ("servers", servers)):
        if value is not None:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n" + extra


@pytest.mark.parametrize(
    "text,message",
    [
        (svc("a b"), "invalid service name in [Service a b] (expected 1 to 32 letters"),
        ("[Service ]\naddress = 10.0.0.1\n", "invalid service name in [Service ]"),
        (svc("x" * 33), f"invalid service name in [Service {'x' * 33}]"),
        (svc("caf\u00e9"), "invalid service name in [Service caf\u00e9]"),
        (svc(extra="vip = 10.0.0.2\n"),
         "[Service coap]: unknown key 'vip' (valid keys: address, ports, servers, mode, "
         "scheduler, maglev_*, check_*, on_down, passive_fall)"),
        (svc(extra="10.0.1.9\n"), "[Service coap]: unknown key '10.0.1.9'"),
        (svc(address=None), "[Service coap]: no 'address' (required: address, ports, servers)"),
        (svc(ports=None), "[Service coap]: no 'ports'"),
        (svc(servers=None), "[Service coap]: no 'servers'"),
        (svc(extra="Address = 10.0.0.2\n"), "[Service coap]: 'Address' is given twice"),
        (svc(extra="address = 10.0.0.2\n"), "address is listed twice in [Service coap]"),
        (svc(servers=""), "[Service coap]: no value for 'servers'"),
        (svc(address=None, extra="address\n"), "[Service coap]: no value for 'address'"),
        (svc(address="10.0.0.300"), "[Service coap]: invalid virtual server address '10.0.0.300'"),
        (svc(ports="5683 x"), "[Service coap]: invalid UDP port 'x'"),
        (svc(ports=","), "[Service coap]: no UDP port to load balance"),
        (svc(ports="0"), "[Service coap]: a UDP port must be between 1 and 65535, not 0"),
        (svc(ports="1 1"), "[Service coap]: a UDP port is listed twice"),
        (svc(servers="10.0.1.1 web"), "[Service coap]: invalid real server address 'web'"),
        (svc(servers="10.0.1.1=x"), "[Service coap]: invalid weight 'x' for real server 10.0.1.1"),
        (svc(servers="10.0.1.1=1001"), "[Service coap]: the weight of real server 10.0.1.1 must"),
        (svc(servers="10.0.1.1 10.0.1.1=2"),
         "[Service coap]: real server 10.0.1.1 is listed twice"),
        (svc(servers="224.0.0.1"),
         "[Service coap]: real server address 224.0.0.1 is not a unicast"),
        (svc() + svc(), "section 'Service coap' already exists"),
        ("[service coap]\naddress = 10.0.0.1\n", "unknown section [service coap]"),
        ("[Servicecoap]\naddress = 10.0.0.1\n", "unknown section [Servicecoap]"),
        (svc("default") + "[Real Servers]\n10.0.0.4\n",
         "[Service default] and [Real Servers] both describe the service default: keep one"),
        (svc("default") + "[Virtual Server]\nports = 1\n",
         "[Service default] and [Virtual Server] both describe the service default"),
        (svc() + "[Virtual Server]\naddress = 10.0.0.2\n", "no [Real Servers] section"),
        (svc() + "[Real Servers]\n", "no real server in [Real Servers] (remove the section"),
        ("", "no [Real Servers] section"),
    ],
)
def test_service_section_errors(text: str, message: str) -> None:
    assert message in file_error(text)


@pytest.mark.parametrize(
    "services,limits,message",
    [
        ([service("coap", "10.0.0.1", (514, 5683), "10.0.1.1"),
          service("syslog", "10.0.0.1", (514,), "10.0.2.1")], Limits(),
         "[Service syslog]: 10.0.0.1:514 is already in [Service coap]"),
        ([service("a", "2001:db8::1", (514,), "2001:db8::2"),
          service("b", "2001:db8::1", (514,), "2001:db8::3")], Limits(),
         "[Service b]: [2001:db8::1]:514 is already in [Service a]"),
        ([service("coap", "10.0.0.1", (514,), "10.0.1.1"),
          service("syslog", "10.0.0.2", (514,), "10.0.1.2", "10.0.1.1")], Limits(),
         "[Service syslog]: real server 10.0.1.1:514 is already in [Service coap]"),
        ([service("coap", "10.0.0.1", (5683,), "2001:db8::2")], Limits(),
         "[Service coap]: real server 2001:db8::2 is IPv6 but the virtual server 10.0.0.1 is IPv4"),
        ([service("coap", "10.0.0.1", (5683,), "10.0.0.1")], Limits(),
         "[Service coap]: real server 10.0.0.1 is the virtual server itself"),
        ([service("coap", "10.0.0.1", (5683,), "10.0.1.1"),
          service("syslog", "10.0.0.2", (514,), "10.0.0.1")], Limits(),
         "[Service syslog]: real server 10.0.0.1 is the virtual server of [Service coap]"),
        ([service("a", "10.0.0.1", (1,), "10.0.1.1"), service("b", "10.0.0.1", (2,), "10.0.1.1"),
          service("c", "10.0.0.1", (3,), "10.0.1.1")], Limits(max_services=2),
         "3 services but at most 2 (raise --max-services)"),
        ([service("a", "10.0.0.1", (1, 2), "10.0.1.1"), service("b", "10.0.0.1", (3,), "10.0.1.2")],
         Limits(max_ports=2), "3 ports over all services but at most 2 (raise --max_ports)"),
        ([service("a", "10.0.0.1", (1, 2, 3), "10.0.1.1")], Limits(max_ports=2),
         "[Service a]: 3 ports but at most 2 (raise --max_ports)"),
        ([service("a", "10.0.0.1", (1,), "10.0.1.1", "10.0.1.2"),
          service("b", "10.0.0.1", (2,), "10.0.1.2", "10.0.1.3")], Limits(max_real_servers=2),
         "3 distinct real servers over all services but at most 2 (raise --max_realservers)"),
        ([service("a", "10.0.0.1", (1,), "10.0.1.1", "10.0.1.2", "10.0.1.3")],
         Limits(max_real_servers=2), "[Service a]: 3 real servers but at most 2"),
        ([service("a", "10.0.0.1", (1,)), service("b", "10.0.0.1", (2,), "10.0.1.1")], Limits(),
         "[Service a]: no real server"),
        ([service("default", "10.0.0.1", (1,), "10.0.1.1")], Limits(),
         "the service default is given twice"),
        ([service("a b", "10.0.0.1", (1,), "10.0.1.1")], Limits(),
         "[Service a b]: invalid service name"),
        ([service("a", "10.0.0.1", (1,), "10.0.1.1"), service("a", "10.0.0.1", (2,), "10.0.1.1")],
         Limits(), "the service a is defined twice"),
        ([], Limits(), "no virtual service"),
    ],
)
def test_cross_service_errors(services: list[ServiceConfig], limits: Limits, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        named(*services, limits=limits)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_service_and_the_default_one_share_nothing() -> None:
    with pytest.raises(ConfigError,
                       match=r"^\[Service a\]: 10\.0\.0\.1:1 is already in the service default "):
        Config(("eth0",), ip("10.0.0.1"), (1,), rs("10.0.1.1"),
               services=(service("a", "10.0.0.1", (1,), "10.0.1.2"),))
    with pytest.raises(ConfigError, match=r"real server 10.0.0.2 is the "
                                          r"virtual server of \[Service a\]"):
        Config(("eth0",), ip("10.0.0.1"), (1,), rs("10.0.0.2"),
               services=(service("a", "10.0.0.2", (2,), "10.0.1.2"),))
    with pytest.raises(ConfigError, match="no virtual server"):
        Config(("eth0",), None, (1,), rs("10.0.0.2"),
               services=(service("a", "10.0.0.2", (2,), "10.0.1.2"),))


def test_the_ring_is_shared_by_all_services() -> None:
    heavy = tuple(RealServer(ip(f"10.0.1.{i}"), 997 if i % 2 else 1000) for i in range(1, 34))
    light = tuple(RealServer(ip(f"10.0.2.{i}"), 997 if i % 2 else 1000) for i in range(1, 34))
    limits = Limits(max_real_servers=100)
    each = named(ServiceConfig("a", ip("10.0.0.1"), (1,), heavy), limits=limits)
    assert sum(s.weight for s in heavy) < RING_SIZE  # one alone fits
    assert each.service("a") is not None
    with pytest.raises(ConfigError) as exc:
        named(ServiceConfig("a", ip("10.0.0.1"), (1,), heavy),
              ServiceConfig("b", ip("10.0.0.1"), (2,), light), limits=limits)
    assert "round-robin cycles of all services add up to" in str(exc.value)
    assert f"shared ring holds at most {RING_SIZE}" in str(exc.value)
    # one service over the ring on its own names its section
    servers = tuple(RealServer(ip(f"10.0.1.{i}"), 997 if i % 2 else 1000) for i in range(1, 100))
    with pytest.raises(ConfigError, match=r"^\[Service a\]: the weights add up to"):
        named(ServiceConfig("a", ip("10.0.0.1"), (1,), servers), limits=limits)


def test_check_services_alone() -> None:
    check_services([service("a", "10.0.0.1", (1,), "10.0.1.1")], Limits())
    with pytest.raises(ConfigError, match="no virtual service"):
        check_services([], Limits())


def test_errors_in_a_service_file_name_the_file(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text(TWO_SERVICES.replace("ports = 514", "ports = 5683"))
    err = usage_error(capsys, "eth0", "-cfg", str(path))
    assert (f"config file {path}: [Service syslog]: 10.0.0.1:5683 is already in "
            "[Service coap]") in err
    path.write_text(TWO_SERVICES.replace("10.0.2.2", "10.0.2.1"))
    err = usage_error(capsys, "eth0", "-cfg", str(path))
    assert f"config file {path}: [Service syslog]: real server 10.0.2.1 is listed twice" in err


def test_named_services_only_need_no_vip_or_ports(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text(TWO_SERVICES)
    assert len(parse("eth0", "-cfg", str(path)).all_services) == 2
    # -vs/-p describe the default service, which then needs real servers
    for argv in (["-vs", "10.0.0.9"], ["-p", "7000"], ["-vs", "10.0.0.9", "-p", "7000"]):
        err = usage_error(capsys, "eth0", *argv, "-cfg", str(path))
        assert f"config file {path}: no real server for -vs/-p" in err


def test_max_services_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert parse(*V4, "-rs", "10.0.0.2").limits.max_services == 64
    assert parse(*V4, "-rs", "10.0.0.2", "--max-services", "4096").limits.max_services == 4096
    assert parse(*V4, "-rs", "10.0.0.2", "--max-services", "1").limits == Limits(
        max_services=1, new_associations_per_second=1048576 // 60)
    assert "--max-services must be between 1 and 4096, not 4097" in usage_error(
        capsys, *V4, "-rs", "10.0.0.2", "--max-services", "4097")
    assert "0 is not a positive number" in usage_error(
        capsys, *V4, "-rs", "10.0.0.2", "--max-services", "0")
    assert "invalid number 'x'" in usage_error(
        capsys, *V4, "-rs", "10.0.0.2", "--max-services", "x")
    path = tmp_path / "sbulb.conf"
    path.write_text(TWO_SERVICES)
    assert "2 services but at most 1 (raise --max-services)" in usage_error(
        capsys, "eth0", "-cfg", str(path), "--max-services", "1")
    path.write_text(TWO_SERVICES + "[Real Servers]\n10.0.3.1\n")
    assert "3 services but at most 2" in usage_error(
        capsys, "eth0", "-vs", "10.0.0.2", "-p", "1", "-cfg", str(path), "--max-services", "2")
    with pytest.raises(ConfigError, match="--max-services must be between 1 and 4096, not 0"):
        Limits(max_services=0)
    assert "--max-services" in run_module("-h").stdout


def test_file_config_defaults() -> None:
    assert FileConfig().has_default  # sbulb's -rs: always the default service
    assert FileConfig(rs("10.0.0.2")).services == ()


# ---- the file's size, and the file checked whole


def test_a_file_larger_than_the_cap_is_rejected(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    head = "[Real Servers]\n10.0.0.4\n"
    # exactly the cap (padded with a comment) is read
    path.write_text(head + "#" * (MAX_FILE_SIZE - len(head) - 1) + "\n")
    assert path.stat().st_size == MAX_FILE_SIZE
    assert read_file(path).real_servers == rs("10.0.0.4")
    config = parse(*V4, "-cfg", str(path))
    # one byte more is not, at reload and at start
    path.write_text(head + "#" * (MAX_FILE_SIZE - len(head)) + "\n")
    with pytest.raises(ConfigError, match=r"larger than 1 MiB \(1048576 bytes\)"):
        read_file(path)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        config.with_file(read_file(path))
    err = usage_error(capsys, *V4, "-cfg", str(path))
    assert f"config file {path}: the file is larger than 1 MiB" in err


def test_the_file_is_read_with_a_bound() -> None:
    """Not sized first: /dev/zero says 0 bytes and never ends."""
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        read_file(Path("/dev/zero"))


def test_crlf_and_utf8_are_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_bytes("# é\r\n[Real Servers]\r\n10.0.0.4 = 2\r\n10.0.0.5\r\n".encode())
    assert read_file(path).real_servers == rs("10.0.0.4=2", "10.0.0.5")


OVERRIDDEN = [
    # (the file's [Virtual Server] / [Service default], the reason)
    ("[Virtual Server]\naddress = 10.0.0.1\nports = 70000\n[Real Servers]\n10.0.0.4\n",
     "[Virtual Server]: a UDP port must be between 1 and 65535, not 70000"),
    ("[Virtual Server]\nports = 5683 5683\n[Real Servers]\n10.0.0.4\n",
     "[Virtual Server]: a UDP port is listed twice"),
    ("[Virtual Server]\naddress = 10.0.0.4\nports = 5683\n[Real Servers]\n10.0.0.4\n10.0.0.5\n",
     "[Virtual Server]: real server 10.0.0.4 is the virtual server itself"),
    ("[Virtual Server]\naddress = 2001:db8::1\n[Real Servers]\n10.0.0.4\n",
     "[Virtual Server]: real server 10.0.0.4 is IPv4 but the virtual server 2001:db8::1 is IPv6"),
    ("[Virtual Server]\naddress = 224.0.0.1\n[Real Servers]\n10.0.0.4\n",
     "[Virtual Server]: virtual server address 224.0.0.1 is not a unicast address"),
    ("[Service default]\naddress = 10.0.0.4\nports = 5683\nservers = 10.0.0.4\n",
     "[Service default]: real server 10.0.0.4 is the virtual server itself"),
    # the file's own address and ports meet a named service's
    ("[Virtual Server]\naddress = 10.0.0.1\nports = 514\n[Real Servers]\n10.0.0.4\n" + TWO_SERVICES,
     "[Service syslog]: 10.0.0.1:514 is already in the service default"),
    ("[Virtual Server]\naddress = 10.0.2.1\nports = 7\n[Real Servers]\n10.0.0.4\n" + TWO_SERVICES,
     "[Service syslog]: real server 10.0.2.1 is the virtual server of the service default"),
]


@pytest.mark.parametrize("text,reason", OVERRIDDEN)
def test_an_overridden_virtual_server_is_checked_all_the_same(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, reason: str
) -> None:
    """-vs/-p win for what runs, but a file invalid on its own is rejected,
    at start (usage error) and at reload (the running config stays)."""
    path = tmp_path / "sbulb.conf"
    good = "[Real Servers]\n10.0.0.4\n10.0.0.5\n"
    path.write_text(good)
    argv = ["eth0", "-vs", "10.0.0.9", "-p", "7000", "-cfg", str(path)]
    running = parse(*argv)
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        running.with_file(read_file(path))
    assert reason in str(exc.value) and "checked whole" in str(exc.value)
    assert "\n" not in str(exc.value)
    err = usage_error(capsys, *argv)
    assert f"config file {path}: {reason}" in err


def test_a_valid_overridden_virtual_server_still_loses_to_the_command_line(
        tmp_path: Path) -> None:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 5683\n"
                    "[Real Servers]\n10.0.0.4\n")
    config = parse("eth0", "-vs", "10.0.0.9", "-p", "7000", "-cfg", str(path))
    assert (config.virtual_server, config.ports) == (ip("10.0.0.9"), (7000,))
    path.write_text("[Virtual Server]\naddress = 10.0.0.2\nports = 5684\n"
                    "[Real Servers]\n10.0.0.5\n")
    reloaded = config.with_file(read_file(path))
    assert (reloaded.virtual_server, reloaded.ports) == (ip("10.0.0.9"), (7000,))
    assert reloaded.real_servers == rs("10.0.0.5")


def test_new_association_rate_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """On by default: a sixtieth of -ma (at least 100); 0 turns it off."""
    assert parse(*V4, "-rs", "10.0.0.2", "-ma", "6000000").limits.new_associations_per_second == (
        100000)
    assert parse(*V4, "-rs", "10.0.0.2", "-ma", "1024").limits.new_associations_per_second == 100
    flag = "--max-new-associations-per-second"
    assert parse(*V4, "-rs", "10.0.0.2", flag, "0").limits.new_associations_per_second == 0
    assert parse(*V4, "-rs", "10.0.0.2", flag, "5000").limits.new_associations_per_second == 5000
    assert "-5 is negative" in usage_error(capsys, *V4, "-rs", "10.0.0.2", flag, "-5")


def test_modes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """mode = sticky | per-packet | mirror | telemetry per service; --mode for the
    -vs one (it wins over [Virtual Server] mode); an unknown one says so."""
    path = tmp_path / "sbulb.conf"
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\nmode = per-packet\n\n"
                    "[Real Servers]\n10.0.0.2\n\n"
                    "[Service dns]\naddress = 10.0.0.1\nports = 53\nservers = 10.0.1.1\n"
                    "mode = Per-Packet\n\n"
                    "[Service coap]\naddress = 10.0.0.1\nports = 5683\nservers = 10.0.1.2\n")
    config = parse("eth0", "-cfg", str(path))
    assert [(s.name, s.mode) for s in config.all_services] == [
        ("default", "per-packet"), ("dns", "per-packet"), ("coap", "sticky")]
    assert parse("eth0", "-cfg", str(path), "--mode", "sticky").default_service.mode == "sticky"
    assert parse(*V4, "-rs", "10.0.0.2").default_service.mode == "sticky"
    assert parse(*V4, "-rs", "10.0.0.2", "--mode", "per-packet").default_service.mode == (
        "per-packet")
    assert parse(*V4, "-rs", "10.0.0.2", "--mode", "mirror").default_service.mode == "mirror"
    assert parse(*V4, "-rs", "10.0.0.2", "--mode", "telemetry").default_service.mode == (
        "telemetry")
    assert "unknown mode 'fast'" in usage_error(capsys, *V4, "-rs", "10.0.0.2", "--mode", "fast")
    path.write_text("[Service flows]\naddress = 10.0.0.1\nports = 2055\nservers = 10.0.1.1\n"
                    "mode = telemetry\n\n[Service dns]\naddress = 10.0.0.1\nports = 53\n"
                    "servers = 10.0.1.1\nmode = tee\n")
    assert "[Service dns]: unknown mode 'tee'" in usage_error(capsys, "eth0", "-cfg", str(path))
    # a reload takes the file's mode for `default`, unless --mode was given
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\n\n"
                    "[Real Servers]\n10.0.0.2\n")
    plain, forced = parse("eth0", "-cfg", str(path)), parse("eth0", "-cfg", str(path), "--mode",
                                                           "per-packet")
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\nmode = per-packet\n\n"
                    "[Real Servers]\n10.0.0.2\n")
    assert plain.with_file(read_file(path)).default_service.mode == "per-packet"
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\nmode = sticky\n\n"
                    "[Real Servers]\n10.0.0.2\n")
    assert forced.with_file(read_file(path)).default_service.mode == "per-packet"
    assert plain.with_file(read_file(path)).default_service.mode == "sticky"


def test_health_check_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sbulb.health import CheckSpec

    path = tmp_path / "sbulb.conf"
    path.write_text("[Service coap]\naddress = 10.0.0.1\nports = 5683 5684\n"
                    "servers = 10.0.1.1 10.0.1.2\ncheck = udp\ncheck_send = 40 01 00 00\n"
                    "check_expect = ^.{4}\ncheck_interval = 500ms\ncheck_timeout = 0.2s\n"
                    "check_rise = 1\ncheck_fall = 4\ncheck_start = down\non_down = move\n"
                    "passive_fall = 5\n\n"
                    "[Service plain]\naddress = 10.0.0.1\nports = 53\nservers = 10.0.2.1\n")
    config = parse("eth0", "-cfg", str(path))
    coap, plain = config.services
    spec = coap.checks.spec
    assert isinstance(spec, CheckSpec)
    assert (spec.port, spec.send, spec.interval, spec.timeout, spec.rise, spec.fall,
            spec.start_down) == (0, b"\x40\x01\x00\x00", 0.5, 0.2, 1, 4, True)
    assert spec.expect is not None and spec.expect.pattern == b"^.{4}"
    assert (coap.checks.on_down, coap.checks.passive_fall) == ("move", 5)
    assert plain.checks.spec is None and plain.checks.on_down == "keep"
    # the default service's checks are in [Virtual Server]
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\ncheck = udp\n"
                    "check_port = 9999\n\n[Real Servers]\n10.0.0.2\n")
    default = parse("eth0", "-cfg", str(path)).default_service
    assert default.checks.spec is not None and default.checks.spec.port == 9999
    for line, reason in [
        ("check = tcp", "unknown check 'tcp'"),
        ("check = udp\ncheck_interval = 1s\ncheck_timeout = 2s", "must be shorter"),
        ("check = udp\ncheck_send = 4", "hex"),
        ("check = udp\ncheck_expect = (", "invalid reply regex"),
        ("check = udp\ncheck_fall = 0", "check_fall"),
        ("check = udp\non_down = drop", "on_down must be keep or move"),
        ("check_rise = 2", "'check_rise' needs check = udp"),
        ("check = udp\ncheck_port = 70000", "check_port must be between 1 and 65535"),
    ]:
        path.write_text("[Service coap]\naddress = 10.0.0.1\nports = 5683\n"
                        f"servers = 10.0.1.1\n{line}\n")
        err = usage_error(capsys, "eth0", "-cfg", str(path))
        assert "[Service coap]: " in err and reason in err, (line, err)


def test_schedulers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """scheduler = rr | maglev per service (and for `default`), maglev_table a
    prime (65537 by default), maglev_seed; maglev only for sticky services."""
    from sbulb.config import Scheduler

    path = tmp_path / "sbulb.conf"
    base = "[Service coap]\naddress = 10.0.0.1\nports = 5683\nservers = 10.0.1.1\n"
    path.write_text(base + "scheduler = Maglev\nmaglev_seed = 7\n\n"
                    "[Virtual Server]\naddress = 10.0.0.1\nports = 514\nscheduler = maglev\n"
                    "maglev_table = 251\n\n[Real Servers]\n10.0.0.2\n")
    config = parse("eth0", "-cfg", str(path))
    assert {s.name: s.scheduler for s in config.all_services} == {
        "default": Scheduler("maglev", 251, 0), "coap": Scheduler("maglev", 65537, 7)}
    for extra, error in [
        ("scheduler = hash\n", "unknown scheduler 'hash' (rr, maglev)"),
        ("maglev_table = 251\n", "'maglev_table' needs scheduler = maglev"),
        ("scheduler = maglev\nmaglev_table = 65536\n", "maglev_table must be a prime"),
        ("scheduler = maglev\nmaglev_table = 3\n", "maglev_table must be a prime between 7"),
        ("scheduler = maglev\nmaglev_seed = -1\n", "maglev_seed must be between 0"),
        ("scheduler = maglev\nmaglev_seed = x\n", "invalid maglev_seed 'x'"),
        ("scheduler = maglev\nmode = per-packet\n",
         "scheduler = maglev picks a server per client: it needs mode = sticky, not per-packet"),
    ]:
        path.write_text(base + extra)
        assert f"[Service coap]: {error}" in usage_error(capsys, "eth0", "-cfg", str(path)), extra
    path.write_text("[Virtual Server]\naddress = 10.0.0.1\nports = 514\nscheduler = maglev\n\n"
                    "[Real Servers]\n10.0.0.2\n")
    assert "scheduler = maglev picks a server per client: it needs mode = sticky" in usage_error(
        capsys, "eth0", "-cfg", str(path), "--mode", "mirror")

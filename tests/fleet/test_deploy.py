"""The operator files in deploy/ are what the services and tools accept, and they agree with each other: HAProxy
validates its configuration with both the production and the fleet environment, the gateway checks both TOML
files, the environment files load into the services' own configuration parsers, the systemd units pass
``systemd-analyze verify``, the wheel builds from exactly what the Dockerfile copies, and the compose file uses
the addressing plan the other files assume."""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml  # PyYAML, a dev dependency (pyproject.toml): the compose check must never skip
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scripts.fleet import HAPROXY_CONFIG, FleetPorts, ensure_haproxy, haproxy_environment, render_gateway_config
from tests.fleet.conftest import JWKS_REFRESH

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET = "tX9fQ2vLm8RzK4wPj7HcN3bYd6GsA5eU1kVoZqWx"  # 40 random-looking characters: passes the checks


def read_env(name: str) -> dict[str, str]:
    """A systemd EnvironmentFile of plain KEY=VALUE lines (no quoting is used in deploy/env)."""
    values = {}
    for line in (DEPLOY / "env" / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{name}: not KEY=VALUE: {line!r}"
            values[key] = value
    return values


def self_signed_pem(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / "edge.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.mark.parametrize("environment", ["production", "fleet"])
def test_haproxy_accepts_its_configuration(environment: str, tmp_path: Path) -> None:
    if environment == "production":
        env = {**read_env("haproxy.env"), "EDGE_LB_CERT": str(self_signed_pem(tmp_path))}
    else:
        env = haproxy_environment(FleetPorts(), tmp_path / "haproxy.sock")
    result = subprocess.run(
        [ensure_haproxy(echo=None), "-c", "-f", str(HAPROXY_CONFIG)],
        env={"PATH": "/usr/sbin:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_haproxy_env_lists_every_variable_the_configuration_reads() -> None:
    lines = [line for line in HAPROXY_CONFIG.read_text().splitlines() if not line.lstrip().startswith("#")]
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", "\n".join(lines)))
    assert (
        used
        == set(read_env("haproxy.env"))
        == set(haproxy_environment(FleetPorts(), Path("s")))
        | {
            "EDGE_LB_CERT",
            "EDGE_LB_USER",
            "EDGE_LB_GROUP",
        }
    )


@pytest.mark.parametrize("config", ["production", "fleet"])
def test_gateway_accepts_the_production_configuration(config: str, tmp_path: Path) -> None:
    path = DEPLOY / "gateway.production.toml"
    if config == "fleet":
        path = tmp_path / "gateway.toml"
        path.write_text(render_gateway_config(FleetPorts(), JWKS_REFRESH))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        env={"EDGE_PROOF_SECRET": SECRET, "IDENTITY_REVOCATION_FEED_TOKEN": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_refuses_the_production_configuration_without_the_feed_token(tmp_path: Path) -> None:
    """The feed is identity's only to the gateways: a gateway that would poll without the token does not start."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(DEPLOY / "gateway.production.toml")],
        env={"EDGE_PROOF_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "revocation_token_env: environment variable IDENTITY_REVOCATION_FEED_TOKEN is not set" in result.stderr


def test_environment_files_load_into_the_services_configuration() -> None:
    from identity.config import load_config as identity_config
    from tasks_backend.config import load_config as tasks_config

    identity = identity_config({**read_env("identity.env"), "IDENTITY_SECRET": SECRET})
    assert identity.base_url == "https://edge.example.com"
    assert identity.key_publish_delay == 360
    proxies = {str(network) for network in identity.trusted_proxies}
    assert proxies == {"10.0.0.10/32", "10.0.0.11/32", "10.0.0.12/32"}  # the load balancer and both gateways
    tasks_config({**read_env("tasks.env"), "EDGE_PROOF_SECRET": SECRET})


def test_secrets_ship_empty() -> None:
    """Nobody can start a service on a secret copied from this repository."""
    for name, key in (
        ("identity.env", "IDENTITY_SECRET"),
        ("tasks.env", "EDGE_PROOF_SECRET"),
        ("gateway.env", "EDGE_PROOF_SECRET"),
        ("identity.env", "IDENTITY_REVOCATION_FEED_TOKEN"),
        ("gateway.env", "IDENTITY_REVOCATION_FEED_TOKEN"),
    ):
        assert read_env(name)[key] == "", f"{name}: {key} must be empty"


@pytest.mark.parametrize(
    ("unit", "env_file", "help_command"),
    [
        pytest.param("edge-gateway@.service", "gateway.env", "gateway", id="gateway"),
        pytest.param("edge-identity@.service", "identity.env", "identity", id="identity"),
        pytest.param("edge-tasks.service", "tasks.env", "tasks_backend", id="tasks"),
    ],
)
def test_environment_files_match_the_units_and_the_services(unit: str, env_file: str, help_command: str) -> None:
    """Each variable is read by the service (its --help names it) or used by the unit's command line; each
    variable the unit uses is in the file."""
    text = (DEPLOY / "systemd" / unit).read_text()
    assert f"EnvironmentFile=/etc/edge/{env_file}" in text
    in_unit = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    variables = set(read_env(env_file))
    assert in_unit <= variables
    help_text = subprocess.run(
        [sys.executable, "-m", help_command, "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    unknown = {name for name in variables - in_unit if name not in help_text}
    assert not unknown, f"{env_file}: neither the service nor the unit reads {sorted(unknown)}"


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # A developer machine may lack it; CI installs it (.ci/run) and EDGE_TEST_NO_SKIPS=1 fails any skip there.
        pytest.skip("systemd-analyze is not installed")
    for unit in (DEPLOY / "systemd").iterdir():
        # verify checks that ExecStart's program exists: point it at this interpreter instead of /opt/edge.
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/edge/venv/bin/python", sys.executable))
    units = sorted(str(path) for path in tmp_path.iterdir())
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_wheel_builds_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M), "the runtime image must not run as root"
    assert "HEALTHCHECK" in dockerfile
    copied = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        *sources, _ = line.split()
        copied += sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for source in copied:  # the context keeps every path the Dockerfile copies
        assert f"!{source.rstrip('/')}" in ignore, source
    context = tmp_path / "context"
    for source in copied:
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(ROOT / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("gateway", "identity", "tasks_backend"):
        expected = {
            str(path.relative_to(ROOT))
            for path in (ROOT / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        assert expected <= names, sorted(expected - names)


def test_compose_uses_the_addressing_plan() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]

    def address(name: str) -> str:
        return str(services[name]["networks"]["edge"]["ipv4_address"])

    lb = services["lb"]["environment"]
    assert lb["EDGE_LB_SOURCE"] == address("lb")
    assert [lb["EDGE_GATEWAY_1"], lb["EDGE_GATEWAY_2"]] == [f"{address(g)}:8000" for g in ("gateway-1", "gateway-2")]
    assert [lb["EDGE_IDENTITY_1"], lb["EDGE_IDENTITY_2"]] == [
        f"{address(i)}:8001" for i in ("identity-1", "identity-2")
    ]
    toml = (DEPLOY / "gateway.production.toml").read_text()
    assert f'trusted_proxies = ["{address("lb")}/32"]' in toml
    for alias in services["lb"]["networks"]["edge"]["aliases"] + services["tasks"]["networks"]["edge"]["aliases"]:
        assert f"http://{alias}:" in toml
    trusted = services["identity-1"]["environment"]["IDENTITY_TRUSTED_PROXIES"].split(",")
    assert set(trusted) == {f"{address(n)}/32" for n in ("lb", "gateway-1", "gateway-2")}
    subnet = ipaddress.ip_network(compose["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    assert all(
        ipaddress.ip_address(address(n)) in subnet for n in services if "networks" in services[n] and n != "migrate"
    )
    # The production env files describe the same plan.
    assert read_env("haproxy.env")["EDGE_LB_SOURCE"] == address("lb")
    assert (
        read_env("identity.env")["IDENTITY_TRUSTED_PROXIES"]
        == services["identity-1"]["environment"]["IDENTITY_TRUSTED_PROXIES"]
    )


def test_readme_documents_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    files = [path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*") if path.is_file()]
    undocumented = [name for name in files if name != "README.md" and f"`{name}`" not in readme]
    assert not undocumented, f"deploy/README.md does not describe {undocumented}"

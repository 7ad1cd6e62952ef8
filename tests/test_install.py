"""The install: the README's two commands from a fresh clone, ``pipx install .``, and the deploy/ files.

The fresh-clone test is the user's path (clone, ``scripts/demo.sh``, ``scripts/test.sh``) with a new venv installed
from the package index (or its local cache), and it checks that nothing lands in the system interpreter: its
site-packages, its user site and its scripts directory list the same files before and after. The suite itself is
not run again inside the clone; ``scripts/test.sh`` gets one small test module as argument. The run starts in the
background when collection ends (tests/helpers/early.py: it is mostly pip, which the other CPU can do while the
suite runs) and its test asserts on what it saw.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import dockerfile
import pytest
import yaml
from tests.helpers import early

from tunnel_cli.cli import TUNNEL_RS, build_options
from tunnel_cli.relay_cmd import build_relay_options
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_public_key
from tunnel_core.iroh_session.options import IrohServerOptions

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


def system_pythons() -> list[str]:
    """The interpreters a user would call python3: the first on PATH without our venv, and Debian's."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    found = [shutil.which("python3", path=path), "/usr/bin/python3"]
    return list(dict.fromkeys(p for p in found if p and Path(p).exists()))


def clean_env() -> dict[str, str]:
    """The environment of a user who never activated a venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TUNNEL_VENV", "PYTHON")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p) != VENV_BIN and ".venv" not in p)
    return env


def site_snapshot() -> dict[str, list[str]]:
    """Every file name in each system interpreter's site-packages, user site and scripts directory."""
    code = ("import json, site, sysconfig; p = sysconfig.get_paths(); "
            "print(json.dumps([p['purelib'], p['platlib'], p['scripts'], site.getusersitepackages()]))")
    snapshot: dict[str, list[str]] = {}
    for python in system_pythons():
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, env=clean_env())
        for directory in json.loads(done.stdout):
            path = Path(directory)
            snapshot[directory] = sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []
    return snapshot


# ---------------------------------------------------------------------------------------------- fresh clone


@attrs.define
class FreshClone:
    """What the fresh-clone run saw; the test asserts on it (the run starts early, see tests/helpers/early.py)."""

    workdir: Path
    before: dict[str, list[str]]
    #: system interpreters that could already import tunnel_cli before the run (then nothing else was run)
    preinstalled: list[str]
    demo: subprocess.CompletedProcess[str] | None = None
    suite: subprocess.CompletedProcess[str] | None = None
    version: subprocess.CompletedProcess[str] | None = None
    after: dict[str, list[str]] | None = None

    @property
    def clone(self) -> Path:
        return self.workdir / "tunnel"


def run_fresh_clone() -> FreshClone:
    """The user's path from a fresh clone: ``scripts/demo.sh``, then ``scripts/test.sh`` with one small module."""
    preinstalled = [python for python in system_pythons()
                    if subprocess.run([python, "-c", "import tunnel_cli"], capture_output=True, env=clean_env(),
                                      timeout=30).returncode == 0]
    run = FreshClone(Path(tempfile.mkdtemp(prefix="tunnel-fresh-clone-")), site_snapshot(), preinstalled)
    if preinstalled:
        return run
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(run.clone)], check=True, timeout=120)
    env = clean_env()
    run.demo = subprocess.run(["scripts/demo.sh"], cwd=run.clone, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
    if run.demo.returncode == 0:
        run.suite = subprocess.run(["scripts/test.sh", "tests/test_wire.py"], cwd=run.clone, env=env,
                                   capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        run.version = subprocess.run([str(run.clone / ".venv" / "bin" / "tunnel"), "--version"],
                                     capture_output=True, text=True, timeout=60)
    run.after = site_snapshot()
    return run


early.offer("fresh-clone", "fresh_clone", run_fresh_clone)


@pytest.fixture
def fresh_clone() -> Iterator[FreshClone]:
    run: FreshClone = early.result("fresh-clone", run_fresh_clone)
    yield run
    shutil.rmtree(run.workdir, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_fresh_clone_two_readme_commands_leave_the_system_python_alone(fresh_clone: FreshClone) -> None:
    assert system_pythons(), "no system python3"
    assert fresh_clone.preinstalled == [], f"{fresh_clone.preinstalled} already have tunnel installed globally"
    clone, demo = fresh_clone.clone, fresh_clone.demo
    assert demo is not None and demo.returncode == 0, demo and demo.stderr[-3000:]
    assert f"tunnel is installed in {clone / '.venv'}: {clone / '.venv' / 'bin' / 'tunnel'}" in demo.stderr
    assert f'export PATH="{clone / ".venv" / "bin"}:$PATH"' in demo.stderr
    assert re.search(r"sha256.*(match|ok)", demo.stdout + demo.stderr, re.IGNORECASE), demo.stdout[-2000:]

    suite = fresh_clone.suite
    assert suite is not None and suite.returncode == 0, suite and (suite.stdout + suite.stderr)[-3000:]
    assert re.search(r"\d+ passed", suite.stdout)
    assert fresh_clone.version is not None and fresh_clone.version.stdout.startswith("tunnel ")
    assert fresh_clone.after == fresh_clone.before


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_pipx_install_gives_the_commands(tmp_path: Path) -> None:
    env = clean_env() | {"PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
                         "PIPX_MAN_DIR": str(tmp_path / "man")}
    done = subprocess.run([sys.executable, "-m", "pipx", "install", str(ROOT)], env=env, capture_output=True,
                          text=True, timeout=540, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("tunnel", "tunnel-rs", "tunnel-rs-ice"):
        assert (tmp_path / "bin" / name).exists()
    version = subprocess.run([str(tmp_path / "bin" / "tunnel-rs"), "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.stdout.startswith("tunnel-rs ")
    key = subprocess.run([str(tmp_path / "bin" / "tunnel-rs"), "generate-server-key", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert set(json.loads(key.stdout)) == {"public_key", "private_key"}


# ---------------------------------------------------------------------------------------------- systemd


@pytest.mark.parametrize("unit", ["tunnel-server.service", "tunnel-relay.service"])
def test_systemd_units_verify_and_are_hardened(unit: str, tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (scripts/install.sh --test installs systemd)"
    text = (DEPLOY / "systemd" / unit).read_text()
    # The units name /opt/tunnel (deploy/README.md); verify them against this checkout's real commands.
    rendered = tmp_path / unit
    rendered.write_text(text.replace("/opt/tunnel/bin/", f"{VENV_BIN}/"))
    verify = subprocess.run(["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "SystemCallFilter=@system-service", "UMask=0077"):
        assert setting in text.splitlines(), setting
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(rendered)], capture_output=True,
                              text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for .*: (\d+\.\d+)", security.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 2.5, security.stdout[-500:]


def test_server_unit_command_is_a_valid_tunnel_rs_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.iroh_mode.tunnels import make_key

    line = next(li for li in (DEPLOY / "systemd" / "tunnel-server.service").read_text().splitlines()
                if li.startswith("ExecStart="))
    argv = line.split()[1:]
    key, _ = make_key(tmp_path, "server.key", 2)
    keys = tmp_path / "authorized_keys"
    keys.write_text(format_public_key(public_key_from_seed(bytes(32)), "laptop") + "\n")
    config = tmp_path / "server.toml"
    config.write_text(f'role = "server"\n[iroh]\nauthorized_keys_file = "{keys}"\n'
                      '[iroh.allowed_sources]\ntcp = ["127.0.0.0/8"]\n')
    argv = [a.replace("/etc/tunnel/server.toml", str(config)).replace("${STATE_DIRECTORY}/server.key", str(key))
            for a in argv]
    _, options = build_options(argv, program=TUNNEL_RS)
    assert isinstance(options, IrohServerOptions) and options.protocol == "e4"


# ---------------------------------------------------------------------------------------------- docker


def test_dockerfile_lint() -> None:
    commands = dockerfile.parse_file(str(DEPLOY / "docker" / "Dockerfile"))
    images = [c.value[0] for c in commands if c.cmd == "FROM"]
    assert len(images) == 2 and all(":" in i and not i.endswith(":latest") for i in images)  # pinned, multi-stage
    final = commands[[i for i, c in enumerate(commands) if c.cmd == "FROM"][-1]:]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert not any(c.cmd == "ADD" for c in commands)  # COPY only: no remote fetches at build time
    entry = next(c for c in final if c.cmd == "ENTRYPOINT")
    assert entry.json and entry.value == ("tunnel-rs",)  # exec form: signals reach the program
    copies = {v for c in commands if c.cmd == "COPY" for v in c.value}
    assert {"pyproject.toml", "README.md", "src"} <= copies
    assert all((ROOT / name).exists() for name in ("pyproject.toml", "README.md", "src"))


def test_compose_file_lint_and_commands(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services, secrets = compose["services"], compose["secrets"]
    assert set(services) == {"tunnel-server", "tunnel-relay"}
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert all(s in secrets for s in service.get("secrets", [])), name
    assert (ROOT / services["tunnel-server"]["build"]["context"].replace("../..", ".")).exists()
    assert (DEPLOY / "docker" / Path(services["tunnel-server"]["build"]["dockerfile"]).name).exists()

    from tests.iroh_mode.tunnels import make_key

    make_key(tmp_path, "server_key", 3)
    keys = tmp_path / "authorized_keys"
    keys.write_text(format_public_key(public_key_from_seed(bytes(32))) + "\n")
    tokens = tmp_path / "relay_tokens"
    tokens.write_text("a-long-random-token\n")
    tokens.chmod(0o600)

    def local(argv: list[str]) -> list[str]:
        return [a.replace("/run/secrets/", f"{tmp_path}/") for a in argv]

    _, options = build_options(local(services["tunnel-server"]["command"]), program=TUNNEL_RS)
    assert isinstance(options, IrohServerOptions) and options.protocol == "e4"
    relay = services["tunnel-relay"]
    assert relay["entrypoint"] == ["tunnel", "relay"]
    relay_options = build_relay_options(local(relay["command"]))
    assert relay_options.bind == ("0.0.0.0", 3340) and relay_options.policy.tokens == {"a-long-random-token"}
    assert relay["ports"] == ["3340:3340"]

"""A new administrator's first hour, as files: the README's two commands, .ci/run on a
Python that refuses system-wide installs (PEP 668), the unit and the install guide
agreeing on where smtpguard lives, the production config, LICENSE and CHANGELOG, the
man page and shell completions generated from the argument parser, and the CLI's
usage errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import smtpguard
from smtpguard.config import schema
from smtpguard.config.load import load
from smtpguard.config.render import to_data, to_text
from tests.peers import deploy_config, need, run_cli, self_signed_cert

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", text, re.M | re.S)


# -- README -----------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    assert README.startswith("```\n")
    first, second = _code_blocks(README)[:2]
    assert second == "bash .ci/run\n"
    (line,) = first.splitlines()  # one line to copy
    steps = [s.strip() for s in line.split("&&")]
    venv = steps[0].split()
    assert venv[:3] == ["python3", "-m", "venv"], steps
    prefix = venv[3]
    assert steps[1] == f"{prefix}/bin/pip install ."
    assert steps[2] == f"{prefix}/bin/smtpguard serve"
    assert "python3-venv" in README.split("# smtpguard\n")[0]  # the Debian hint


def test_readme_production_command_uses_the_production_config() -> None:
    intro, rest = README.split("# smtpguard\n", 1)
    assert len(_code_blocks(intro)) == 2  # exactly the two commands at the top
    section = rest[rest.index("## In production") :]
    (prod,) = [b for b in _code_blocks(section) if "deploy/smtpguard.toml" in b]
    assert len(prod.splitlines()) == 1 and "serve --config deploy/smtpguard.toml" in prod
    cfg = tomllib.loads((ROOT / "deploy" / "smtpguard.toml").read_text())
    assert cfg["mode"] == "esmtp" and cfg["starttls"] == "terminate"
    assert cfg["tls"]["certfile"].startswith("/etc/smtpguard/tls/")
    # The directory the command creates is where the config logs.
    log_dir = str(Path(cfg["protocol_log"]["path"]).parent)
    assert f"install -d {log_dir}" in prod
    s = load(str(ROOT / "deploy" / "smtpguard.toml"))
    assert s.policy.starttls.value == "terminate" and s.tls.keyfile is not None


def test_unit_runs_smtpguard_where_the_install_guide_puts_it() -> None:
    unit = (ROOT / "deploy" / "smtpguard.service").read_text()
    guide = (ROOT / "docs" / "deploy.md").read_text()
    execs = re.findall(r"^ExecStart(?:Pre)?=(\S+)", unit, re.M)
    assert len(execs) == 2 and len(set(execs)) == 1, execs
    binary = Path(execs[0])
    venv = binary.parent.parent
    assert binary.name == "smtpguard" and "/usr/local/bin" not in unit
    assert f"python3 -m venv {venv} && {venv}/bin/pip install ." in guide
    assert "pip install smtpguard " not in guide and "not on PyPI" in guide
    assert ".whl" in guide  # installing from a built wheel is described


# -- .ci/run with Debian's python3 first in PATH ------------------------------------------


def _externally_managed(python: Path) -> bool:
    code = (
        "import os, sys, sysconfig; print(sys.prefix == sys.base_prefix and "
        "os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    )
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return r.stdout.strip() == "True"


def _tiny_wheel(directory: Path) -> Path:
    """A one-module wheel, so pip can install something offline."""
    name = "pep668_probe-1.dist-info"
    files = {
        "pep668_probe.py": b"",
        f"{name}/METADATA": b"Metadata-Version: 2.1\nName: pep668-probe\nVersion: 1\n",
        f"{name}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    files[f"{name}/RECORD"] = (record + f"{name}/RECORD,,\n").encode()
    wheel = directory / "pep668_probe-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def test_ci_run_makes_a_venv_for_an_externally_managed_python(tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists() or not _externally_managed(DEBIAN_PYTHON):
        pytest.skip("no externally managed /usr/bin/python3 (PEP 668) on this machine")
    if subprocess.run([str(DEBIAN_PYTHON), "-c", "import ensurepip"]).returncode != 0:
        pytest.fail("/usr/bin/python3 has no venv module: install python3-venv (.ci/run does)")
    text = (ROOT / ".ci" / "run").read_text()
    block = text[text.index("# BEGIN venv") : text.index("# END venv")]
    wheel = _tiny_wheel(tmp_path)
    script = (
        "set -euo pipefail\n"
        + block
        + 'python3 -c "import sys; print(sys.prefix)"\n'
        + f"python3 -m pip install -q --no-index --no-deps {wheel}\n"
        + "python3 -m pip show pep668-probe\n"
    )
    env = {**os.environ, "PATH": f"/usr/bin:/bin:{os.environ.get('PATH', '')}"}
    env["SMTPGUARD_CI_VENV"] = str(tmp_path / "venv")
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "externally managed: using the venv" in r.stdout
    assert f"{tmp_path}/venv\n" in r.stdout and "Name: pep668-probe" in r.stdout
    assert "externally-managed-environment" not in r.stderr


def test_ci_run_leaves_an_ordinary_python_alone() -> None:
    if _externally_managed(Path(sys.executable)):
        pytest.skip("this interpreter is itself externally managed")
    text = (ROOT / ".ci" / "run").read_text()
    block = text[text.index("# BEGIN venv") : text.index("# END venv")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env["SMTPGUARD_CI_VENV"] = "/nonexistent/venv"
    r = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block + "echo done"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0 and r.stdout == "done\n", r.stdout + r.stderr


# -- licence, changelog ------------------------------------------------------------------


def test_license_is_the_mit_licence_pyproject_names() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted" in text


def test_changelog_has_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(smtpguard.__version__)} - \d{{4}}-\d\d-\d\d$", text, re.M)
    assert "## Unreleased" in text


# -- man page and completions --------------------------------------------------------------


# The tools run by this interpreter, whatever is on PATH (another Python's
# argparse-manpage would import another smtpguard).
_TOOLS = {
    "argparse-manpage": ("argparse_manpage", "from argparse_manpage.cli import main; main()"),
    "shtab": ("shtab", "import runpy; runpy.run_module('shtab', run_name='__main__')"),
}


def _tool(name: str) -> list[str]:
    module, code = _TOOLS[name]
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"{name} not installed: pip install '.[test]' (.ci/run does)")
    return [sys.executable, "-c", code]


def _serve_flags() -> list[str]:
    from smtpguard.cli import build_parser, subparser

    serve = subparser(build_parser(), "serve")
    return [
        o for a in serve._actions for o in a.option_strings if o.startswith("--") and o != "--help"
    ]


def test_man_page_is_generated_from_the_parser_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "smtpguard.1"
    cmd = [
        *_tool("argparse-manpage"),
        "--module",
        "smtpguard.cli",
        "--function",
        "build_parser",
        "--prog",
        "smtpguard",
        "--project-name",
        "smtpguard",
        "--manual-title",
        "smtpguard manual",
        "--description",
        "SMTP inspection gateway and diagnostic toolkit",
        "--output",
        str(out),
    ]
    readme = README.replace(" \\\n    ", " ")
    shown = " ".join(f'"{a}"' if " " in a else a for a in cmd[-14:-2])
    assert f"~/.smtpguard/bin/argparse-manpage {shown} | man -l -" in readme
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "smtpguard \\- SMTP inspection gateway" in page  # NAME: name - description
    for command in ("serve", "check-config", "sink", "probe", "logscan"):
        assert f"'smtpguard {command.replace('-', chr(92) + '-')}'" in page, command
    for flag in _serve_flags():
        assert flag.replace("-", "\\-") in page, flag
    rendered = subprocess.run(
        [need("groff"), "-ww", "-man", "-Tutf8", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert "run the built" in rendered.stdout and "mailbox" in rendered.stdout


def test_bash_completion_completes_commands_and_serve_flags(tmp_path: Path) -> None:
    script = tmp_path / "smtpguard.bash"
    r = subprocess.run(
        [*_tool("shtab"), "--shell=bash", "smtpguard.cli.build_parser"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    script.write_text(r.stdout)
    assert "-m shtab --shell=bash smtpguard.cli.build_parser > " in README

    def complete(*words: str) -> list[str]:
        """What bash offers for the last of ``words`` (the word being typed)."""
        quoted = " ".join(f"'{w}'" for w in ("smtpguard", *words))
        line = " ".join(["smtpguard", *words])
        probe = (
            f"source {script}\n"
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words)}\n"
            f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n"
            "_shtab_smtpguard\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert {"serve", "check-config", "sink", "probe", "logscan"} <= set(complete(""))
    assert "--tls-cert" in complete("serve", "--tls-c")
    zsh = subprocess.run(
        [*_tool("shtab"), "--shell=zsh", "smtpguard.cli.build_parser"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert zsh.returncode == 0 and "#compdef smtpguard" in zsh.stdout


# -- the CLI's usage and messages ---------------------------------------------------------------


def test_unknown_option_shows_the_sub_commands_usage() -> None:
    r = run_cli("serve", "--bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: smtpguard serve ")
    assert "--tls-cert" in r.stderr  # serve's options, not the list of commands
    assert r.stderr.rstrip().endswith("smtpguard serve: error: unrecognized arguments: --bogus")


def test_sink_help_describes_the_command() -> None:
    r = run_cli("sink", "--help")
    assert r.returncode == 0
    body = r.stdout.split("\n\n")[1]  # after the usage lines
    assert "built-in mailbox" in body and "Maildir" in body


def test_every_config_error_gets_its_own_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[gateway]\nmode = "esmtp"\nworkers = -1\n[checks.rcpt_count]\nlimit = "x"\n')
    for args in (("check-config", str(cfg)), ("serve", "--config", str(cfg))):
        r = run_cli(*args)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 3, r.stderr
        cmd = args[0]
        assert all(ln.startswith(f"smtpguard {cmd}: error: {cfg}:") for ln in lines), lines
        assert [ln.split(f"{cfg}:")[1].split(":")[0] for ln in lines] == ["2", "3", "5"]
        assert '"mode" is a top-level key' in lines[0]


def test_check_config_shows_every_setting(tmp_path: Path) -> None:
    """Every key of the gateway's own sections is in the text and the JSON (the
    deploy config, with its certificate and log directory in place)."""
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, key = self_signed_cert(tls)
    os.rename(cert, tls / "fullchain.pem")
    os.rename(key, tls / "privkey.pem")
    cfg = deploy_config(tmp_path, tls=tls, logs=tmp_path)
    s = load(str(cfg))
    data, text = to_data(s), to_text(s)
    r = run_cli("check-config", "--json", str(cfg))
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(json.dumps(data)), r.stderr
    for section in ("gateway", "protocol_log", "tls", "access", "state", "dedupe"):
        model = schema.ConfigFile.model_fields[section].annotation
        assert model is not None
        for key_name in model.model_fields:
            assert key_name in data[section], f"{section}.{key_name}"
            assert re.search(rf"^  {key_name} ", text, re.M), f"{section}.{key_name}"
    gw = data["gateway"]
    assert gw["metrics_listen"] == "127.0.0.1:9125" and gw["log_format"] == "json"
    assert gw["upstream_proxy_protocol"] == "off" and gw["log_level"] == "info"
    unset = to_text(load(None))
    assert "info, one line per session, when stderr is a terminal" in unset


def test_a_closed_stdout_is_no_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpguard", "check-config", str(ROOT / "examples/smtpguard.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written (| head -0)
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and proc.returncode == 141, err


def test_a_mistyped_flag_command_or_choice_gets_a_did_you_mean() -> None:
    for args, end in (
        (("serve", "--dedupee"), "unrecognized arguments: --dedupee (did you mean --dedupe?)"),
        (
            ("serve", "--tls-crt", "x.pem"),
            "unrecognized arguments: --tls-crt x.pem (did you mean --tls-cert?)",
        ),
        (("check-config", "--jsn", "f.toml"), "(did you mean --json?)"),
        (("serve", "--mode", "esmpt"), "(choose from 'mailguard', 'esmtp') (did you mean esmtp?)"),
        (("serv",), "invalid choice: 'serv' (choose from 'serve', 'check-config', 'sink', "
         "'probe', 'logscan') (did you mean serve?)"),
    ):  # fmt: skip
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.rstrip().endswith(end), r.stderr
    # Nothing close: no guess.
    assert run_cli("serve", "--bogus").stderr.rstrip().endswith("unrecognized arguments: --bogus")

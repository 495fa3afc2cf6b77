"""Redis over TLS: a real ``redis-server --tls-port`` with a self-signed CA the test makes;
fcn-submit and fcn-jobs reach it through ``rediss://`` with ``FCN_REDIS_CA`` or the URL's
``ssl_ca_certs``; a wrong or missing CA is one line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from click.testing import CliRunner

from fcn_dist.cli import jobs as jobs_cli
from fcn_dist.cli import submit as submit_cli

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("openssl") is None,
                                reason="needs redis-server (built with TLS) and openssl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A TLS-only redis-server (plain port off) with a server cert signed by a test CA; also
    a second, unrelated CA for the wrong-CA case."""
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=d)
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail("redis-server --tls-port did not start (built without TLS?): "
                            + proc.stdout.read().decode(errors="replace")[-500:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server --tls-port did not listen")
                time.sleep(0.05)
        yield {"port": port, "ca": d / "ca.crt", "other_ca": d / "other-ca.crt"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("name: tiny\ndata: synthetic\nepochs: 1\nbatch_size: 2\ncrop_size: [64, 64]\n")
    return p


def _one_line(result) -> str:
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    return err


def test_submit_and_list_over_tls_with_ca_env(tls_redis, spec_file, monkeypatch):
    """FCN_REDIS_CA verifies the server: a job submitted over rediss:// is listed back."""
    monkeypatch.setenv("FCN_REDIS_CA", str(tls_redis["ca"]))
    url = f"rediss://127.0.0.1:{tls_redis['port']}/0"
    runner = CliRunner()
    r = runner.invoke(submit_cli.main, ["--spec", str(spec_file), "--variant", "32s",
                                        "--redis-url", url, "--prefix", "tls:"])
    assert r.exit_code == 0, r.output
    job_id = r.stdout.split()[0]
    listed = runner.invoke(jobs_cli.main, ["--redis-url", url, "--prefix", "tls:", "list"])
    assert listed.exit_code == 0, listed.output
    assert job_id in listed.stdout


def test_ca_in_url_and_wrong_ca_is_one_line(tls_redis, monkeypatch):
    """The URL's ssl_ca_certs wins over FCN_REDIS_CA; a CA that did not sign the server's
    certificate, or a CA file that is not there, is one line naming the URL."""
    monkeypatch.setenv("FCN_REDIS_CA", str(tls_redis["other_ca"]))
    base = f"rediss://127.0.0.1:{tls_redis['port']}/0"
    runner = CliRunner()
    ok = runner.invoke(jobs_cli.main, ["--redis-url", f"{base}?ssl_ca_certs={tls_redis['ca']}",
                                       "--prefix", "tls:", "list"])
    assert ok.exit_code == 0, ok.output

    bad = runner.invoke(jobs_cli.main, ["--redis-url", base, "--prefix", "tls:", "list"])
    err = _one_line(bad)
    assert base in err and "certificate verify failed" in err.lower(), err

    monkeypatch.setenv("FCN_REDIS_CA", "/nonexistent/ca.pem")
    missing = runner.invoke(jobs_cli.main, ["--redis-url", base, "--prefix", "tls:", "list"])
    err = _one_line(missing)
    assert "/nonexistent/ca.pem" in err and "FCN_REDIS_CA" in err, err

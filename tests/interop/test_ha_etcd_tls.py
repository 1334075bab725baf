"""Leadership through a lease in an etcd that speaks only TLS, with a
certificate from a private CA and client certificates required
(`--client-cert-auth`), as a production etcd runs: `[ha] etcd_ca`,
`etcd_cert` and `etcd_key` (docs/operations.md).

1. Without `etcd_ca` the server does not trust etcd's certificate: it stops
   at start, saying why.
2. With the CA but no client certificate, etcd refuses the connection: the
   server stops at start.
3. With both, A is the primary and B a standby; A is killed (kill -9) and B
   is the primary within the lease time plus its restore, with A's data
   (every renewal, the standby's watch and the takeover over TLS)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import boto3

from peers import free_port, scratch, sql, wait_for
from test_ha_etcd import Server, post

BUCKET = "tocsin-ha-tls"
TTL_S = 3


def make_certs(d):
    """A CA, etcd's server certificate for 127.0.0.1, and a client
    certificate for Tocsin, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=etcd test CA",
        "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    # etcd's JSON gateway calls etcd's gRPC with the server's own
    # certificate: with --client-cert-auth it must be a client's too.
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")]:
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{d}/{name}.key",
            "-out", f"{d}/{name}.csr")
        with open(f"{d}/{name}.cnf", "w") as f:
            f.write("basicConstraints=CA:FALSE\n" + ext)
        run("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{d}/{name}.cnf", "-out", f"{d}/{name}.pem")


def main():
    with scratch("tocsin-ha-tls-") as (tmp, procs):
        make_certs(tmp)
        etcd_port, moto_port = free_port(), free_port()
        etcd_url = f"https://127.0.0.1:{etcd_port}"
        procs.append(subprocess.Popen(
            ["etcd", "--data-dir", os.path.join(tmp, "etcd"), "--listen-client-urls", etcd_url,
             "--advertise-client-urls", etcd_url, "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
             "--cert-file", f"{tmp}/server.pem", "--key-file", f"{tmp}/server.key",
             "--trusted-ca-file", f"{tmp}/ca.pem", "--client-cert-auth"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "etcd.log"), "w")))
        procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        endpoint = f"http://127.0.0.1:{moto_port}"
        os.environ.update(AWS_ACCESS_KEY_ID="tocsin-test", AWS_SECRET_ACCESS_KEY="tocsin-secret",
                          AWS_REGION="eu-west-1", AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true")
        os.environ.pop("TOCSIN_ETCD_PASSWORD", None)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        wait_for("moto", lambda: s3.list_buckets() is not None, 30)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

        import ssl
        ctx = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
        ctx.load_cert_chain(f"{tmp}/client.pem", f"{tmp}/client.key")
        wait_for("etcd", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2, context=ctx).status == 200,
                 30)

        def config(name, tls):
            path = os.path.join(tmp, f"{name}.toml")
            with open(path, "w") as f:
                f.write(f'[storage]\nobject_store_interval = "1s"\n[ha]\nlease_ttl = "{TTL_S}s"\n{tls}')
            return ["--object-store", f"s3://{BUCKET}/site-a", "--etcd", etcd_url, "--config", path]

        # 1. etcd's certificate is not trusted without its CA.
        bad = Server(tmp, "no-ca", config("no-ca", ""), procs)
        assert bad.p.wait(30) != 0, "a server that cannot trust etcd's certificate started"
        assert "certificate" in bad.log_text().lower(), bad.log_text()

        # 2. etcd asks for a client certificate.
        bad = Server(tmp, "no-cert", config("no-cert", f'etcd_ca = "{tmp}/ca.pem"\n'), procs)
        assert bad.p.wait(30) != 0, "a server without a client certificate started"
        assert "etcd at" in bad.log_text(), bad.log_text()

        # 3. With both: a primary, a standby, a failover.
        tls = f'etcd_ca = "{tmp}/ca.pem"\netcd_cert = "{tmp}/client.pem"\netcd_key = "{tmp}/client.key"\n'
        a = Server(tmp, "a", config("a", tls), procs)
        assert a.listening.wait(60), "A did not start:\n" + a.log_text()
        assert a.roles == ["primary"], a.roles
        b = Server(tmp, "b", config("b", tls), procs)
        wait_for("B standing by", lambda: b.roles == ["reader"] and "standby" in b.log_text(), 20, 0.2)
        assert post(a.http, "/write?db=public", b"cpu,host=h1 usage=1 1700000000000000000") == 204
        post(a.http, "/api/v1/admin/persist")
        time.sleep(2.5)  # a push (every second) holds the row
        a.p.send_signal(signal.SIGKILL)
        killed = time.time()
        assert b.listening.wait(60), "B did not take over:\n" + b.log_text()
        took = b.listening_at - killed
        print(f"B primary {took:.1f} s after A was killed (lease {TTL_S} s), etcd over TLS with client certificates")
        assert took < TTL_S + 15, took
        assert sql(b.http, "SELECT count(*) AS n FROM cpu")[0]["n"] == 1
        print("primary and standby through a lease in etcd over TLS: ok")


if __name__ == "__main__":
    sys.exit(main())

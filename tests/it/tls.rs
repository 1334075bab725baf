//! TLS on both ports with certificates made by a CA generated here: HTTPS
//! and gRPC over TLS work with the CA trusted, a plain connection to a TLS
//! port gets nothing, a renewed certificate is served without a restart (a
//! broken one is not), and with `client_ca` only clients holding a
//! certificate signed by that CA get in.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate as GrpcCert, Channel, ClientTlsConfig, Identity};

use crate::server::{BIN, TestServer};
use crate::util::{f64s, row_series, rows};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate and key (PEM) for `names`, for a server or a client.
    fn issue(&self, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `contents` to `path` as a renewal tool does: a new file renamed
/// into place.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn https(ca: Option<&Ca>, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca"));
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

async fn health(client: &reqwest::Client, server: &TestServer) -> Result<u16, reqwest::Error> {
    client.get(format!("https://{}/health", server.http)).send().await.map(|r| r.status().as_u16())
}

/// A server with `[tls]` from files in `dir` (and `extra` TOML lines).
fn start(dir: &Path, ca: &Ca, extra: &str) -> TestServer {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], false);
    std::fs::write(dir.join("server.pem"), cert).expect("cert");
    std::fs::write(dir.join("server.key"), key).expect("key");
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nreload_check = \"200ms\"\n{extra}",
        dir.join("server.pem"),
        dir.join("server.key")
    );
    std::fs::write(dir.join("tocsin.toml"), config).expect("config");
    let cfg = dir.join("tocsin.toml");
    TestServer::start_in(&dir.join("data"), &["--config", cfg.to_str().expect("utf-8")])
}

async fn grpc_channel(server: &TestServer, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{}", server.grpc)).expect("uri").tls_config(tls)?.connect().await
}

#[tokio::test]
async fn https_and_grpc_over_tls_with_certificates_reloaded_when_renewed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Tocsin test CA");
    let server = start(dir.path(), &ca, "");

    assert_eq!(health(&https(Some(&ca), None), &server).await.expect("https with the CA trusted"), 200);
    assert!(health(&https(None, None), &server).await.is_err(), "a certificate from an unknown CA is refused");
    let plain = reqwest::Client::new().get(format!("http://{}/health", server.http)).send().await;
    assert!(plain.is_err(), "plain HTTP to the TLS port gets no answer: {plain:?}");

    // gRPC over TLS: a write goes in and reads back over HTTPS.
    let tls = ClientTlsConfig::new().ca_certificate(GrpcCert::from_pem(ca.pem())).domain_name("localhost");
    let channel = grpc_channel(&server, tls).await.expect("gRPC over TLS");
    let mut ingest = tocsin_proto::v1::ingest_client::IngestClient::new(channel);
    let write =
        rows("t", vec![row_series(&[("host", "a")], vec![1_700_000_000_000_000_000], vec![f64s("v", vec![1.5])])]);
    assert_eq!(ingest.write_rows(write).await.expect("write over TLS").into_inner().accepted_rows, 1);
    let plain = Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await;
    if let Ok(channel) = plain {
        let mut c = tocsin_proto::v1::ingest_client::IngestClient::new(channel);
        let w = rows("t", vec![row_series(&[("host", "b")], vec![1], vec![f64s("v", vec![2.0])])]);
        assert!(c.write_rows(w).await.is_err(), "plain gRPC to the TLS port fails");
    }

    // The CLI with --tls-ca.
    let out = Command::new(BIN)
        .args(["sql", "--http-addr", &server.http.to_string(), "--tls-ca"])
        .arg(dir.path().join("ca.pem"))
        .arg("SELECT host, v FROM t")
        .env_remove("TOCSIN_TOKEN")
        .output()
        .expect("tocsin sql");
    assert!(!out.status.success(), "the CA file is not written yet");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("ca.pem");
    let out = Command::new(BIN)
        .args(["sql", "--http-addr", &server.http.to_string(), "--tls-ca"])
        .arg(dir.path().join("ca.pem"))
        .arg("SELECT host, v FROM t")
        .env_remove("TOCSIN_TOKEN")
        .output()
        .expect("tocsin sql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1.5"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));

    // Renewal: a certificate from another CA is written over the files; the
    // server serves it without a restart.
    let renewed = Ca::new("Tocsin renewed CA");
    let (cert, key) = renewed.issue(&["localhost", "127.0.0.1"], false);
    replace(&dir.path().join("server.key"), &key);
    replace(&dir.path().join("server.pem"), &cert);
    let trusts_renewed = https(Some(&renewed), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health(&trusts_renewed, &server).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health(&https(Some(&ca), None), &server).await.is_err(), "the old certificate is no longer served");

    // A broken renewal is not served: the last good certificate stays.
    replace(&dir.path().join("server.pem"), "not a certificate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(&trusts_renewed, &server).await.expect("still the renewed certificate"), 200);
    let text = server.log_text();
    assert!(text.contains("TLS certificate reloaded"), "{text}");
    assert!(text.contains("TLS certificate not reloaded") && text.contains("server.pem"), "{text}");
    // Both reloads are in the audit log.
    let audit = trusts_renewed
        .post(format!("https://{}/api/v1/sql", server.http))
        .json(&serde_json::json!({"sql": "SELECT outcome FROM system.audit WHERE interface = 'tls' ORDER BY seq"}))
        .send()
        .await
        .expect("sql")
        .text()
        .await
        .expect("body");
    assert!(audit.contains("\"ok\"") && audit.contains("\"error\""), "{audit}");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Tocsin test CA");
    let clients = Ca::new("Collectors CA");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).expect("clients CA");
    let extra = format!("client_ca = {:?}\n", dir.path().join("clients.pem"));
    let server = start(dir.path(), &ca, &extra);

    let collector = clients.issue(&["collector-1"], true);
    assert_eq!(health(&https(Some(&ca), Some(&collector)), &server).await.expect("with a client certificate"), 200);
    assert!(health(&https(Some(&ca), None), &server).await.is_err(), "no client certificate");
    let stranger = Ca::new("Somebody else").issue(&["intruder"], true);
    assert!(health(&https(Some(&ca), Some(&stranger)), &server).await.is_err(), "a certificate of another CA");

    // gRPC collectors the same way.
    let base = ClientTlsConfig::new().ca_certificate(GrpcCert::from_pem(ca.pem())).domain_name("localhost");
    let with_identity = base.clone().identity(Identity::from_pem(&collector.0, &collector.1));
    let channel = grpc_channel(&server, with_identity).await.expect("gRPC with a client certificate");
    let mut ingest = tocsin_proto::v1::ingest_client::IngestClient::new(channel);
    let write =
        rows("m", vec![row_series(&[("host", "a")], vec![1_700_000_000_000_000_000], vec![f64s("v", vec![1.0])])]);
    assert_eq!(ingest.write_rows(write.clone()).await.expect("write").into_inner().accepted_rows, 1);
    if let Ok(channel) = grpc_channel(&server, base).await {
        let mut c = tocsin_proto::v1::ingest_client::IngestClient::new(channel);
        assert!(c.write_rows(write).await.is_err(), "no client certificate, no write");
    }
}

#[test]
fn a_bad_tls_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tocsin.toml");
    let missing = dir.path().join("nowhere.pem");
    std::fs::write(&cfg, format!("[tls]\ncert = {missing:?}\nkey = {missing:?}\n")).expect("config");
    let out = Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run tocsin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started:\n{stderr}");
    assert!(stderr.contains("TLS certificate") && stderr.contains("nowhere.pem"), "{stderr}");
    assert!(!dir.path().join("data").join("wal").exists(), "storage was not opened");
    // A key without a certificate is a configuration error naming the key.
    std::fs::write(&cfg, "[tls]\nkey = \"k.pem\"\n").expect("config");
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&cfg).output().expect("run tocsin");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.cert"), "{}", String::from_utf8_lossy(&out.stderr));
}

//! A small HTTP client for the commands that talk to a running server.

use anyhow::{Context, bail};

/// Where the server is and who calls it: the flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address of the server's HTTP API.
    #[arg(long, env = "TOCSIN_HTTP_ADDR", default_value = "127.0.0.1:4318", global = true)]
    pub(crate) http_addr: String,
    /// API token, for a server started with --auth.
    #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> Client {
        let a = &self.http_addr;
        let base =
            if a.starts_with("http://") || a.starts_with("https://") { a.clone() } else { format!("http://{a}") };
        Client { base, token: self.token.clone(), http: reqwest::Client::new() }
    }
}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A request to `path`, with the token if one was given.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        (url, req)
    }

    /// Sends a request; returns the JSON answer, or the server's error.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (url, mut req) = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("while connecting to {url} (is `tocsin serve` running there?)"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("while reading the response")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{msg} (HTTP {status})");
        }
        Ok(value)
    }
}

/// Prints rows as an aligned table.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

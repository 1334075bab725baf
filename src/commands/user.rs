//! `tocsin user create|list|delete|passwd` (the caller's token needs the
//! `users` permission; `passwd` also works for one's own session) and
//! `tocsin login`. Passwords are read from the first line of standard
//! input, never from the command line (where `ps` and shell history would
//! show them).

use std::io::BufRead as _;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::json;

use super::client::{ServerArgs, print_table};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        /// The user's name (letters, digits, `_ . @ -`).
        name: String,
        /// Role: admin, editor, viewer, writer, alerter, auditor, or a configured one.
        #[arg(long)]
        role: String,
        /// Restrict the user to one database.
        #[arg(long)]
        db: Option<String>,
    },
    /// List users (never their passwords).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a user: their sessions end at once.
    Delete { name: String },
    /// Set a user's password (the first line of standard input); their
    /// sessions end. Your own, with `--own`: your current password on the
    /// first line, the new one on the second.
    Passwd {
        name: String,
        #[arg(long)]
        own: bool,
    },
}

/// `tocsin login`: a session token for a user (printed alone on the last
/// line), e.g. `export TOCSIN_TOKEN=$(tocsin login --user alice < pw)`.
#[derive(Debug, clap::Args)]
pub(crate) struct LoginConfig {
    #[command(flatten)]
    server: ServerArgs,
    /// The user's name; the password is read from standard input.
    #[arg(long)]
    user: String,
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password on standard input (pipe it in: `... < password-file`)");
    Ok(password)
}

fn time(v: &serde_json::Value) -> String {
    v.as_i64()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = c.server.client()?;
    runtime.block_on(async {
        match c.command {
            UserCommand::Create { name, role, db } => {
                let password = read_password()?;
                let body = json!({ "name": name, "password": password, "role": role, "database": db });
                let v = client.call(Method::POST, "/api/v1/users", Some(body)).await?;
                println!(
                    "created user {} (role {})",
                    v["name"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?")
                );
            }
            UserCommand::List { json } => {
                let v = client.call(Method::GET, "/api/v1/users", None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = v["users"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|u| {
                        let s = |k: &str| u[k].as_str().unwrap_or("-").to_string();
                        vec![
                            s("name"),
                            s("role"),
                            s("database"),
                            time(&u["created_at"]),
                            time(&u["password_set_at"]),
                            s("created_by"),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "DATABASE", "CREATED", "PASSWORD SET", "BY"], &rows);
            }
            UserCommand::Delete { name } => {
                client.call(Method::DELETE, &format!("/api/v1/users/{name}"), None).await?;
                println!("deleted user {name}");
            }
            UserCommand::Passwd { name, own } => {
                let current = if own { Some(read_password()?) } else { None };
                let password = read_password()?;
                let body = json!({ "password": password, "current": current });
                client.call(Method::POST, &format!("/api/v1/users/{name}/password"), Some(body)).await?;
                println!("password of {name} set; their sessions have ended");
            }
        }
        Ok(())
    })
}

pub(crate) fn login(c: LoginConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let password = read_password()?;
    let client = c.server.client()?;
    runtime.block_on(async {
        let body = json!({ "user": c.user, "password": password });
        let v = client.call(Method::POST, "/api/v1/login", Some(body)).await?;
        eprintln!(
            "logged in as {} (role {}) until {}; the session token:",
            v["user"].as_str().unwrap_or("?"),
            v["role"].as_str().unwrap_or("?"),
            time(&v["expires_at"])
        );
        println!("{}", v["token"].as_str().unwrap_or_default());
        Ok(())
    })
}

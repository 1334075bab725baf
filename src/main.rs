//! `tocsin`: the server and its command-line clients. This file only parses
//! flags and dispatches; each subcommand lives in `commands/`.

mod commands;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tocsin: a time-series database with a built-in alerting engine.
#[derive(Debug, Parser)]
#[command(name = "tocsin", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (zero configuration: data under ./tocsin-data).
    Serve(commands::serve::Config),
    /// Run one SQL statement against a running server and print the result.
    Sql(commands::sql::Config),
    /// Alert rule files: `tocsin rules check FILE...`.
    #[command(subcommand)]
    Rules(commands::rules::Command),
    /// Alerts of a running server: list, ack, unack, resolve.
    Alerts(commands::alerts::Config),
    /// Silences of a running server: list, add, expire.
    Silences(commands::alerts::SilenceConfig),
    /// Who is on call in each schedule (now or --at a time), and who is next.
    Oncall(commands::oncall::Config),
    /// One flow across every service: its log events and spans (by trace id).
    Trace(commands::trace::Config),
    /// Follow the log stream live, with filters.
    Tail(commands::tail::Config),
    /// The audit log: `tocsin audit verify` checks its hash chain.
    #[command(subcommand)]
    Audit(commands::audit::Command),
    /// API tokens of a running server: create, list, revoke.
    Token(commands::token::Config),
    /// Users of a running server (people, with passwords): create, list,
    /// delete, passwd.
    User(commands::user::Config),
    /// Log in as a user: prints a session token to use as --token.
    Login(commands::user::LoginConfig),
    /// Rebuild a lost or damaged manifest from the segments' own metadata
    /// (the server must be stopped).
    Repair(commands::repair::Config),
    /// Back up a running server into a directory (online; later runs copy
    /// only what is new).
    Backup(commands::backup::BackupConfig),
    /// Rebuild a data directory from a backup (the server need not run).
    Restore(commands::backup::RestoreConfig),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A client's output piped into `head` ends it quietly, as for other
        // Unix tools (Rust ignores SIGPIPE, and `println!` then panicked
        // with "Broken pipe"). The server keeps ignoring it: a client that
        // goes away must not end the server.
        // SAFETY: resetting a signal's disposition to its default, before
        // any thread is started; no handler runs Rust code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(c) => commands::serve::run(c),
        Command::Sql(c) => commands::sql::run(c),
        Command::Rules(c) => commands::rules::run(c),
        Command::Alerts(c) => commands::alerts::run(c),
        Command::Silences(c) => commands::alerts::run_silences(c),
        Command::Oncall(c) => commands::oncall::run(c),
        Command::Trace(c) => commands::trace::run(c),
        Command::Tail(c) => commands::tail::run(c),
        Command::Repair(c) => commands::repair::run(c),
        Command::Backup(c) => commands::backup::backup(c),
        Command::Restore(c) => commands::backup::restore(c),
        Command::Token(c) => commands::token::run(c),
        Command::User(c) => commands::user::run(c),
        Command::Login(c) => commands::user::login(c),
        Command::Audit(c) => commands::audit::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: an error whose message already
/// quotes its cause (`alerting: {0}` over the engine's error) would
/// otherwise print the cause twice.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// As `#[error("alerting: {0}")] Alerting(#[from] EngineError)`: the
    /// message quotes the source.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "alerting: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let inner = std::io::Error::other("a route notifies either a receiver or an escalation chain");
        let e = anyhow::Error::from(Quoting(inner)).context("cannot start");
        assert_eq!(
            super::chain(&e),
            "cannot start: alerting: a route notifies either a receiver or an escalation chain"
        );
        let plain = anyhow::anyhow!("disk full").context("persist failed");
        assert_eq!(super::chain(&plain), "persist failed: disk full");
    }
}

use clap::{Parser, Subcommand};
use kmodforge_server::cli::{run_token, TokenCommand};
use kmodforge_server::Config;
use tracing_subscriber::EnvFilter;

/// `kmodforge-server`: builds DKMS module sources in sandboxed per-kernel
/// containers and serves the modules. Without a subcommand it serves.
#[derive(Parser)]
#[command(
    name = "kmodforge-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API tokens in the data directory (`create`, `list`, `revoke`).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token(cmd)) = cli.command {
        return match run_token(cmd).await {
            Ok(out) => {
                print!("{out}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kmodforge-server token: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    init_tracing();
    let config = cli.config;
    let result = async {
        let state = kmodforge_server::init(&config).await?;
        kmodforge_server::serve(&config, state).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmodforge-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter =
        EnvFilter::try_from_env("KMODFORGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("KMODFORGE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

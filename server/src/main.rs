use clap::Parser;
use kmodforge_server::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter =
        EnvFilter::try_from_env("KMODFORGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("KMODFORGE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = Config::parse();
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

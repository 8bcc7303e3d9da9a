use tilewarm_server::config::ParseError;
use tilewarm_server::{start, Config};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = match Config::try_parse_checked(std::env::args_os()) {
        Ok(c) => c,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("tilewarm-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if config.postgis_print_ddl {
        return match tilewarm_server::origin::postgis::Layout::load(config.origin_config.as_deref())
        {
            Ok(layout) => {
                print!("{}", tilewarm_server::origin::postgis::ddl(&layout));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tilewarm-server: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    // An empty RUST_LOG is no RUST_LOG (it would be a filter that shows errors only).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok());
    if let Err(e) = tilewarm_server::config::check_log_level(&config.log_level) {
        eprintln!("tilewarm-server: {e}");
        return std::process::ExitCode::from(2);
    }
    let Some(filter) = filter else {
        eprintln!(
            "tilewarm-server: --log-level {:?} is not a level (error, warn, info, debug, trace) or a tracing directive",
            config.log_level
        );
        return std::process::ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tilewarm-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tilewarm-server: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

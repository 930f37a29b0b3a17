//! The `eventgate` command: `serve`, `genconfig`, `key` and `test-pattern`. Parses the command line,
//! loads configuration and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use eventgate::config::{self, Config};

/// jemalloc, so that memory freed when connections leave goes back to the system.
#[global_allocator]
static GLOBAL: eventgate::memory::Allocator = eventgate::memory::Allocator;

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "eventgate",
    version,
    about = "WebSocket event gateway with EventBridge patterns"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Write a commented, working configuration file with freshly generated secrets (stack
    /// id, app version id, ingest token) and print the matching API key and a curl line.
    Genconfig(GenconfigArgs),
    /// Print the API key clients must present.
    Key {
        /// The server secret (the configuration's `stack_id`).
        #[arg(long)]
        stack_id: String,
        /// Without it, the dev-mode key base64(StackId) is printed.
        #[arg(long)]
        app_version: Option<String>,
    },
    /// Check a pattern against an event: prints true/false, exit 0/1; invalid input exit 2.
    TestPattern {
        /// The pattern JSON.
        #[arg(long)]
        pattern: String,
        /// The event JSON.
        #[arg(long)]
        event: String,
    },
}

/// Shown under `eventgate serve --help`.
const SERVE_ENVIRONMENT_HELP: &str = "\
Environment:
  EVENTGATE_CONFIG      the configuration file (like --config)
  EVENTGATE_LOG         log filter, e.g. `info`, `debug`, `info,eventgate::sources=debug`
                        (default `info`; `eventgate=debug,info` with --dev)
  EVENTGATE_LOG_FORMAT  `text` (default) or `json` (one JSON object a line); the key
                        `log_format` in the file does the same
  EVENTGATE_<KEY>       every configuration key, e.g. EVENTGATE_STACK_ID,
                        EVENTGATE_DRAIN_PERIOD; see docs/operations.md
Logs go to stderr, coloured only on a terminal (and not with NO_COLOR set).
Exit codes: 0 after a clean shutdown (SIGTERM, Ctrl-C), 64 for a configuration error,
1 when the server fails while running.";

#[derive(clap::Args)]
struct GenconfigArgs {
    /// File to write; `-` prints the configuration on stdout (the key and curl line then go
    /// to stderr).
    #[arg(long, short, default_value = "eventgate.toml")]
    output: std::path::PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    force: bool,
    /// The `listen` address written into the file.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

#[derive(clap::Args)]
#[command(after_help = SERVE_ENVIRONMENT_HELP)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "EVENTGATE_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Dev mode: no config needed, 127.0.0.1:8080, generated stack id, debug logs, demo page.
    #[arg(long)]
    dev: bool,
    /// Address to bind, beats the file's `listen` and EVENTGATE_LISTEN (127.0.0.1:0 picks a
    /// free port).
    #[arg(long)]
    listen: Option<String>,
    /// The server secret every API key derives from (`stack_id`). In dev mode a new one is
    /// generated at every start, so the dev key changes; pass one to keep the key stable.
    #[arg(long)]
    stack_id: Option<String>,
    /// Interval of KeepAlive notifications and WebSocket pings, e.g. "30s"
    /// (`keepalive_interval`).
    #[arg(long)]
    keepalive_interval: Option<String>,
    /// Time a new connection has to send its Hello before it is closed, e.g. "10s"
    /// (`hello_timeout`).
    #[arg(long)]
    hello_timeout: Option<String>,
}

fn load_config(args: &ServeArgs) -> Result<Config, config::ConfigError> {
    let text = match &args.config {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| config::ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let mut overrides = Vec::new();
    let environment_dev = std::env::var("EVENTGATE_DEV").is_ok_and(|v| v == "1" || v == "true");
    if args.dev {
        overrides.push(("dev", toml::Value::Boolean(true)));
    }
    let file_sets_listen = text.as_deref().is_some_and(|t| t.contains("listen"));
    if (args.dev || environment_dev)
        && !file_sets_listen
        && std::env::var("EVENTGATE_LISTEN").is_err()
    {
        overrides.push(("listen", toml::Value::String("127.0.0.1:8080".into())));
    }
    for (key, value) in [
        ("listen", &args.listen),
        ("stack_id", &args.stack_id),
        ("keepalive_interval", &args.keepalive_interval),
        ("hello_timeout", &args.hello_timeout),
    ] {
        if let Some(value) = value {
            overrides.push((key, toml::Value::String(value.clone())));
        }
    }
    let mut config = config::load(text.as_deref(), std::env::vars(), overrides)?;
    config.preflight()?;
    if config.dev && config.stack_id.is_none() {
        config.stack_id = Some(uuid::Uuid::new_v4().to_string());
    }
    Ok(config)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("eventgate: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    eventgate::telemetry::init_logging(config.log_format, config.dev);
    for unknown in config::unknown_environment(std::env::vars()) {
        tracing::warn!("{unknown}");
    }
    raise_open_file_limit();
    let listener = match eventgate::listener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("eventgate: cannot listen on {}: {error}", config.listen);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before the first line is printed: SIGHUP from then on reloads instead of killing.
    let reload = eventgate::CertReload::new();
    reload_on_sighup(reload.clone());
    // Likewise SIGTERM and Ctrl-C: a script that signals right after the first line gets a
    // clean shutdown, not the default action (killed).
    let signals = shutdown_signal();
    let address = listener.local_addr().unwrap_or(config.listen);
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("listening on {scheme}://{address}");
    if config.dev
        && !config
            .stack_id
            .as_deref()
            .unwrap_or_default()
            .starts_with("sha256:")
    {
        let key = eventgate_protocol::header::api_key(
            config.stack_id.as_deref().unwrap_or_default(),
            None,
        );
        println!("websocket url: ws://{address}/");
        println!("api key: {key}");
        println!("demo: http://{address}/demo/");
        let admin_access = if config.admin_token.is_some() {
            "admin_token required"
        } else {
            "open to loopback clients in dev mode"
        };
        println!("admin: http://{address}/admin/ ({admin_access})");
        println!(
            "publish: curl -s -X POST http://{address}/events -H 'content-type: application/json' -d '{{\"source\":\"demo\",\"detail-type\":\"hello\",\"detail\":{{\"n\":1}}}}'"
        );
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signals.await;
        signal.cancel();
        // A second SIGTERM or Ctrl-C does not wait for the drain to finish.
        shutdown_signal().await;
        eprintln!("eventgate: second signal: exiting without finishing the drain");
        std::process::exit(1);
    });
    match eventgate::run_with_reload(config, listener, shutdown, reload).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventgate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Each connection is an open file, and soft limits are often 1,024: the soft limit is raised
/// to the hard one, as nginx's `worker_rlimit_nofile` and Go's runtime do.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// SIGHUP reloads the TLS certificate and key (a no-op without `[tls]`).
fn reload_on_sighup(reload: eventgate::CertReload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        reload.reload();
                    }
                });
            }
            Err(error) => eprintln!("eventgate: cannot listen for SIGHUP: {error}"),
        }
    }
    #[cfg(not(unix))]
    drop(reload);
}

/// Registers for SIGTERM and SIGINT (Ctrl-C) now; the future completes on the first of
/// them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn test_pattern(pattern: &str, event: &str) -> ExitCode {
    let pattern = serde_json::Value::String(pattern.to_owned());
    let event = serde_json::Value::String(event.to_owned());
    let limits = eventgate::config::Limits::default().pattern_limits();
    match eventgate::server::evaluate_pattern(&pattern, &event, &limits) {
        Ok(true) => {
            println!("true");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("false");
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn genconfig(args: &GenconfigArgs) -> ExitCode {
    use eventgate::genconfig;
    if let Err(error) = args.listen.parse::<std::net::SocketAddr>() {
        eprintln!("eventgate: --listen {:?}: {error}", args.listen);
        return ExitCode::from(EXIT_CONFIG);
    }
    let secrets = match genconfig::Secrets::generate() {
        Ok(secrets) => secrets,
        Err(error) => {
            eprintln!("eventgate: {error}");
            return ExitCode::FAILURE;
        }
    };
    let text = genconfig::render(&secrets, &args.listen);
    if args.output.as_os_str() == "-" {
        print!("{text}");
        eprint!(
            "{}",
            genconfig::next_steps(&secrets, "<file>", &args.listen)
        );
        return ExitCode::SUCCESS;
    }
    if let Err(error) = genconfig::write(&args.output, &text, args.force) {
        eprintln!("eventgate: {error}");
        return ExitCode::FAILURE;
    }
    let path = args.output.display().to_string();
    println!("wrote {path}");
    print!("{}", genconfig::next_steps(&secrets, &path, &args.listen));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Genconfig(args) => genconfig(&args),
        Command::Key {
            stack_id,
            app_version,
        } => {
            println!(
                "{}",
                eventgate_protocol::header::api_key(&stack_id, app_version.as_deref())
            );
            ExitCode::SUCCESS
        }
        Command::TestPattern { pattern, event } => test_pattern(&pattern, &event),
        Command::Serve(args) => match tokio::runtime::Runtime::new() {
            Ok(runtime) if !eventgate::memory::start_background_purging() => {
                eprintln!("eventgate: warning: the allocator's background purging did not start; freed memory is returned more slowly");
                runtime.block_on(serve(args))
            }
            Ok(runtime) => runtime.block_on(serve(args)),
            Err(error) => {
                eprintln!("eventgate: cannot start the runtime: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

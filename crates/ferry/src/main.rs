//! The `ferry` binary: `ferry serve` runs the broker; `ferry bench`
//! measures it; the other commands operate a running broker.

mod cli;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a request allocates and frees
/// many small buffers (frames, headers, records) across threads, and
/// glibc's malloc spent a fifth of the broker's CPU on them (see
/// BENCHMARKS.md, "Where the time went").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: a durable message broker speaking the Apache RocketMQ 5 gRPC protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a broker with embedded storage.
    Serve(Box<serve::ServeArgs>),
    /// Measure the commit log or a running broker (prints figures).
    Bench(ferry_bench::BenchArgs),
    /// Create, list, describe and delete topics.
    Topic(cli::topic::TopicArgs),
    /// Consumer groups: progress, lag, in-flight messages, policy.
    Group(cli::group::GroupArgs),
    /// Send messages (an argument, a file, or one per line of stdin).
    Send(cli::send::SendArgs),
    /// Receive messages as a consumer group and print them.
    Consume(cli::consume::ConsumeArgs),
    /// Look messages up by id or key, with their lifecycle.
    Message(cli::message::MessageArgs),
    /// Pending and discarded transactions.
    Tx(cli::tx::TxArgs),
    /// Dead letters of a consumer group, and re-drive.
    Dlq(cli::dlq::DlqArgs),
    /// Reliability harness: kill -9 loops with a history checker, file damage.
    Chaos(ferry_chaos::ChaosArgs),
    /// Publish a service's outbox table to the broker; inspect and tidy it.
    Outbox(cli::outbox::OutboxArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Operator commands log only warnings unless FERRY_LOG says otherwise:
    // their output is the answer, not the log.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // The benchmarks start many clients; each would log its start.
        Command::Bench(_) => "info,ferry_client=warn,async_nats=warn,lapin=warn",
        Command::Outbox(ref a) if a.is_relay() => "info",
        // Workers log their clients' reconnects after each kill; warnings
        // are what the run's logs are for.
        Command::Chaos(_) => "warn,ferry_client=error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => ferry_bench::run(args),
        Command::Topic(args) => cli::block_on(cli::topic::run(args)),
        Command::Group(args) => cli::block_on(cli::group::run(args)),
        Command::Send(args) => cli::block_on(cli::send::run(args)),
        Command::Consume(args) => cli::block_on(cli::consume::run(args)),
        Command::Message(args) => cli::block_on(cli::message::run(args)),
        Command::Tx(args) => cli::block_on(cli::tx::run(args)),
        Command::Dlq(args) => cli::block_on(cli::dlq::run(args)),
        Command::Outbox(args) => cli::outbox::run(args),
        Command::Chaos(args) => ferry_chaos::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

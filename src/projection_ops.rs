//! `purser projections ...`: see where every projection stands, rebuild
//! read models from the event store, reset them, retry parked streams.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use event_store::EventStore;
use projections::rebuild::{Phase, Progress, RebuildOptions};
use projections::status::{ParkedStream, ProjectionStatus, RebuildState};
use projections::Projection;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Options of `purser projections`.
#[derive(Debug, clap::Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// One line per projection: checkpoint, event-store head, lag in
    /// events, parked streams, rebuild running or interrupted.
    List,
    /// The same in detail, with every parked stream and the rebuild in
    /// progress.
    Status {
        /// Only this projection.
        name: Option<String>,
    },
    /// Replay the event store into shadow tables and swap them in; the Query
    /// API serves the old tables meanwhile. Resumes an interrupted rebuild.
    Rebuild(RebuildArgs),
    /// Empty a projection's read model: its tables, applied versions,
    /// parked streams, status and any interrupted rebuild. `rebuild`
    /// refills it.
    Reset {
        /// The projection to reset.
        name: String,
    },
    /// Retry the parked events of a projection: un-park its streams (or one)
    /// and apply their waiting events from the event store.
    Unpark {
        /// The projection.
        name: String,
        /// Only this stream (e.g. `account-0191...`).
        #[arg(long, value_name = "STREAM_ID")]
        stream: Option<String>,
        /// Attempts before an event that still fails parks its stream again.
        #[arg(long = "projection-max-attempts", env = "PURSER_PROJECTION_MAX_ATTEMPTS", default_value_t = projections::DEFAULT_MAX_ATTEMPTS,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: u32,
    },
}

/// Options of `purser projections rebuild`.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The projection to rebuild.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Rebuild every projection, one after the other.
    #[arg(long)]
    pub all: bool,
    /// Rebuild only this stream's rows (e.g. `account-0191...`), in place,
    /// in one transaction.
    #[arg(long, value_name = "STREAM_ID", conflicts_with_all = ["all", "restart"])]
    pub stream: Option<String>,
    /// Discard an interrupted rebuild and start over.
    #[arg(long)]
    pub restart: bool,
    /// Events replayed per transaction: the window folded in memory, so a
    /// row several of its events change is written once. About two windows
    /// are held in memory (about 0.5 GB for saga events at the default);
    /// lower it on a small machine.
    #[arg(long, default_value_t = projections::rebuild::DEFAULT_BATCH_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Replay at most this many events per second (default: no limit).
    #[arg(long, value_name = "EVENTS_PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rate: Option<u64>,
    /// Attempts before an event that fails to apply parks its stream.
    #[arg(long = "projection-max-attempts", env = "PURSER_PROJECTION_MAX_ATTEMPTS", default_value_t = projections::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

/// Connections the operations use.
pub const POOL_SIZE: u32 = 4;

pub async fn run(
    global: &GlobalArgs,
    args: ProjectionsArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    // Names are checked before connecting: a typo fails without a server.
    match &args.command {
        ProjectionsCommand::Status { name: Some(name) }
        | ProjectionsCommand::Reset { name }
        | ProjectionsCommand::Unpark { name, .. }
        | ProjectionsCommand::Rebuild(RebuildArgs {
            name: Some(name), ..
        }) => {
            projections::by_name(name)?;
        }
        _ => {}
    }
    let store = EventStore::new(db::open(global, POOL_SIZE).await?);
    match args.command {
        ProjectionsCommand::List => list(&store).await,
        ProjectionsCommand::Status { name } => status(&store, name.as_deref()).await,
        ProjectionsCommand::Rebuild(args) => rebuild(&store, &args, &shutdown).await,
        ProjectionsCommand::Reset { name } => {
            let projection = projections::by_name(&name)?;
            projections::operations::reset(projection.as_ref(), &store)
                .await
                .with_context(|| format!("resetting {name}"))?;
            println!(
                "{name}: read model emptied; run `purser projections rebuild {name}` to refill it"
            );
            Ok(())
        }
        ProjectionsCommand::Unpark {
            name,
            stream,
            max_attempts,
        } => unpark(&store, &name, stream.as_deref(), max_attempts).await,
    }
}

/// What `list` and `status` show of one projection.
struct Row {
    view: ProjectionStatus,
    parked: Vec<ParkedStream>,
    rebuild: Option<RebuildState>,
    running: bool,
}

async fn rows(store: &EventStore, only: Option<&str>) -> Result<Vec<Row>> {
    let pool = store.pool();
    let views = projections::status::all(pool)
        .await
        .context("reading the projections' progress")?;
    let mut rows = Vec::new();
    for view in views {
        if only.is_some_and(|name| name != view.name) {
            continue;
        }
        let parked = projections::status::parked_streams(pool, &view.name).await?;
        let rebuild = projections::status::rebuild_state(pool, &view.name).await?;
        let running = projections::rebuild::is_running(pool, &view.name).await?;
        rows.push(Row {
            view,
            parked,
            rebuild,
            running,
        });
    }
    Ok(rows)
}

impl Row {
    fn rebuild_summary(&self) -> String {
        match (&self.rebuild, self.running) {
            (Some(r), true) => format!("running ({}, {} events)", r.phase, r.events_done),
            (None, true) => "running".to_owned(),
            (Some(r), false) => format!("interrupted ({}, {} events)", r.phase, r.events_done),
            (None, false) => "-".to_owned(),
        }
    }
}

async fn list(store: &EventStore) -> Result<()> {
    let rows = rows(store, None).await?;
    println!(
        "{:<12} {:>12} {:>12} {:>10} {:>7}  {:<12} REBUILD",
        "PROJECTION", "CHECKPOINT", "HEAD", "LAG", "PARKED", "STATUS"
    );
    for row in &rows {
        let v = &row.view;
        println!(
            "{:<12} {:>12} {:>12} {:>10} {:>7}  {:<12} {}",
            v.name,
            v.checkpoint,
            v.head,
            v.lag_events,
            row.parked.len(),
            v.health,
            row.rebuild_summary()
        );
    }
    Ok(())
}

async fn status(store: &EventStore, only: Option<&str>) -> Result<()> {
    for row in rows(store, only).await? {
        let v = &row.view;
        println!("{}", v.name);
        println!("  status          {}", v.health);
        println!(
            "  checkpoint      {} (highest event-store position applied)",
            v.checkpoint
        );
        println!("  head            {}", v.head);
        println!("  lag             {} events", v.lag_events);
        println!("  events applied  {}", v.events_applied);
        match (&row.rebuild, row.running) {
            (Some(r), running) => println!(
                "  rebuild         {} ({}, {} events replayed, started {}, last batch {}){}",
                if running { "running" } else { "interrupted" },
                r.phase,
                r.events_done,
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                r.updated_at.format("%H:%M:%S UTC"),
                if running {
                    String::new()
                } else {
                    format!(
                        "; `purser projections rebuild {}` resumes it, --restart starts over",
                        v.name
                    )
                }
            ),
            (None, true) => println!("  rebuild         running"),
            (None, false) => println!("  rebuild         none"),
        }
        println!("  parked streams  {}", row.parked.len());
        for p in &row.parked {
            println!(
                "    {} at version {} (event {}, {} attempts, since {}): {}",
                p.stream_id,
                p.version,
                p.event_id,
                p.attempts,
                p.parked_at.format("%Y-%m-%d %H:%M:%S UTC"),
                p.error
            );
        }
    }
    Ok(())
}

async fn rebuild(
    store: &EventStore,
    args: &RebuildArgs,
    shutdown: &CancellationToken,
) -> Result<()> {
    let selected: Vec<Arc<dyn Projection>> = match &args.name {
        Some(name) => vec![projections::by_name(name)?],
        None => projections::all(),
    };
    if let Some(stream_id) = &args.stream {
        let projection = selected.into_iter().next().context("no projection named")?;
        let name = projection.name();
        let report = projections::operations::rebuild_stream(
            projection,
            store,
            stream_id,
            args.max_attempts,
        )
        .await
        .with_context(|| format!("rebuilding {stream_id} in {name}"))?;
        println!(
            "{name}: {stream_id} rebuilt from {} events{}",
            report.applied,
            if report.parked.is_empty() {
                ""
            } else {
                ", and parked by a failing event"
            }
        );
        return Ok(());
    }
    let options = RebuildOptions {
        batch_size: args.batch_size as usize,
        restart: args.restart,
        max_events_per_second: args.max_rate,
        max_attempts: args.max_attempts,
    };
    for projection in selected {
        let name = projection.name();
        let mut line = ProgressLine::new();
        let result = projections::rebuild::rebuild(
            projection,
            store,
            &options,
            shutdown,
            &mut |p: &Progress| line.show(p),
        )
        .await;
        line.finish();
        let report = result.with_context(|| format!("rebuilding {name}"))?;
        let secs = report.elapsed.as_secs_f64();
        let this_run = report.events - report.resumed_from;
        println!(
            "{name}: rebuilt from {} events{} in {secs:.1} s ({:.0} events/s) and swapped in; {} streams parked",
            report.events,
            if report.resumed_from > 0 {
                format!(" (resumed after {}, {this_run} this run)", report.resumed_from)
            } else {
                String::new()
            },
            if secs > 0.0 {
                this_run as f64 / secs
            } else {
                0.0
            },
            report.parked
        );
    }
    Ok(())
}

async fn unpark(
    store: &EventStore,
    name: &str,
    stream: Option<&str>,
    max_attempts: u32,
) -> Result<()> {
    let projector = projections::Projector::new(projections::by_name(name)?, store.clone())
        .with_max_attempts(max_attempts);
    let reports = match stream {
        Some(stream_id) => {
            let report = projector
                .unpark(stream_id)
                .await
                .with_context(|| format!("un-parking {stream_id} in {name}"))?;
            vec![(stream_id.to_owned(), report)]
        }
        None => projections::operations::unpark_all(&projector)
            .await
            .with_context(|| format!("un-parking the streams of {name}"))?,
    };
    if reports.is_empty() {
        println!("{name}: no parked stream");
    }
    for (stream_id, report) in reports {
        if report.parked.is_empty() {
            println!(
                "{name}: {stream_id} applied {} waiting events",
                report.applied
            );
        } else {
            println!(
                "{name}: {stream_id} applied {} events and is parked again",
                report.applied
            );
        }
    }
    Ok(())
}

/// A rebuild's progress: a bar redrawn in place on a terminal, a log line
/// every few seconds otherwise.
struct ProgressLine {
    terminal: bool,
    last: Option<(Instant, Phase)>,
    drawn: bool,
}

impl ProgressLine {
    const REDRAW: Duration = Duration::from_millis(100);
    const LOG_EVERY: Duration = Duration::from_secs(5);
    const WIDTH: usize = 30;

    fn new() -> Self {
        ProgressLine {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: &Progress) {
        let every = if self.terminal {
            Self::REDRAW
        } else {
            Self::LOG_EVERY
        };
        let due = match self.last {
            None => true,
            Some((at, phase)) => phase != p.phase || at.elapsed() >= every,
        };
        if !due {
            return;
        }
        self.last = Some((Instant::now(), p.phase));
        let eta = p
            .eta()
            .map_or_else(|| "-".to_owned(), |eta| format!("{}s", eta.as_secs()));
        if self.terminal {
            let fraction = if p.events_total == 0 {
                1.0
            } else {
                p.events_done as f64 / p.events_total as f64
            };
            let filled = ((fraction * Self::WIDTH as f64) as usize).min(Self::WIDTH);
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r\x1b[2K{} {:<8} [{}{}] {}/{} {:>3.0}%  {:.0} events/s  ETA {eta}",
                p.projection,
                p.phase.as_str(),
                "#".repeat(filled),
                " ".repeat(Self::WIDTH - filled),
                p.events_done,
                p.events_total,
                fraction * 100.0,
                p.rate(),
            );
            let _ = stderr.flush();
            self.drawn = true;
        } else {
            tracing::info!(
                projection = p.projection,
                phase = p.phase.as_str(),
                events_done = p.events_done,
                events_total = p.events_total,
                events_per_second = format!("{:.0}", p.rate()),
                eta = %eta,
                "rebuild progress"
            );
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

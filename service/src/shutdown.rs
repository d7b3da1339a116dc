//! The process's signal handler: SIGTERM or ctrl-c cancels the shutdown
//! token every component watches. `purser` installs it once, for the
//! commands that run until stopped.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or ctrl-c (in a task of its own).
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = signal() => shutdown.cancel(),
            () = shutdown.cancelled() => {}
        }
    });
}

/// Completes on SIGTERM or ctrl-c.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

//! `server backup`: a running server copies its own data directory (`store::backup` says
//! how the copy stays consistent while it goes on serving). With the server stopped,
//! `offline.rs` copies the directory without opening the store.

use std::path::PathBuf;

use super::{Answer, Ctx, Failure};

/// Backs the running server's data up into `out`, on the blocking pool.
pub async fn online(ctx: &Ctx, out: String) -> Answer {
    if ctx.shared.config.cluster {
        // Everything a cluster keeps is PostgreSQL's: its own tools copy it consistently.
        return Err(Failure(
            "a cluster node keeps no data of its own: back the cluster up with pg_dump \
             (see README, Running several nodes)"
                .into(),
        ));
    }
    // Noted before the database is copied: see `store::backup`.
    let log_end = ctx.shared.reader.log_end();
    let log_end = log_end.ok_or_else(|| Failure("a cluster node has no message log".into()))?;
    let data_dir = ctx.shared.config.data_dir.clone();
    let out = PathBuf::from(out);
    let started = std::time::Instant::now();
    let manifest = tokio::task::spawn_blocking(move || {
        crate::store::backup::backup(&data_dir, &out, Some(log_end))
    })
    .await?
    .map_err(|e| Failure(format!("{e:#}")))?;
    tracing::info!(
        messages = manifest.messages,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup written"
    );
    Ok(serde_json::to_value(manifest)?)
}

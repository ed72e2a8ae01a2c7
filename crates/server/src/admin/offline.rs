//! `parley admin` with the server stopped: the same handlers, over the store and hub opened
//! in this process as the server opens them (no listeners), under the data directory's
//! lock. Opening reads the message log as a start does, so it takes as long as a start.
//! A backup only copies files (`store::backup`), without opening the store.

use anyhow::Context;

use super::{handle, Answer, Ctx, DataLock, Failure, Request};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::monitor::Monitor;

/// Runs `request` on the data of `config` (whose server must be stopped).
pub async fn run_offline(config: Config, request: Request) -> anyhow::Result<Answer> {
    anyhow::ensure!(
        request.works_offline(),
        "this command needs a running server (no admin socket in {})",
        config.data_dir.display()
    );
    anyhow::ensure!(
        !config.cluster,
        "a cluster node's data is in PostgreSQL: run parley admin against a running node"
    );
    let _lock = DataLock::try_take(&config.data_dir)?.with_context(|| {
        format!(
            "{} is locked by a server that is not answering on its admin socket yet \
             (starting?); try again",
            config.data_dir.display()
        )
    })?;
    if let Request::ServerBackup { out } = request {
        // Files only: the store is not opened (nothing of the directory is written).
        let dir = config.data_dir.clone();
        let out = std::path::PathBuf::from(out);
        let copied =
            tokio::task::spawn_blocking(move || crate::store::backup::backup(&dir, &out, None))
                .await?;
        return Ok(match copied {
            Ok(manifest) => Ok(serde_json::to_value(manifest)?),
            Err(e) => Err(Failure(format!("{e:#}"))),
        });
    }
    let monitor = std::sync::Arc::new(Monitor::new(Metrics::new(&config.data_dir)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (shared, hub_thread, _cluster) =
        crate::node::open_core(config, monitor, shutdown, None).await?;
    let ctx = Ctx {
        shared,
        control: None,
    };
    let answer = handle(request, &ctx).await;
    crate::node::close_core(ctx.shared, hub_thread).await?;
    Ok(answer)
}

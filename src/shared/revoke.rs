//! Revocation on every replica: `POST /admin/revoke` publishes the user id on the
//! `<prefix>revoke` channel; every replica subscribes and forgets that user's cached
//! identities and tokens, within the time a message takes (milliseconds). A replica that was
//! disconnected resubscribes; what it missed meanwhile expires with the caches' TTLs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Shared;
use crate::state::State;

const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

impl Shared {
    fn channel(&self) -> String {
        format!("{}revoke", self.0.prefix)
    }

    /// Tells every replica to forget `user`. False when Redis could not take it.
    pub async fn publish_revoke(&self, user: &str) -> bool {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(user);
        self.run(async |conn| conn.query::<i64>(&cmd).await).await.is_some()
    }
}

/// For the life of the process: follows the shared state of the config in service, subscribed
/// to its revocation channel, and forgets what it is told to.
pub async fn listen(state: Arc<State>) {
    loop {
        let Some(shared) = state.gateway.load().shared.clone() else {
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            continue;
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(1), shared.0.pubsub.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(RESUBSCRIBE_EVERY).await;
                continue;
            }
        };
        if pubsub.subscribe(shared.channel()).await.is_err() {
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            continue;
        }
        tracing::debug!("shared state: subscribed to revocations");
        let mut messages = pubsub.into_on_message();
        loop {
            // Look up now and then whether a reload replaced the shared state.
            match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Ok(Some(msg)) => {
                    if let Ok(user) = msg.get_payload::<String>() {
                        state.stores.forget_user(&user);
                        tracing::debug!("shared state: revocation received");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let current = state.gateway.load().shared.clone();
                    if !current.is_some_and(|c| Arc::ptr_eq(&c.0, &shared.0)) {
                        break;
                    }
                }
            }
        }
    }
}

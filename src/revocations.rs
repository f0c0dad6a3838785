//! The revocation listener: for the life of the process, follows the shared state of the
//! config in service, subscribed to its revocation channel, and forgets on this replica what
//! any replica revoked (SPEC §4 `POST /admin/revoke`, §7).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::state::State;

const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

pub async fn listen(state: Arc<State>) {
    loop {
        let Some(shared) = state.gateway.load().shared.clone() else {
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            continue;
        };
        let Some(mut messages) = shared.subscribe().await else {
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            continue;
        };
        tracing::debug!("shared state: subscribed to revocations");
        loop {
            // Look now and then whether a reload replaced the shared state.
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
                    if !current.is_some_and(|c| c.same(&shared)) {
                        break;
                    }
                }
            }
        }
    }
}

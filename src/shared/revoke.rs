//! Revocation on every replica: `POST /admin/revoke` publishes the user id on the
//! `<prefix>revoke` channel; every replica subscribes and forgets that user's cached
//! identities and tokens, within the time a message takes (milliseconds). A replica that was
//! disconnected resubscribes; what it missed meanwhile expires with the caches' TTLs.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;

impl Shared {
    fn channel(&self) -> String {
        format!("{}revoke", self.0.prefix)
    }

    /// Deletes `user`'s cached identities and tokens in Redis, then tells every replica to
    /// forget its own. False when Redis could not take it.
    pub async fn revoke(&self, user: &str) -> bool {
        if !self.next_generation(user).await || !self.cache_forget_user(user).await {
            return false;
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(user);
        self.run(async |conn| conn.query::<i64>(&cmd).await).await.is_some()
    }

    /// Subscribes to revocations (within a second, or None).
    pub async fn subscribe(&self) -> Option<redis::aio::PubSubStream> {
        let connecting = self.0.pubsub.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(Duration::from_secs(1), connecting).await.ok()?.ok()?;
        pubsub.subscribe(self.channel()).await.ok()?;
        Some(pubsub.into_on_message())
    }

    /// Whether two handles are the same shared state.
    pub fn same(&self, other: &Shared) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

//! The gateway's control session with the broker: connected lazily, dropped when
//! the broker goes away, and made again on the next request, so that the
//! gateway recovers by itself when the broker returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use framebroker_client::{Client, Error as ClientError};

use crate::errors::ApiError;

/// One shared control connection (`framebroker-client` calls are blocking: they
/// run on tokio's blocking pool).
pub struct BrokerLink {
    socket: PathBuf,
    client: Mutex<Option<Client>>,
}

impl BrokerLink {
    pub fn new(socket: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(BrokerLink {
            socket: socket.into(),
            client: Mutex::new(None),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        framebroker_proto::lock::lock(&self.client)
    }

    /// The cached client, or a new connection. `true` when it is new.
    fn client(&self) -> Result<(Client, bool), ClientError> {
        if let Some(c) = self.slot().as_ref() {
            return Ok((c.clone(), false));
        }
        let c = Client::connect_to(&self.socket)?;
        *self.slot() = Some(c.clone());
        Ok((c, true))
    }

    /// Runs `f` with a connected client, blocking. A call on a cached connection
    /// that turns out dead (the broker restarted) is retried once on a new one.
    pub fn call_blocking<T>(
        &self,
        f: impl Fn(&Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let (client, fresh) = self.client()?;
        match f(&client) {
            Err(e) if e.is_connection_lost() => {
                self.slot().take();
                if fresh {
                    return Err(e);
                }
                tracing::info!(error = %crate::errors::redact(&e.to_string()), "broker connection lost; reconnecting");
                let (client, _) = self.client()?;
                let r = f(&client);
                if matches!(&r, Err(e) if e.is_connection_lost()) {
                    self.slot().take();
                }
                r
            }
            r => r,
        }
    }

    /// [`call_blocking`](Self::call_blocking) on the blocking pool, with the error
    /// turned into an API answer.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Fn(&Client) -> Result<T, ClientError> + Send + 'static,
    {
        let link = self.clone();
        tokio::task::spawn_blocking(move || link.call_blocking(f))
            .await
            .map_err(|e| ApiError::internal(format!("broker call panicked: {e}")))?
            .map_err(|e| ApiError::from_client(&e))
    }
}

//! The connection to the coordinator: the API key (environment or file, never a flag), the
//! bearer interceptor and deadlines on unary calls. The key is never printed, logged or put in
//! an error message.

use std::{future::Future, path::Path, time::Duration};

use payments_client::{Bearer, Client, TlsFiles, WatchClient};
use tonic::{Request, Response, Status, transport::Endpoint};

use crate::exit::Failure;

/// The environment variable holding the API key.
pub const KEY_ENV: &str = "PAYCTL_API_KEY";

/// Time allowed beyond a unary call's deadline for its answer to arrive before payctl gives up
/// on its own (the server answers shortly before the deadline it was sent).
const GRACE: Duration = Duration::from_secs(1);

/// One connection, with the key and the unary deadline. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    watch: WatchClient,
    timeout: Duration,
}

impl Conn {
    /// Checks the URL, the TLS files and the key, then connects now (so an unreachable
    /// coordinator, or one that refuses the TLS handshake, fails here, with exit 4).
    pub async fn connect(
        server: &str,
        tls: &TlsFiles,
        key_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Conn, Failure> {
        Endpoint::from_shared(server.to_owned())
            .map_err(|_| Failure::Usage(format!("--server {server} is not a URL")))?;
        let bearer = match load_key(key_file)? {
            Some(key) => Bearer::new(&key).map_err(|e| Failure::Usage(e.to_string()))?,
            None => {
                eprintln!(
                    "warning: no API key: set {KEY_ENV} or --key-file (PAYCTL_KEY_FILE); \
                     calling without one"
                );
                Bearer::anonymous()
            }
        };
        let endpoint =
            payments_client::endpoint(server, tls).map_err(|e| Failure::Usage(format!("{e:#}")))?;
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::Unreachable(
                anyhow::Error::new(e).context(format!("connecting to the coordinator at {server}")),
            )
        })?;
        Ok(Conn {
            watch: WatchClient::with_bearer(channel, bearer),
            timeout,
        })
    }

    /// The generated client (with the key).
    pub fn client(&self) -> Client {
        self.watch.client()
    }

    /// The deadline of unary calls (`--timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stream side (`WatchOrder`, `WatchEvents`, resuming followers).
    pub fn watch(&self) -> &WatchClient {
        &self.watch
    }

    /// A request carrying the unary deadline (`grpc-timeout`).
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits a unary call, giving up (DEADLINE_EXCEEDED) shortly after its deadline even if
    /// the server never answers.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout + GRACE, call).await {
            Ok(answer) => answer.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {:?} (--timeout)",
                self.timeout
            ))),
        }
    }
}

/// The API key: from `key_file` if given, else from `PAYCTL_API_KEY`; `None` if neither.
/// Surrounding whitespace (a file's final newline) is trimmed.
pub fn load_key(key_file: Option<&Path>) -> Result<Option<String>, Failure> {
    let key = match key_file {
        Some(path) => Some(read_key_file(path)?),
        None => std::env::var(KEY_ENV).ok(),
    };
    Ok(key
        .map(|k| k.trim().to_owned())
        .filter(|key| !key.is_empty()))
}

fn read_key_file(path: &Path) -> Result<String, Failure> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| Failure::Usage(format!("cannot read the key file {shown}: {e}")))?;
    check_private(path, &metadata)?;
    let key = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read the key file {shown}: {e}")))?;
    if key.trim().is_empty() {
        return Err(Failure::Usage(format!("the key file {shown} is empty")));
    }
    Ok(key)
}

/// Like ssh with a private key: a key file other users can read is refused (the key must be
/// considered leaked and the file fixed), with the command that fixes it.
#[cfg(unix)]
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(Failure::Usage(format!(
            "the key file {shown} is accessible by other users (mode {mode:03o}); \
             run `chmod 600 {shown}` (and consider the key exposed)",
            shown = path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), Failure> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(name: &str, contents: &str, mode: u32) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("payctl-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_key_file_is_read_and_trimmed() {
        let path = key_file("ok", "  pk_test_secret\n", 0o600);
        assert_eq!(
            load_key(Some(&path)).unwrap().as_deref(),
            Some("pk_test_secret")
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_world_readable_key_file_is_refused_without_showing_the_key() {
        let path = key_file("open", "pk_test_secret\n", 0o644);
        let Err(Failure::Usage(message)) = load_key(Some(&path)) else {
            panic!("accepted a world-readable key file");
        };
        assert!(message.contains("chmod 600"), "{message}");
        assert!(!message.contains("pk_test_secret"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_empty_or_missing_key_file_is_a_usage_error() {
        let path = key_file("empty", " \n", 0o600);
        assert!(matches!(load_key(Some(&path)), Err(Failure::Usage(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(load_key(Some(&path)), Err(Failure::Usage(_))));
    }
}

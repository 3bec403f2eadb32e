//! `wasi:http` outgoing requests, sent only where the policy allows.
//!
//! The request's host is checked like a socket's: a name must be granted
//! before it is looked up (here, by the host), and the connection goes only
//! to an address the policy allows for that name. The request then goes out
//! over that one connection (HTTP/1.1, or HTTPS with rustls, trusting the
//! Mozilla roots wasmtime-wasi-http's own sender uses and the device's CA
//! bundle), so no second lookup can take it elsewhere. A refusal is
//! `HTTP-request-denied` to the guest.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::http::uri::Scheme;
use hyper::http::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use kelp_core::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::policy::NetRun;

/// How long a lookup and then a connection may take when the guest sets no
/// timeout of its own. Long enough for a slow mobile link; short enough that
/// a dead host does not hold a request (and its memory) for wasmtime's ten
/// minutes.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the first byte of a response may take when the guest sets no
/// timeout of its own.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest pause between two parts of a response's body when the guest
/// sets no timeout of its own: a server that stops sending mid-body frees
/// the connection and the guest gets `connection-read-timeout`.
pub const DEFAULT_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for NetRun {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> Box<dyn Future<Output = Result<(Response<WasiBody>, IoFuture), Error>> + Send> {
        let run = self.clone();
        Box::new(async move { run.send(request, options).await })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl NetRun {
    async fn send(
        &self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(Response<WasiBody>, IoFuture), Error> {
        let permit = self
            .http_connection()
            .ok_or(Error::ConnectionLimitReached)?;
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_BETWEEN_BYTES_TIMEOUT);
        let uri = request.uri();
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();

        let (candidates, name) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![SocketAddr::new(ip, port)], None),
            Err(_) => {
                if self.may_resolve(&host, Some(port)).is_err() {
                    return Err(Error::HttpRequestDenied);
                }
                let found =
                    tokio::time::timeout(connect_timeout, tokio::net::lookup_host((&*host, port)))
                        .await
                        .map_err(|_| Error::DnsTimeout)?
                        .map_err(|e| Error::DnsError {
                            rcode: Some(e.to_string()),
                            info_code: None,
                        })?;
                (found.collect(), Some(host.as_str()))
            }
        };
        let allowed: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|addr| self.may_connect_as(Transport::Tcp, *addr, name, true))
            .collect();
        if allowed.is_empty() {
            return Err(Error::HttpRequestDenied);
        }

        let stream = tokio::time::timeout(connect_timeout, connect_any(&allowed))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        let stream: Box<dyn Io> = if tls {
            let server_name = match host.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => rustls::pki_types::ServerName::try_from(host.clone())?,
            };
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let stream =
                tokio::time::timeout(connect_timeout, connector.connect(server_name, stream))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(Error::Tls)?;
            Box::new(stream)
        } else {
            Box::new(stream)
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)).await?;
        let connection = wasmtime_wasi::runtime::spawn(connection);

        // The request line carries the path only; the host travels in the
        // `host` header wasmtime-wasi-http set from the authority.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        let response = response.map(|body| {
            BetweenBytes::new(body.map_err(Error::from), between_bytes_timeout).boxed_unsync()
        });
        let io: IoFuture = Box::new(async move {
            let done = connection.await.map_err(Error::from);
            drop(permit);
            done
        });
        Ok((response, io))
    }
}

/// A response body that fails with `connection-read-timeout` when `wait`
/// passes without a part of it arriving.
struct BetweenBytes<B> {
    body: B,
    wait: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> BetweenBytes<B> {
    fn new(body: B, wait: Duration) -> Self {
        BetweenBytes {
            body,
            wait,
            deadline: Box::pin(tokio::time::sleep(wait)),
        }
    }
}

impl<B> hyper::body::Body for BetweenBytes<B>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = Error> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.wait;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The first of `addrs` that answers.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = Error::ConnectionRefused;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused;
            }
            Err(e) => last = Error::Connect(e),
        }
    }
    Err(last)
}

/// One client configuration for every request: the roots are read once.
/// They are Mozilla's (built in, so a minimal OS image needs no CA bundle)
/// and the device's own bundle where it has one (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR` or the system's), so a private CA on the local network is
/// trusted once the operator installs it.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "skipped part of the device's CA bundle");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "device CA certificates");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::InternalError(Some(e.to_string())))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;

    /// A body that sends `parts` and then nothing, without ending.
    fn stalling(
        parts: &[&'static str],
    ) -> impl hyper::body::Body<Data = bytes::Bytes, Error = Error> + Unpin {
        let frames: Vec<Result<Frame<bytes::Bytes>, Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(bytes::Bytes::from_static(p.as_bytes()))))
            .collect();
        use futures_util::StreamExt;
        http_body_util::StreamBody::new(
            futures_util::stream::iter(frames).chain(futures_util::stream::pending()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_ends_in_a_read_timeout() {
        let wait = Duration::from_secs(5);
        let mut body = BetweenBytes::new(stalling(&["one", "two"]), wait);
        let start = tokio::time::Instant::now();
        // Parts that arrive are passed on, each restarting the wait.
        for part in ["one", "two"] {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), part);
        }
        let end = body.frame().await.unwrap();
        assert!(matches!(end, Err(Error::ConnectionReadTimeout)), "{end:?}");
        assert_eq!(start.elapsed(), wait);
    }
}

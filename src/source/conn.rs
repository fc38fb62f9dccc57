//! A replication-mode connection: postgres-protocol messages over a tokio socket.
//!
//! tokio-postgres has no replication mode, so this speaks the startup,
//! authentication, simple-query and CopyBoth parts of the protocol itself.

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::error::SourceError;
use super::wire::{self, StreamMessage};
use crate::pg::tls::{describe_handshake_failure, Attempt};
use crate::pg::{ConnInfo, ConnectError};

trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Socket for T {}

/// A frame read from the server while streaming.
pub enum StreamFrame {
    CopyData(Bytes),
    /// The server ended the COPY (e.g. on shutdown).
    CopyDone,
}

pub struct ReplicationConnection {
    socket: Box<dyn Socket>,
    /// The TCP socket under `socket` (and under TLS, if any), for its
    /// receive low-water mark; None on a Unix socket.
    tcp: Option<std::os::fd::RawFd>,
    /// The low-water mark set on `tcp`: 1, the kernel's default, until raised.
    low_water: usize,
    read: BytesMut,
    write: BytesMut,
    parameters: HashMap<String, String>,
}

impl ReplicationConnection {
    /// Connects with `replication=database` and authenticates, making the
    /// attempts the connection's `sslmode` allows (see [`crate::pg::tls`]).
    pub async fn connect(info: &ConnInfo) -> Result<Self, SourceError> {
        let attempts = info.attempts();
        let mut outcome = Err(SourceError::Closed);
        for (i, attempt) in attempts.iter().enumerate() {
            // The whole handshake is bounded: a black-holed link answers nothing.
            outcome =
                tokio::time::timeout(info.connect_timeout(), Self::connect_once(info, *attempt))
                    .await
                    .unwrap_or_else(|_| {
                        Err(SourceError::Unreachable {
                            target: info.describe(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no answer to the connection handshake in time",
                            ),
                        })
                    });
            match &outcome {
                Err(SourceError::AuthFailed { code, .. })
                    if code == "28000" && i + 1 < attempts.len() =>
                {
                    continue
                }
                _ => break,
            }
        }
        outcome
    }

    async fn connect_once(info: &ConnInfo, attempt: Attempt) -> Result<Self, SourceError> {
        let config = info.config();
        let target = info.describe();
        let user = info.user().to_string();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let unreachable = |source| SourceError::Unreachable {
            target: target.clone(),
            source,
        };
        let mut tcp = None;
        let socket: Box<dyn Socket> = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(unreachable)?,
                )
            }
            _ => {
                let host = info.host_name();
                let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(unreachable)?;
                stream.set_nodelay(true).map_err(unreachable)?;
                tcp = Some(std::os::fd::AsRawFd::as_raw_fd(&stream));
                match attempt {
                    Attempt::Plain => Box::new(stream),
                    Attempt::Tls { or_plain } => secure(stream, info, or_plain).await?,
                }
            }
        };
        let mut conn = ReplicationConnection {
            socket,
            tcp,
            low_water: 1,
            read: BytesMut::with_capacity(1 << 16),
            write: BytesMut::new(),
            parameters: HashMap::new(),
        };
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            (
                "application_name",
                config.get_application_name().unwrap_or("tidemark"),
            ),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.write)?;
        conn.flush().await?;
        match conn.authenticate(config, &user, &target).await {
            Ok(()) => Ok(conn),
            Err(e) => Err(match &e {
                SourceError::AuthFailed { code, message, .. } => info
                    .plain_refused(attempt, Some((code, message)))
                    .map_or(e, SourceError::Connect),
                _ => e,
            }),
        }
    }

    async fn authenticate(
        &mut self,
        config: &tokio_postgres::Config,
        user: &str,
        target: &str,
    ) -> Result<(), SourceError> {
        let password = || {
            config
                .get_password()
                .ok_or_else(|| SourceError::PasswordMissing {
                    target: target.to_string(),
                })
        };
        let auth_error = |e: SourceError| match e {
            SourceError::Server { code, message } if code.starts_with("28") => {
                SourceError::AuthFailed {
                    user: user.to_string(),
                    target: target.to_string(),
                    code,
                    message,
                }
            }
            other => other,
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.next_message().await.map_err(auth_error)? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.write)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next()? {
                        offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(SourceError::UnsupportedAuth(
                            "SASL without SCRAM-SHA-256".into(),
                        ));
                    }
                    let state =
                        sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        state.message(),
                        &mut self.write,
                    )?;
                    self.flush().await?;
                    scram = Some(state);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        SourceError::Protocol("SASL continue before SASL start".into())
                    })?;
                    state.update(body.data()).map_err(|e| {
                        auth_error(SourceError::Server {
                            code: "28P01".into(),
                            message: e.to_string(),
                        })
                    })?;
                    frontend::sasl_response(state.message(), &mut self.write)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        SourceError::Protocol("SASL final before SASL start".into())
                    })?;
                    state.finish(body.data()).map_err(|e| {
                        auth_error(SourceError::Server {
                            code: "28P01".into(),
                            message: e.to_string(),
                        })
                    })?;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationGssContinue(_) => {
                    return Err(SourceError::UnsupportedAuth("GSS/SSPI/Kerberos".into()));
                }
                backend::Message::ParameterStatus(body) => {
                    self.parameters
                        .insert(body.name()?.to_string(), body.value()?.to_string());
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => {
                    return Err(SourceError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
        }
    }

    /// A run-time parameter the server reported at startup (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        self.socket.write_all(&self.write).await?;
        self.socket.flush().await?;
        self.write.clear();
        Ok(())
    }

    /// Reads more bytes from the socket as soon as any arrive; returns how
    /// many. Cancel-safe: usable in `select!`.
    pub async fn fill(&mut self) -> Result<usize, SourceError> {
        self.set_low_water(1)?;
        self.read_more().await
    }

    /// Reads more bytes once `bytes` are queued or `until` has passed,
    /// whichever is first: one wakeup per gulp, not one per arriving
    /// segment. Cancel-safe: usable in `select!`.
    pub async fn fill_gathering(
        &mut self,
        bytes: usize,
        until: Instant,
    ) -> Result<usize, SourceError> {
        if Instant::now() < until {
            self.set_low_water(bytes)?;
            if let Ok(read) = tokio::time::timeout_at(until.into(), self.read_more()).await {
                return read;
            }
        }
        // Lowering the mark wakes the read at once if anything is queued.
        self.fill().await
    }

    async fn read_more(&mut self) -> Result<usize, SourceError> {
        if self.read.capacity() - self.read.len() < 8192.max(self.low_water) {
            self.read.reserve((1 << 16).max(2 * self.low_water));
        }
        match self.socket.read_buf(&mut self.read).await? {
            0 => Err(SourceError::Closed),
            read => Ok(read),
        }
    }

    /// Has the kernel report the socket readable only once `bytes` are
    /// queued (SO_RCVLOWAT). Lowering the mark reports it at once if the
    /// queue already holds that much. A read still takes whatever is queued.
    fn set_low_water(&mut self, bytes: usize) -> Result<(), SourceError> {
        let Some(fd) = self.tcp else {
            return Ok(());
        };
        if bytes == self.low_water {
            return Ok(());
        }
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is the socket `self.socket` owns, open while `self` lives;
        // the option value is a c_int on the stack, passed with its size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        self.low_water = bytes;
        Ok(())
    }

    /// Splits one whole message (tag, length, body) off the read buffer, if there is one.
    fn take_frame(&mut self) -> Result<Option<BytesMut>, SourceError> {
        wire::split_message(&mut self.read).map_err(|e| SourceError::Protocol(e.to_string()))
    }

    async fn next_message(&mut self) -> Result<backend::Message, SourceError> {
        loop {
            if let Some(mut frame) = self.take_frame()? {
                return match backend::Message::parse(&mut frame)? {
                    Some(backend::Message::ErrorResponse(body)) => Err(server_error(body)),
                    Some(message) => Ok(message),
                    None => Err(SourceError::Protocol("incomplete message".into())),
                };
            }
            self.fill().await?;
        }
    }

    /// Runs a replication command or query; returns the rows of its result as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await {
                Ok(backend::Message::DataRow(row)) => {
                    let buffer = row.buffer();
                    let values = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()?;
                    rows.push(values);
                }
                Ok(backend::Message::ReadyForQuery(_)) => break,
                Ok(_) => {}
                Err(e @ SourceError::Server { .. }) => error = Some(e),
                Err(e) => return Err(e),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends START_REPLICATION and waits for the server to enter CopyBoth mode.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), SourceError> {
        frontend::query(command, &mut self.write)?;
        self.flush().await?;
        loop {
            while let Some(frame) = self.take_frame()? {
                match frame[0] {
                    b'W' => return Ok(()),
                    b'N' | b'S' => {}
                    _ => {
                        let mut frame = frame;
                        return match backend::Message::parse(&mut frame)? {
                            Some(backend::Message::ErrorResponse(body)) => Err(server_error(body)),
                            _ => Err(SourceError::Protocol(
                                "expected CopyBothResponse to START_REPLICATION".into(),
                            )),
                        };
                    }
                }
            }
            self.fill().await?;
        }
    }

    /// The next CopyData payload already buffered, without waiting for the socket.
    pub fn try_next_frame(&mut self) -> Result<Option<StreamFrame>, SourceError> {
        while let Some(message) = self.take_frame()? {
            match wire::stream_message(message) {
                StreamMessage::CopyData(data) => return Ok(Some(StreamFrame::CopyData(data))),
                StreamMessage::CopyDone => return Ok(Some(StreamFrame::CopyDone)),
                StreamMessage::Notice => {}
                // The tag is taken before parsing, which consumes the message.
                StreamMessage::Other(tag, mut message) => {
                    return match backend::Message::parse(&mut message)? {
                        Some(backend::Message::ErrorResponse(body)) => Err(server_error(body)),
                        _ => Err(SourceError::Protocol(format!(
                            "unexpected message {:?} during replication",
                            char::from(tag)
                        ))),
                    };
                }
            }
        }
        Ok(None)
    }

    pub async fn send_copy_data(&mut self, data: Bytes) -> Result<(), SourceError> {
        frontend::CopyData::new(data)?.write(&mut self.write);
        self.flush().await
    }

    /// Ends CopyBoth mode cleanly: the server then has processed every status update sent before.
    pub async fn finish_copy(&mut self) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.write);
        self.flush().await?;
        loop {
            while let Some(mut frame) = self.take_frame()? {
                if frame[0] == b'd' || frame[0] == b'c' {
                    continue;
                }
                match backend::Message::parse(&mut frame)? {
                    Some(backend::Message::ReadyForQuery(_)) => {
                        frontend::terminate(&mut self.write);
                        return self.flush().await;
                    }
                    Some(backend::Message::ErrorResponse(body)) => return Err(server_error(body)),
                    _ => {}
                }
            }
            self.fill().await?;
        }
    }
}

/// Asks the server for TLS (SSLRequest) and, if it agrees, shakes hands.
async fn secure(
    mut stream: tokio::net::TcpStream,
    info: &ConnInfo,
    or_plain: bool,
) -> Result<Box<dyn Socket>, SourceError> {
    let tls = info.tls().client_config().map_err(ConnectError::from)?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    match stream.read_u8().await? {
        b'S' => {
            let host = info.host_name();
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                ConnectError::Handshake {
                    target: info.describe(),
                    reason: format!("{host} is not a host name TLS can check"),
                }
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| ConnectError::Handshake {
                    target: info.describe(),
                    reason: describe_handshake_failure(&e, &host, info.tls().mode),
                })?;
            Ok(Box::new(stream))
        }
        b'N' if or_plain => Ok(Box::new(stream)),
        b'N' => Err(ConnectError::ServerWithoutTls {
            target: info.describe(),
            mode: info.tls().mode.as_str(),
        }
        .into()),
        other => Err(SourceError::Protocol(format!(
            "the server answered the TLS request with {other:#04x}, not S or N"
        ))),
    }
}

fn server_error(body: backend::ErrorResponseBody) -> SourceError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    SourceError::Server { code, message }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const GATHER: usize = 256 << 10;
    /// Far longer than any read below may take: a read still waiting then is stuck.
    const STUCK: Duration = Duration::from_secs(5);

    /// A connection over a loopback socket, and the server's end of it.
    async fn connected() -> (ReplicationConnection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let tcp = Some(std::os::fd::AsRawFd::as_raw_fd(&client));
        let conn = ReplicationConnection {
            socket: Box::new(client),
            tcp,
            low_water: 1,
            read: BytesMut::new(),
            write: BytesMut::new(),
            parameters: HashMap::new(),
        };
        (conn, server)
    }

    #[tokio::test]
    async fn a_gathering_read_takes_what_came_once_its_time_is_up() {
        let (mut conn, mut server) = connected().await;
        server.write_all(b"0123456789").await.unwrap();
        let until = Instant::now() + Duration::from_millis(20);
        let read = tokio::time::timeout(STUCK, conn.fill_gathering(GATHER, until)).await;
        assert_eq!(read.expect("the gathering read never woke").unwrap(), 10);
    }

    #[tokio::test]
    async fn a_gathering_read_wakes_as_soon_as_the_gulp_is_queued() {
        let (mut conn, mut server) = connected().await;
        let until = Instant::now() + 2 * STUCK;
        let reader = tokio::spawn(async move {
            let read = conn.fill_gathering(GATHER, until).await.unwrap();
            (conn, read)
        });
        server.write_all(&vec![7u8; GATHER]).await.unwrap();
        let (_, read) = tokio::time::timeout(STUCK, reader)
            .await
            .expect("the read waited for its deadline, not for the gulp")
            .unwrap();
        assert!(read > 0);
    }

    #[tokio::test]
    async fn a_plain_read_after_a_gathering_one_wakes_on_a_few_bytes() {
        let (mut conn, mut server) = connected().await;
        server.write_all(&vec![7u8; GATHER]).await.unwrap();
        // Woken by the gulp, so the mark is still raised when it returns.
        conn.fill_gathering(GATHER, Instant::now() + 2 * STUCK)
            .await
            .unwrap();
        server.write_all(b"last").await.unwrap();
        while conn.read.len() < GATHER + 4 {
            tokio::time::timeout(STUCK, conn.fill())
                .await
                .expect("a plain read kept the raised low-water mark")
                .unwrap();
        }
        assert_eq!(&conn.read[GATHER..], b"last");
    }
}

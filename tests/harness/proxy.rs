//! A TCP proxy the test owns, to cut the network between tidemark and
//! PostgreSQL: `reset` breaks every link at once (both ends see it close),
//! `black_hole` stops passing bytes without closing anything (a cable pulled,
//! a firewall dropping packets), `refuse` closes every link and every new
//! connection at once (a server that is down), and `mend` lets traffic
//! through again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    port: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// While set, bytes are held and new connections are taken but never answered.
    dark: AtomicBool,
    /// While set, every connection is closed as soon as it is taken.
    refusing: AtomicBool,
    /// Links opened before the last reset or mend are closed.
    generation: AtomicU64,
    links: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Listens on a free local port and forwards each connection to `target_port`.
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || link(client, target_port, &state));
            }
        });
        Proxy { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open link: both ends see the connection end.
    pub fn reset(&self) {
        self.close_links();
    }

    /// Passes nothing further, and closes nothing.
    pub fn black_hole(&self) {
        self.state.dark.store(true, Ordering::SeqCst);
    }

    /// Closes every link, and every new connection as soon as it is taken.
    pub fn refuse(&self) {
        self.state.refusing.store(true, Ordering::SeqCst);
        self.close_links();
    }

    /// Lets traffic through again; links held in the dark are closed, as their peers gave up.
    pub fn mend(&self) {
        self.close_links();
        self.state.dark.store(false, Ordering::SeqCst);
        self.state.refusing.store(false, Ordering::SeqCst);
    }

    fn close_links(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        for stream in self.state.links.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn link(client: TcpStream, target_port: u16, state: &Arc<State>) {
    let generation = state.generation.load(Ordering::SeqCst);
    if state.refusing.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    {
        let mut links = state.links.lock().unwrap();
        links.push(client.try_clone().unwrap());
        links.push(server.try_clone().unwrap());
    }
    let (to_server, to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let (up, down) = (state.clone(), state.clone());
    std::thread::spawn(move || pump(client, to_server, generation, &up));
    pump(server, to_client, generation, &down);
}

/// Copies `from` to `to`, holding bytes while dark, until either end closes or the link is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, state: &State) {
    let mut buffer = vec![0u8; 64 * 1024];
    let current = || state.generation.load(Ordering::SeqCst) == generation;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while state.dark.load(Ordering::SeqCst) && current() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !current() || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! Memory per idle session returns to a stated bound: after a burst of 1 MiB WRITEs
//! and READs at full queue depth, a session that has been idle for
//! `idle_shrink_after` holds no more than SESSION_IDLE_BUFFER_BYTES_MAX of buffers
//! beyond what it held before the burst. A counting allocator sees every thread of
//! this test binary; the raw client on the test thread allocates everything it uses
//! before the first measure, so what moves is the server's.

use rpc::echo::Echo;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rpc::limits::{DATA_LEN_MAX, FRAME_LEN_MAX, HEADER_LEN};
use rpc::session::SESSION_IDLE_BUFFER_BYTES_MAX;
use rpc::{
    Body, Header, Message, Request, Server, ServerConfig, Status, decode_header, encode_frame,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the same arguments; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const QUEUE_DEPTH: u32 = 8;
const IDLE_SHRINK_AFTER: Duration = Duration::from_millis(200);
/// How long the test waits for the bound (many times `IDLE_SHRINK_AFTER`).
const SHRINK_WITHIN: Duration = Duration::from_secs(5);
/// Allocator noise the measure tolerates beyond the bound (the server's threads'
/// small bookkeeping: timers, wait lists).
const SLACK_BYTES: usize = 16 * 1024;

fn frame(tag: u64, request: Request<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(
        1,
        &Message {
            tag,
            body: Body::Request(request),
        },
        &mut v,
    )
    .unwrap();
    v
}

/// Reads one frame into `buf` (sized FRAME_LEN_MAX, never grown); returns its header.
fn read_into(s: &mut TcpStream, buf: &mut [u8]) -> Header {
    s.read_exact(&mut buf[..HEADER_LEN]).unwrap();
    let h = decode_header(&buf[..HEADER_LEN]).unwrap();
    s.read_exact(&mut buf[HEADER_LEN..HEADER_LEN + h.payload_len as usize])
        .unwrap();
    h
}

#[test]
fn an_idle_session_gives_its_buffers_back_down_to_the_stated_bound() {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.sessions_max = 1;
    config.queue_depth = QUEUE_DEPTH;
    config.idle_shrink_after = IDLE_SHRINK_AFTER;
    let server = Server::start(config, || Echo).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Everything the client needs, made before the first measure.
    let hello = frame(
        1,
        Request::Hello(rpc::Hello {
            version_min: 1,
            version_max: 1,
            client_nonce: [1; 32],
            proof: None,
            client_name: "idle",
        }),
    );
    let ping = frame(2, Request::Ping { data: b"warm" });
    let data = vec![5u8; DATA_LEN_MAX as usize];
    let writes: Vec<Vec<u8>> = (0..QUEUE_DEPTH as u64)
        .map(|i| {
            frame(
                10 + i,
                Request::Write {
                    handle: 1,
                    offset: 0,
                    data: &data,
                },
            )
        })
        .collect();
    let reads: Vec<Vec<u8>> = (0..QUEUE_DEPTH as u64)
        .map(|i| {
            frame(
                100 + i,
                Request::Read {
                    handle: 1,
                    offset: 0,
                    length: DATA_LEN_MAX,
                },
            )
        })
        .collect();
    let mut buf = vec![0u8; FRAME_LEN_MAX];
    s.write_all(&hello).unwrap();
    assert_eq!(read_into(&mut s, &mut buf).status, Status::Ok);
    s.write_all(&ping).unwrap();
    assert_eq!(read_into(&mut s, &mut buf).status, Status::Ok);
    let before = LIVE.load(Ordering::Relaxed);

    // A burst at full depth, twice: WRITEs fill the frame buffers, READs the
    // scratch and write buffers.
    for burst in [&writes, &reads] {
        for f in burst.iter() {
            s.write_all(f).unwrap();
        }
        for _ in 0..burst.len() {
            let h = read_into(&mut s, &mut buf);
            assert_eq!(h.status, Status::Ok, "{h:?}");
        }
    }
    let busy = LIVE.load(Ordering::Relaxed);
    assert!(
        busy > before + 4 * DATA_LEN_MAX as usize,
        "the burst should have grown the session's buffers: {before} -> {busy}"
    );

    let bound = before + SESSION_IDLE_BUFFER_BYTES_MAX + SLACK_BYTES;
    let start = Instant::now();
    while LIVE.load(Ordering::Relaxed) > bound {
        assert!(
            start.elapsed() < SHRINK_WITHIN,
            "idle for {SHRINK_WITHIN:?}, the session still holds {} bytes over {before} \
             (bound {SESSION_IDLE_BUFFER_BYTES_MAX} + {SLACK_BYTES})",
            LIVE.load(Ordering::Relaxed).saturating_sub(before)
        );
        // Waiting for the server's idle timer, which no protocol frame announces.
        std::thread::sleep(Duration::from_millis(20));
    }
    // The session still serves after giving its buffers back.
    s.write_all(&ping).unwrap();
    assert_eq!(read_into(&mut s, &mut buf).status, Status::Ok);
    drop(s);
    server.stop();
}

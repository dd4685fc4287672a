mod common;

use std::rc::Rc;
use taskio::file::OpenOptions;
use taskio::*;

use common::TempDir;

#[test]
fn echo_and_file_roundtrip() {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(|| {
        let l = net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let srv = spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..100 {
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
            }
        })
        .unwrap();
        let c = Rc::new(net::connect(addr, None).unwrap());
        let mut buf = [7u8; 64];
        for i in 0..100u8 {
            buf[0] = i;
            c.write_all(&buf).unwrap();
            let mut back = [0u8; 64];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, buf);
        }
        srv.join().unwrap();
        let dir = TempDir::new("smoke");
        let f = OpenOptions::new()
            .create(true)
            .direct(true)
            .size(1 << 20)
            .open(dir.file("f"))
            .unwrap();
        let mut b = AlignedBuf::new(4096);
        b.fill(0xab);
        f.pwrite(&b, 8192).unwrap();
        f.fdatasync().unwrap();
        let mut r = AlignedBuf::new(4096);
        assert_eq!(f.pread(&mut r, 8192).unwrap(), 4096);
        assert!(r.iter().all(|&x| x == 0xab));
    })
    .unwrap();
    let st = rt.stats();
    assert!(st.io.aio_completed >= 3, "{st:?}");
}

/// The server pattern: an acceptor thread with a std listener hands each connection
/// to a runtime thread through a Remote; the runtime adopts it and serves it.
#[test]
fn accepted_std_streams_handed_over_through_a_remote_are_served() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, inbox) = taskio::remote::remote::<std::net::TcpStream>(4).unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..3 {
            let (s, _) = listener.accept().unwrap();
            tx.send(s).unwrap();
        }
        // Dropping the last Remote closes the inbox.
    });
    let server = std::thread::spawn(move || {
        let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
        rt.run(move || {
            let mut served = 0;
            while let Some(s) = inbox.recv().unwrap() {
                let s = net::TcpStream::from_std(s).unwrap();
                spawn(move || {
                    let mut b = [0u8; 5];
                    s.read_exact(&mut b).unwrap();
                    s.write_all(&b).unwrap();
                })
                .unwrap();
                served += 1;
            }
            served
        })
        .unwrap()
    });
    for i in 0..3u8 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&[i; 5]).unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [i; 5]);
    }
    acceptor.join().unwrap();
    assert_eq!(server.join().unwrap(), 3);
}

use std::rc::Rc;
use std::time::Duration;

use rpc::{
    Client, ClientConfig, Header, Request, Response, Server, ServerConfig, Service, SessionInfo,
};
use taskio::{Config, IoConfig, Runtime, spawn};

struct Echo;

impl Service for Echo {
    fn handle<'s>(
        &self,
        _s: &SessionInfo,
        _h: &Header,
        req: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        match req {
            Request::Ping { data } => {
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            Request::Write { .. } => Response::Write,
            other => Response::Error {
                msg_type: other.msg_type(),
                status: rpc::Status::NotSupported,
                reason: "echo serves PING and WRITE",
            },
        }
    }
}

#[test]
fn sixty_four_callers_on_one_connection_get_their_own_answers() {
    let server = Server::start(ServerConfig::new("127.0.0.1:0".parse().unwrap()), || Echo).unwrap();
    let addr = server.local_addr();
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(move || {
        let c = Rc::new(Client::connect(addr, &ClientConfig::default()).unwrap());
        let mut hs = Vec::new();
        for i in 0..64u32 {
            let c = c.clone();
            hs.push(
                spawn(move || {
                    for j in 0..50u32 {
                        let data = format!("caller {i} call {j}");
                        let r = c
                            .call(Request::Ping {
                                data: data.as_bytes(),
                            })
                            .unwrap();
                        match r.response().unwrap() {
                            Response::Ping { data: back } => assert_eq!(back, data.as_bytes()),
                            other => panic!("{other:?}"),
                        }
                    }
                })
                .unwrap(),
            );
        }
        for h in hs {
            h.join().unwrap();
        }
    })
    .unwrap();
    server.stop();
}

#[test]
fn secret_is_required_and_checked() {
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some(b"0123456789abcdef-secret".to_vec());
    let server = Server::start(cfg, || Echo).unwrap();
    let addr = server.local_addr();
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(move || {
        let e = Client::connect(addr, &ClientConfig::default())
            .err()
            .expect("refused without a secret");
        assert!(e.to_string().contains("AUTH_REQUIRED"), "{e}");
        let wrong = ClientConfig {
            secret: Some(b"not-the-right-secret!!".to_vec()),
            ..ClientConfig::default()
        };
        assert!(Client::connect(addr, &wrong).is_err());
        let right = ClientConfig {
            secret: Some(b"0123456789abcdef-secret".to_vec()),
            ..ClientConfig::default()
        };
        let c = Client::connect(addr, &right).unwrap();
        let r = c.call(Request::Ping { data: b"hi" }).unwrap();
        assert!(matches!(r.response().unwrap(), Response::Ping { data } if data == b"hi"));
        let _ = Duration::ZERO;
    })
    .unwrap();
    server.stop();
}

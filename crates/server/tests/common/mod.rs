//! Helpers the gRPC test files share: ports, request metadata, resources
//! and status codes.

#![allow(dead_code)]

use ferry_proto::v2 as pb;
use pb::Code;
use tonic::Request;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A request with the client id every RocketMQ call carries.
pub fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-mq-client-id", "test-client".parse().unwrap());
    r
}

pub fn res(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

pub fn code(s: &Option<pb::Status>) -> Code {
    Code::try_from(s.as_ref().expect("status").code).unwrap()
}

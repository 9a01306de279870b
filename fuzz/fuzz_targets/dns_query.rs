//! Any datagram a task sends to its resolver (127.0.0.11), answered by the task's handler
//! from a small name table, with no upstream. An answer must always be a valid message.
#![no_main]

use std::sync::OnceLock;

use hickory_server::proto::op::Message;
use libfuzzer_sys::fuzz_target;
use mesh_fuzz::{dns_table, runtime};
use mesh_node::dns::fuzzing::Responder;

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| {
        let _guard = runtime().enter();
        Responder::new(dns_table(), vec!["frontend".into()]).expect("a responder")
    })
}

fuzz_target!(|data: &[u8]| {
    let responder = responder();
    if let Some(answer) = runtime().block_on(responder.answer(data.to_vec())) {
        if let Err(e) = Message::from_vec(&answer) {
            panic!("the answer to {data:02x?} does not parse: {e}");
        }
    }
});

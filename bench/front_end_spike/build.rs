fn main() {
    // The node's own wire contract: the spike serves exactly the interface the Python node serves.
    capnpc::CompilerCommand::new()
        .src_prefix("../../schema")
        .file("../../schema/node.capnp")
        .run()
        .expect("compiling schema/node.capnp (needs the `capnp` tool: apt-get install capnproto)");
}

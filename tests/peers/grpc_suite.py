"""gRPC through meshlet with real grpcio peers (generic handlers, no codegen).

usage: grpc_suite.py server PORT | client MESHLET_PORT
The meshlet config routes authority `greeter` (and `slowpoke`, with a 300 ms timeout) to
the server as an h2 endpoint, with `unavailable` named in retry.on. Run by .ci/protocol-suites.
"""
import sys, time, threading
from concurrent import futures
import grpc

ident = lambda b: b
flaky_left = {"n": 0}

def unary(req, ctx):
    ctx.set_trailing_metadata((("x-served-by", "py"),))
    return req

def flaky(req, ctx):
    if flaky_left["n"] > 0:
        flaky_left["n"] -= 1
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
    return req

def arm(req, ctx):
    flaky_left["n"] = int(req.decode())
    return b"armed"

def slow(req, ctx):
    time.sleep(2)
    return req

def server_stream(req, ctx):
    for i in range(5):
        yield req + str(i).encode()

def client_stream(it, ctx):
    return b"|".join(it)

def bidi(it, ctx):
    for m in it:
        yield m.upper()

def serve(port):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    h = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky, ident, ident),
        "Arm": grpc.unary_unary_rpc_method_handler(arm, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
    }
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("suite.Echo", h),))
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    s.wait_for_termination()

def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        sys.exit(1)

def client(port):
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "greeter")])
    grpc.channel_ready_future(ch).result(timeout=10)
    m = lambda name, kind="unary_unary": getattr(ch, kind)(f"/suite.Echo/{name}", request_serializer=ident, response_deserializer=ident)
    resp, call = m("Unary").with_call(b"hello")
    check(resp == b"hello", "unary echo through meshlet")
    check(dict(call.trailing_metadata()).get("x-served-by") == "py", "trailing metadata passes untouched")
    big = b"x" * (4 * 1024 * 1024 - 64)
    check(m("Unary")(big) == big, "a ~4 MiB message")
    check(list(m("ServerStream", "unary_stream")(b"n")) == [b"n0", b"n1", b"n2", b"n3", b"n4"], "server streaming")
    check(m("ClientStream", "stream_unary")(iter([b"a", b"b", b"c"])) == b"a|b|c", "client streaming")
    check(list(m("Bidi", "stream_stream")(iter([b"x", b"y"]))) == [b"X", b"Y"], "bidi streaming")
    m("Arm")(b"2")
    check(m("Flaky")(b"again") == b"again", "UNAVAILABLE retried (named in retry.on)")
    slow = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "slowpoke")])
    try:
        slow.unary_unary("/suite.Echo/Slow", request_serializer=ident, response_deserializer=ident)(b"late")
        check(False, "meshlet's timeout")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "timeout" in (e.details() or ""),
              f"meshlet's own timeout reaches the client as DEADLINE_EXCEEDED: {e.code()} {e.details()}")
    # no_route → UNIMPLEMENTED is checked in tests/protocols.rs: here a catch-all route
    # (for the WebSocket suite, whose requests are all `GET /`) takes every unknown name.
    print("grpc suite: all checks passed")

if __name__ == "__main__":
    {"server": serve, "client": client}[sys.argv[1]](int(sys.argv[2]))

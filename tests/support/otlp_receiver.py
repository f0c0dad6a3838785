#!/usr/bin/env python3
"""An OTLP trace receiver for the tests, built on the OpenTelemetry project's own protobuf
definitions (PyPI `opentelemetry-proto`, and `grpcio` for OTLP/gRPC): decodes each
ExportTraceServiceRequest and appends one JSON line per span to OUT (ids in hex, attributes
and resource as objects, the request's authorization metadata beside).
Usage: otlp_receiver.py http|grpc|https PORT OUT [CERT KEY]"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MODE, PORT, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def record(req, authorization, protocol):
    with open(OUT, "a") as out:
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.write(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "error": s.status.code == 2,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                        "resource": resource,
                        "scope": ss.scope.name,
                        "authorization": authorization,
                        "protocol": protocol,
                    }) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        record(req, self.headers.get("authorization"), "http")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def serve_grpc():
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            metadata = dict(context.invocation_metadata())
            record(request, metadata.get("authorization"), "grpc")
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    server.wait_for_termination()


if MODE == "grpc":
    serve_grpc()
else:
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    if MODE == "https":
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()

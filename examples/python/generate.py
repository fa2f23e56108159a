#!/usr/bin/env python3
"""Streams a generation from a dsv2-serve server (dsv2.v1.Generation).

The Python stubs are generated from proto/dsv2/v1/generation.proto with
grpcio-tools on first use (into a cache directory), so the example always
matches the server's contract:

    pip install -r examples/python/requirements.txt
    python examples/python/generate.py --addr 127.0.0.1:50051 --prompt "Hello"
    python examples/python/generate.py --addr 127.0.0.1:50051 --token-ids 0,17,250 --print-ids
    # A server with TLS and bearer tokens (deploy/local/cluster.sh client-flags):
    python examples/python/generate.py --addr 127.0.0.1:50052 --tls-ca ca.pem \
        --token-file local.token --chat "Hello"

Text goes to standard output as it streams; the finish reason and usage go
to standard error.
"""
import argparse
import importlib
import os
import sys
import tempfile
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = "dsv2/v1/generation.proto"


def load_stubs():
    """Generates (once) and imports generation_pb2 / generation_pb2_grpc."""
    from grpc_tools import protoc

    out = os.environ.get("DSV2_PY_STUBS") or os.path.join(tempfile.gettempdir(), "dsv2_py_stubs")
    os.makedirs(out, exist_ok=True)
    proto_path = os.path.join(PROTO_ROOT, PROTO)
    stamp = os.path.join(out, "stamp")
    mtime = str(os.path.getmtime(proto_path))
    if not os.path.exists(stamp) or open(stamp).read() != mtime:
        code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}",
                            f"--grpc_python_out={out}", proto_path])
        if code != 0:
            sys.exit(f"protoc failed on {proto_path}")
        with open(stamp, "w") as f:
            f.write(mtime)
    sys.path.insert(0, out)
    return (importlib.import_module("dsv2.v1.generation_pb2"),
            importlib.import_module("dsv2.v1.generation_pb2_grpc"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text prompt (needs a model with a tokenizer)")
    source.add_argument("--chat", help="one user message, through the chat template")
    source.add_argument("--token-ids", help="comma-separated prompt token ids")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--print-ids", action="store_true",
                        help="print token ids (space-separated) instead of text")
    parser.add_argument("--timeout", type=float, default=120.0, help="call deadline, seconds")
    parser.add_argument("--tls-ca", help="use TLS, trusting this CA (PEM) for the server")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mTLS")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument("--token", help="bearer token (or the DSV2_API_TOKEN variable)")
    parser.add_argument("--token-file", help="read the bearer token from this file")
    args = parser.parse_args()

    pb, pb_grpc = load_stubs()
    request = pb.GenerateRequest(request_id=f"py-{uuid.uuid4()}")
    if args.prompt is not None:
        request.text = args.prompt
    elif args.chat is not None:
        request.chat.messages.add(role="user", content=args.chat)
    else:
        request.token_ids.ids.extend(int(t) for t in args.token_ids.split(","))
    request.sampling.temperature = args.temperature
    if args.top_p is not None:
        request.sampling.top_p = args.top_p
    if args.top_k is not None:
        request.sampling.top_k = args.top_k
    if args.seed is not None:
        request.sampling.seed = args.seed
    request.stopping.max_tokens = args.max_tokens
    request.stopping.stop.extend(args.stop)
    request.stopping.ignore_eos = args.ignore_eos

    token = args.token or os.environ.get("DSV2_API_TOKEN")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    if args.tls_ca or args.tls_cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.tls_ca) if args.tls_ca else None,
            private_key=read(args.tls_key) if args.tls_key else None,
            certificate_chain=read(args.tls_cert) if args.tls_cert else None)
        channel = grpc.secure_channel(args.addr, credentials)
    else:
        channel = grpc.insecure_channel(args.addr)

    with channel:
        stub = pb_grpc.GenerationStub(channel)
        ids = []
        try:
            for response in stub.Generate(request, timeout=args.timeout, metadata=metadata):
                kind = response.WhichOneof("response")
                if kind == "error":
                    sys.exit(f"error {response.error.code}: {response.error.message}")
                part = getattr(response, kind)
                ids.extend(part.token_ids)
                if not args.print_ids:
                    sys.stdout.write(part.text)
                    sys.stdout.flush()
                if kind == "complete":
                    reason = pb.FinishReason.Name(part.finish_reason)
                    u = part.usage
                    print(f"\n[{reason}; prompt {u.prompt_tokens}, completion "
                          f"{u.completion_tokens}, cached {u.cached_tokens} tokens]", file=sys.stderr)
        except grpc.RpcError as e:
            sys.exit(f"{e.code().name}: {e.details()}")
        if args.print_ids:
            print(" ".join(str(i) for i in ids))
        else:
            print()


if __name__ == "__main__":
    main()

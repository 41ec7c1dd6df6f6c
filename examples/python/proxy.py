#!/usr/bin/env python3
"""connredir-example-python: a minimal inspection proxy in Python 3 (standard
library only) that takes part in a connredir proxy chain. Copy it, then put
your inspection where it says "inspect here".

    python3 proxy.py --listen ADDR:PORT [--log FILE]

For every connection connredir redirects to ADDR:PORT it reads the redirect
records and context (with the original destination) in one plain getsockopt(), logs the
flow as one JSON line (to FILE, or standard output) when it ends, and relays
it to the original destination with the records attached (setsockopt before
connect), so the flow passes every vendor's proxy exactly once.
"""
import argparse
import errno
import json
import socket
import struct
import sys
import threading

# The socket-option contract: docs/ABI.md (abi/connredir_abi.h).
SOL_CONNREDIR = 0x4352
CONNREDIR_RECORDS = 1  # get: the records blob; set: attach it before connect()
CONNREDIR_FLOW = 4  # get: records and context back to back (struct connredir_flow_view)
CONNREDIR_RECORDS_SIZE = 472  # sizeof(struct connredir_records): the view's first part
CONNREDIR_FLOW_SIZE = 704  # sizeof(struct connredir_flow_view)

log_lock = threading.Lock()


def addr_text(raw):
    """struct connredir_addr (20 bytes): 16 address bytes (IPv4 as
    ::ffff:a.b.c.d), the port in network order, the family (host order)."""
    port, family = struct.unpack_from("!H", raw, 16)[0], struct.unpack_from("=H", raw, 18)[0]
    if family == socket.AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, raw[12:16])}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, raw[:16])}]:{port}"


def decode_chain(blob):
    """The records blob, decoded for the log only (docs/ABI.md has the
    layout). The bytes themselves are passed on unchanged."""
    flow_id, hop_count = struct.unpack_from("<Q", blob, 8)[0], blob[16]
    hops = []
    for i in range(hop_count):
        off = 80 + 48 * i
        callout_id, filter_id = struct.unpack_from("<II", blob, off)
        hops.append({"callout_id": callout_id, "filter_id": filter_id,
                     "dst": addr_text(blob[off + 16:off + 36])})
    pid, uid = struct.unpack_from("<II", blob, 32)
    comm = blob[40:56].split(b"\0")[0].decode(errors="replace")
    return flow_id, hops, {"pid": pid, "uid": uid, "comm": comm}


def original_dst(ctx):
    """Where the application wanted to go, from the context's orig_dst
    (offset 24): (family, (host, port)). SO_ORIGINAL_DST answers the same,
    for proxies written for iptables REDIRECT, at the cost of a system call."""
    raw = ctx[24:44]
    port, family = struct.unpack_from("!H", raw, 16)[0], struct.unpack_from("=H", raw, 18)[0]
    if family == socket.AF_INET:
        return socket.AF_INET, (socket.inet_ntop(socket.AF_INET, raw[12:16]), port)
    return socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, raw[:16]), port)


def pump(src, dst, counts, key):
    """Copies src -> dst until EOF, then passes the EOF on (half-close), so
    each side can finish sending after the other stopped."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            # inspect here: data is the next chunk of this direction
            dst.sendall(data)
            counts[key] += len(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # a side is gone: end both directions
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle_flow(client, log):
    entry = {"proxy": "python", "flow_id": 0, "chain": [], "callout_id": None, "hop": None,
             "app": None, "orig_dst": None, "bytes_up": 0, "bytes_down": 0, "result": "ok"}
    server = None
    try:
        # 1. The flow, in one system call: the redirect records (the opaque
        #    proof of which vendors' proxies this flow already passed) and the
        #    redirect context (which of our callout's filters sent it here; its
        #    --context bytes start at offset 104, length at 98). ENOENT means
        #    nobody redirected it (a client connected to the proxy port
        #    directly): nowhere to relay it. (CONNREDIR_RECORDS = 1 and
        #    CONNREDIR_CONTEXT = 2 ask for each alone; a connredir older than
        #    CONNREDIR_FLOW answers ENOPROTOOPT to it.)
        try:
            view = client.getsockopt(SOL_CONNREDIR, CONNREDIR_FLOW, CONNREDIR_FLOW_SIZE)
        except OSError as e:
            why = "not redirected by connredir" if e.errno == errno.ENOENT else e.strerror
            entry["result"] = f"query_flow failed: {why}"
            return
        records, ctx = view[:CONNREDIR_RECORDS_SIZE], view[CONNREDIR_RECORDS_SIZE:]
        entry["flow_id"], entry["chain"], entry["app"] = decode_chain(records)
        entry["callout_id"] = struct.unpack_from("<I", ctx, 16)[0]
        entry["hop"] = ctx[96]

        # 2. Where the application wanted to go.
        family, dst = original_dst(ctx)
        entry["orig_dst"] = f"{dst[0]}:{dst[1]}" if family == socket.AF_INET else \
            f"[{dst[0]}]:{dst[1]}"

        # 3. The onward socket, with the records attached BEFORE connect():
        #    the kernel then knows this connect continues the same flow, skips
        #    our callout and lets the next vendor's callout redirect it.
        server = socket.socket(family, socket.SOCK_STREAM)
        try:
            server.setsockopt(SOL_CONNREDIR, CONNREDIR_RECORDS, records)
        except OSError as e:
            # Never connect without the records: that connect would start a
            # new chain and the flow would be redirected, and inspected, all
            # over again. EACCES (we are not the callout's --proxy-uid or
            # --proxy-cgroup) and ENOPROTOOPT (we run outside the cgroups
            # `connredir up` attached to) are misconfigurations: fail the
            # flow and say so loudly.
            print(f"connredir-example-python: NOT relaying flow {entry['flow_id']} to "
                  f"{entry['orig_dst']}: set records: {e.strerror}", file=sys.stderr, flush=True)
            entry["result"] = f"set_records failed: {e.strerror}"
            return

        # 4. Connect to the original destination. If another vendor's filter
        #    covers it, connredir redirects this connect to that vendor's proxy.
        try:
            server.connect(dst)
        except OSError as e:
            entry["result"] = f"connect to {entry['orig_dst']} failed: {e.strerror}"
            return

        # 5. Relay both directions until both sides closed.
        counts = {"bytes_up": 0, "bytes_down": 0}
        back = threading.Thread(target=pump, args=(server, client, counts, "bytes_down"))
        back.start()
        pump(client, server, counts, "bytes_up")
        back.join()
        entry.update(counts)
    except OSError as e:
        entry["result"] = f"failed: {e.strerror}"
    finally:
        if server:
            server.close()
        client.close()
        # One JSON line per flow: the callout ids of the chain (oldest first;
        # the last one is ours), where it was going, the bytes relayed.
        with log_lock:
            log.write(json.dumps(entry) + "\n")
            log.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="ADDR:PORT or [ADDR]:PORT")
    ap.add_argument("--log", help="append one JSON line per flow here (default: stdout)")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    log = open(args.log, "a") if args.log else sys.stdout

    # The proxy's address must be the one its callout names (`connredir
    # callout add NAME --proxy ADDR:PORT --proxy-uid UID`), and only root or
    # that principal may bind it.
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen(128)
    print(f"connredir-example-python: listening on {args.listen}", file=sys.stderr, flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle_flow, args=(client, log), daemon=True).start()


if __name__ == "__main__":
    main()
